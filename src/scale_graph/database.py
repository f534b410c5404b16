"""Where the run database is — a SQLite file or a PostgreSQL URL — decided without importing a driver.

Light on purpose: commands that only need to know *where* (``scale runs list``'s quick path, error
hints) must not pay for LangGraph's savers; :mod:`scale_graph.persistence` opens it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from scale_graph.postgres import PostgresUrl

DEFAULT_DB = "scale.db"
#: The results database when neither an option, ``SCALE_RESULTS_DB`` nor a PostgreSQL run database says.
DEFAULT_RESULTS_DB = "scale-results.db"
#: The layout of SCALE-Graph's own use of the database (its ``scale_meta`` table).
SCHEMA_VERSION = 1

#: A SQLite file, or a database on a PostgreSQL server.
Database = Union[Path, "PostgresUrl"]


def db_path(explicit: str | os.PathLike | PostgresUrl | None = None) -> Database:
    """``--db``, else ``SCALE_DB``, else ``scale.db`` in the working directory."""
    if explicit is not None and not isinstance(explicit, (str, os.PathLike)):
        return explicit  # already a parsed PostgreSQL URL
    value = os.fspath(explicit) if explicit else (os.environ.get("SCALE_DB") or DEFAULT_DB)
    if re.match(r"postgres(ql)?:/", value):  # a Path option collapses "//": the parser repairs it
        from scale_graph import postgres

        return postgres.parse(value)
    return Path(value)


def results_db(explicit: str | None = None, run_db: str | os.PathLike | PostgresUrl | None = None) -> str:
    """The one results-database rule: ``--results-db``, else ``SCALE_RESULTS_DB``, else the run
    database (``--db``, else ``SCALE_DB``) when it is on a PostgreSQL server, else
    ``./scale-results.db`` — a path or a URL, as given."""
    if explicit:
        return explicit
    if os.environ.get("SCALE_RESULTS_DB"):
        return os.environ["SCALE_RESULTS_DB"]
    run = db_path(run_db)
    return DEFAULT_RESULTS_DB if isinstance(run, Path) else run.url
