"""Evaluation on a Ray cluster: ``scale eval … --ray ADDRESS`` and ``scale traces generate … --ray ADDRESS``.

The command (the *driver*) stays what it is locally: it plans the runs, owns the results
database and the progress bar, grades and reports (:func:`runner.evaluate`). Only the solving
of each work item (run × problem × sample) moves: :func:`ray_executor` hands it to Ray actors,
one per node by default, each of which opens the shared PostgreSQL run database once and keeps
up to ``--concurrency`` items in flight with asyncio through the one per-sample function,
:func:`methods.solve`. So a distributed evaluation computes, stores and reports exactly what a
local one does.

Workers on other machines do not inherit the driver's environment: each actor gets the run
database URL and the endpoints' API keys in its constructor (an object whose repr shows
nothing), and every item carries its run's full parameters (endpoints included).

What happens on failure:

- *A worker or its node dies*: every item it had in flight fails at the driver with a Ray actor
  error and goes to a surviving worker. A SCALE item resumes from its last checkpoint, and every
  call the dead worker finished is in the run's journal (baselines: in the reuse cache of the
  evaluation's group), so no finished call is made again. The dead worker's lease on the run is
  taken over at once on the same host (its process is gone), else when it expires
  (:data:`leases.TTL_S`); until then the item comes back *busy* and waits for that expiry.
- *Every worker dies*: the items left are stored as failed with that reason; the command exits
  1 and re-running it resumes them.
- *The driver dies*: its actors belong to its Ray job and end with it; re-running the command
  resumes (stored results are skipped, SCALE items resume from their checkpoints).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from rich.console import Console

from scale_graph import leases
from scale_graph.context import Context
from scale_graph.errors import ConfigError
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.claims import solve_claimed
from scale_graph.evaluation.methods import Outcome, Setup
from scale_graph.evaluation.runner import Executor, Pending, RunPlan, Solve
from scale_graph.persistence import Database, check_database, open_async
from scale_graph.postgres import PostgresUrl, mask_url
from scale_graph.redact import redact
from scale_graph.runner import RunBusy
from scale_graph.settings import api_key

RAY_MISSING = "--ray needs Ray on this machine and on every node: pip install 'scale-graph[ray]'"
#: Shortest and longest wait before a busy item is tried again (a lease renews every TTL/4).
BUSY_WAIT_S = (1.0, leases.TTL_S)


@dataclass(frozen=True)
class Item:
    """One work item as it travels to a worker: everything needed to compute it there."""

    run: str
    method: str
    context: dict[str, Any]  # the run's parameters, endpoints and context window included
    problem: Problem
    sample: int
    models: dict[str, Any] | None = None  # the model behind each endpoint, as the driver read it


@dataclass(frozen=True)
class Busy:
    """Another live worker holds the item's run until ``expires`` (epoch seconds) unless renewed."""

    expires: float


class Secrets:
    """The run database URL and the endpoints' API keys for the workers; never shown.

    Ray may print an actor's arguments (errors, the dashboard); this object's repr says nothing.
    """

    def __init__(self, db_url: str, keys: dict[int, str | None]) -> None:
        self.db_url, self.keys = db_url, keys

    def __repr__(self) -> str:
        return "Secrets(***)"

    __str__ = __repr__


class Worker:
    """A Ray actor (async: its items run concurrently on one event loop): computes items on the
    shared run database, which it opens on its first item and keeps open until the driver ends
    it (every write is committed when a step ends, so ending it then loses nothing)."""

    def __init__(self, secrets: Secrets) -> None:
        for system, key in secrets.keys.items():  # the chat layer reads the keys from here (settings.api_key)
            if key:
                os.environ[f"SCALE_SYSTEM{system}_API_KEY"] = key
        self._db_url = secrets.db_url
        self._stack = AsyncExitStack()
        self._opened: tuple[Any, Any] | None = None
        self._opening: asyncio.Lock | None = None

    async def _database(self) -> tuple[Any, Any]:
        from scale_graph.graph import build_graph

        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self._opened is None:
                saver, store = await self._stack.enter_async_context(open_async(PostgresUrl(self._db_url)))
                self._opened = build_graph(saver, store), store
        return self._opened

    async def solve(self, item: Item) -> Outcome | Busy:
        graph, store = await self._database()
        setup = Setup(item.run, Context.from_dict(item.context), graph, store, item.models)
        try:
            return await solve_claimed(item.method, item.problem, item.sample, setup)
        except RunBusy as exc:
            return Busy(exc.lease.expires)


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(RAY_MISSING) from None


def check_database_for_ray(checkpoint_db: Database) -> PostgresUrl:
    """The run database every worker shares: it must be on a PostgreSQL server."""
    if not isinstance(checkpoint_db, PostgresUrl):
        raise ConfigError(f"--ray needs the run database on PostgreSQL (--db/SCALE_DB postgresql://…): workers on "
                          f"other machines cannot share the SQLite file {checkpoint_db}")
    return checkpoint_db


def results_for_ray(results_db: str | None, checkpoint_db: PostgresUrl) -> str:
    """The results database of a distributed evaluation: the one rule (as given, else beside the checkpoints)."""
    from scale_graph.database import results_db as chosen

    return chosen(results_db, checkpoint_db)


