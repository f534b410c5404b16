"""LangGraph Studio / ``langgraph dev`` on the project's run database (SQLite or PostgreSQL).

``langgraph dev`` normally keeps threads in memory (pickled under ``.langgraph_api/``). Its
``langgraph.json`` accepts a custom checkpointer and a custom store: an import path to an
async context manager (or a callable returning one) that yields a ``BaseCheckpointSaver`` /
``BaseStore``; the server enters it at startup and closes it at shutdown::

    "checkpointer": {"path": "./src/scale_graph/studio.py:checkpointer"},
    "store": {"path": "./src/scale_graph/studio.py:store"}

With both pointing here, a run started in Studio writes its checkpoints and its call journal
to the same database (``SCALE_DB``: a SQLite file, default ``./scale.db`` relative to where
``langgraph dev`` runs, or a ``postgresql://`` URL) that ``scale runs list|show|resume`` read —
the thread id Studio shows is the run id. On PostgreSQL, runs started on other machines show
up too.

Both factories open the database exactly as the CLI does (:func:`scale_graph.persistence.open_async`:
WAL, busy timeout, schema check), so any change there applies to Studio too. The server enters
each factory once per thread that serves requests (``threading.local``); each entry holds its
own connections (a SQLite file shared like several ``scale`` processes on it, or a PostgreSQL pool).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from scale_graph.persistence import open_async

__all__ = ["checkpointer", "store"]


@asynccontextmanager
async def checkpointer() -> AsyncIterator[BaseCheckpointSaver]:
    """The run database's checkpointer (``langgraph.json`` → ``checkpointer.path``)."""
    async with open_async() as (saver, _):  # SCALE_DB, else ./scale.db: exactly what `scale` opens
        yield saver


@asynccontextmanager
async def store() -> AsyncIterator[BaseStore]:
    """The run database's store: call journal and run records (``langgraph.json`` → ``store.path``)."""
    async with open_async() as (_, run_store):
        yield run_store