def ray_executor(address: str, checkpoint_db: Database, workers: int | None = None,
                 console: Console | None = None) -> Executor:
    """An executor computing items on the Ray cluster at ``address`` (``auto``: the cluster this
    machine belongs to, or ``$RAY_ADDRESS``); ``workers`` actors, default one per node with a CPU.

    Checks what it can before any work: the database is PostgreSQL and reachable, Ray is installed.
    """
    db = check_database_for_ray(checkpoint_db)
    if workers is not None and workers < 1:
        raise ConfigError(f"--ray-workers must be at least 1, got {workers}")
    ray = import_ray()
    check_database(db)

    @asynccontextmanager
    async def executor(plans: Sequence[RunPlan], _db: Database, concurrency: int) -> AsyncIterator[Solve]:
        # stdout carries the command's report alone: Ray prints cluster events (a node that
        # died) there, from a thread of its own, until it is shut down
        with redirect_stdout(sys.stderr):
            _connect(ray, address)
            try:
                actors = _start_workers(ray, db, workers, concurrency)
                if console is not None:
                    console.print(f"[dim]Ray: {len(actors)} worker(s) at {address}, up to {concurrency} sample(s) "
                                  "in flight each[/]", highlight=False, soft_wrap=True)
                pool = _Pool(ray, actors, concurrency, console)
                try:
                    yield pool.solve
                finally:
                    pool.close()
            finally:
                ray.shutdown()

    return executor


def _connect(ray: Any, address: str) -> None:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=True)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's own wording, first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {redact(first)}") from None


def _start_workers(ray: Any, db: PostgresUrl, workers: int | None, concurrency: int) -> list[Any]:
    nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) >= 1]
    count = workers or len(nodes)
    if count < 1:
        raise ConfigError("the Ray cluster has no node with a CPU for a worker (start nodes with --num-cpus 1 or more)")
    actor = ray.remote(Worker).options(num_cpus=1, max_concurrency=concurrency, max_restarts=0,
                                       scheduling_strategy="SPREAD")
    secrets = Secrets(db.url, {system: api_key(system) for system in (1, 2)})
    return [actor.remote(secrets) for _ in range(count)]


class _Pool:
    """Hands items to workers, at most ``per_worker`` in flight on each; a dead worker's items go to the others."""

    def __init__(self, ray: Any, actors: list[Any], per_worker: int, console: Console | None = None) -> None:
        self._ray, self._actors, self._console = ray, actors, console
        self._alive = set(range(len(actors)))
        self._in_flight = [0] * len(actors)
        self._slots: asyncio.Queue[int | None] = asyncio.Queue()
        for _ in range(per_worker):  # interleaved: the first items spread over every worker
            for index in range(len(actors)):
                self._slots.put_nowait(index)
        errors = ray.exceptions
        self._lost_errors = (errors.RayActorError, errors.ObjectLostError)

    async def solve(self, run: RunPlan, problem: Problem, sample: int, pending: Pending) -> Outcome | None:
        item = Item(run.name, run.method, run.setup.context.to_dict(), problem, sample, run.setup.models)
        while True:
            index = await self._take()
            if index is None:
                return Outcome(error="every Ray worker died before this sample was computed")
            if not await pending():  # another evaluation of the same run stored it meanwhile
                self._slots.put_nowait(index)
                return None
            self._in_flight[index] += 1
            try:
                result = await self._actors[index].solve.remote(item)
            except self._lost_errors:
                self._lost(index)  # the item goes to another worker and resumes from its checkpoints
                continue
            except self._ray.exceptions.RayTaskError as exc:  # the worker could not compute it (e.g. its database)
                self._slots.put_nowait(index)
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                return Outcome(error=_one_line(f"Ray worker: {type(cause).__name__}: {cause}"))
            finally:
                self._in_flight[index] -= 1
            self._slots.put_nowait(index)
            if isinstance(result, Busy):  # another live worker holds the run: again once its lease may lapse
                await asyncio.sleep(min(max(result.expires - time.time(), BUSY_WAIT_S[0]), BUSY_WAIT_S[1]))
                continue
            return result

    async def _take(self) -> int | None:
        """A free slot of a live worker; None once every worker is dead."""
        while True:
            if not self._alive:
                self._slots.put_nowait(None)  # wakes the next waiter too
                return None
            index = await self._slots.get()
            if index is not None and index in self._alive:
                return index

    def _lost(self, index: int) -> None:
        if index in self._alive:
            self._alive.discard(index)
            if self._console is not None:
                self._console.print(f"[yellow]Ray worker {index + 1} lost (its node died?): its "
                                    f"{self._in_flight[index]} sample(s) in flight go to the "
                                    f"{len(self._alive)} other worker(s) and resume from their checkpoints[/]",
                                    highlight=False, soft_wrap=True)
            try:  # an actor unreachable but alive must not go on working on items now handed on
                self._ray.kill(self._actors[index], no_restart=True)
            except Exception:  # already gone
                pass
        self._slots.put_nowait(None)  # a waiter re-checks whether any worker is left

    def close(self) -> None:
        for index in self._alive:
            try:
                self._ray.kill(self._actors[index], no_restart=True)
            except Exception:  # the cluster went away meanwhile: nothing to end
                pass


def _one_line(text: str) -> str:
    return mask_url(redact(" ".join(text.split())))[:500]
