"""One worker per run: a lease row in the run database, renewed while the run works.

Two processes resuming the same run would both run everything left (duplicated calls, a
forked checkpoint history). Whoever works on a run holds its row in ``scale_leases``; the row
expires ``TTL_S`` after its last renewal, so the run of a holder that died can be taken over.
A holder on this host whose process is gone is treated as expired at once (a killed
``scale solve`` must be resumable right away, not after the expiry).

The SQL is plain SQL-standard upsert (``INSERT … ON CONFLICT … DO UPDATE … WHERE``), valid on
SQLite ≥ 3.24 and PostgreSQL; ``expires`` is DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes,
too coarse for epoch seconds; SQLite gives it REAL affinity). Parameters are named
(``:name``), the style of :mod:`sqlite3`; the PostgreSQL backend maps them to ``%(name)s``.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
import weakref
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Protocol

TTL_S = 60.0
RENEW_EVERY_S = TTL_S / 4  # three renewals may fail (a busy database) before the lease lapses
RELEASE_ON_CANCEL_S = 5.0  # a cancelled acquisition waits this long at most to undo itself
HOST = socket.gethostname()
#: Holders of the leases this process's workers hold now (:meth:`Lease.orphaned`).
_HOLDING: set[str] = set()

CREATE = ("CREATE TABLE IF NOT EXISTS scale_leases (thread_id TEXT PRIMARY KEY, holder TEXT NOT NULL, "
          "host TEXT NOT NULL, pid INTEGER NOT NULL, expires DOUBLE PRECISION NOT NULL)")
ACQUIRE = ("INSERT INTO scale_leases (thread_id, holder, host, pid, expires) "
           "VALUES (:thread_id, :holder, :host, :pid, :expires) "
           "ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, host = excluded.host, "
           "pid = excluded.pid, expires = excluded.expires "
           "WHERE scale_leases.expires < :now OR scale_leases.holder = :holder")
# compare-and-swap on the dead holder's id: of two processes taking over, one wins
TAKE_OVER = ("UPDATE scale_leases SET holder = :holder, host = :host, pid = :pid, expires = :expires "
             "WHERE thread_id = :thread_id AND holder = :dead")
RENEW = "UPDATE scale_leases SET expires = :expires WHERE thread_id = :thread_id AND holder = :holder"
RELEASE = "DELETE FROM scale_leases WHERE thread_id = :thread_id AND holder = :holder"
READ = "SELECT thread_id, holder, host, pid, expires FROM scale_leases"


@dataclass(frozen=True)
class Lease:
    """Who holds a run, and until when (epoch seconds) unless renewed."""

    thread_id: str
    holder: str
    host: str
    pid: int
    expires: float

    def live(self, now: float | None = None) -> bool:
        """Not expired, and (on this host) its process still exists."""
        if self.expires < (time.time() if now is None else now):
            return False
        return self.host != HOST or _process_exists(self.pid)

    def orphaned(self) -> bool:
        """Left by this very process, whose worker no longer holds it (a release that could not
        land, e.g. on a database closed under a cancelled evaluation): this process may take it over
        at once instead of refusing itself until the expiry."""
        return self.mine() and self.holder not in _HOLDING

    def mine(self) -> bool:
        """Held by this very process (another worker of it, or this worker's own row)."""
        return self.host == HOST and self.pid == os.getpid()

    def holder_words(self) -> str:
        """Who holds it, for a message: never this process named as "another process"."""
        if self.mine():
            return f"another worker of this process (pid {self.pid} on {self.host})"
        return f"another process (pid {self.pid} on {self.host})"

    def describe(self) -> str:
        """The status of a run this lease holds: ``running (pid N)``, naming the host when it is another."""
        return f"running (pid {self.pid}" + ("" if self.host == HOST else f" on {self.host}") + ")"


class LeaseHeld(Exception):
    """Another live worker holds the run; with ``lost``, this worker's lease was taken over, or
    (``removed``) its row is gone: taken over and released since, or the run deleted under it."""

    def __init__(self, lease: Lease, lost: bool = False, removed: bool = False) -> None:
        super().__init__(f"run {lease.thread_id} is held by pid {lease.pid} on {lease.host}")
        self.lease, self.lost, self.removed = lease, lost, removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class Backend(Protocol):
    """Runs one statement in its own committed transaction."""

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        """Rows changed."""

    async def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        ...


class SqliteBackend:
    """On an aiosqlite connection shared with the checkpointer, serialised by the saver's lock."""

    def __init__(self, conn: Any, lock: asyncio.Lock) -> None:
        self.conn, self.lock, self.ready = conn, lock, False

    async def _ensure(self) -> None:
        # the table is also created with the database (persistence); this covers savers made elsewhere
        if not self.ready:
            await self.conn.execute(CREATE)
            await self.conn.commit()
            self.ready = True

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        async with self.lock:
            await self._ensure()
            cursor = await self.conn.execute(sql, params)
            await self.conn.commit()
            return cursor.rowcount

    async def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        async with self.lock:
            await self._ensure()
            cursor = await self.conn.execute(sql, params)
            return list(await cursor.fetchall())


class PostgresBackend:
    """On the saver's psycopg pool (autocommit: each statement is its own transaction).

    Statements get the saver's bounded retries on a dropped connection.
    """

    def __init__(self, pool: Any, url: Any) -> None:
        self.pool, self.url, self.ready = pool, url, False

    @staticmethod
    def _pg(sql: str) -> str:
        return re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)

    async def _run(self, sql: str, params: dict[str, Any]) -> Any:
        from scale_graph.postgres import aretry

        async def once() -> Any:
            async with self.pool.connection() as conn:
                if not self.ready:  # also created with the database (persistence); covers savers made elsewhere
                    await conn.execute(CREATE)
                    self.ready = True
                cursor = await conn.execute(self._pg(sql), params)
                return cursor.rowcount, (await cursor.fetchall() if cursor.description else [])
        if sql is RENEW or sql is RELEASE:  # not worth a wait: the renewer tries again, and a lease left behind expires
            try:
                return await once()
            except Exception as exc:  # noqa: BLE001 - callers expect one error type for an unusable database
                from scale_graph.errors import DatabaseError

                raise DatabaseError(str(exc)) from None
        return await aretry(self.url, once)

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        return (await self._run(sql, params))[0]

    async def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        # the pool's rows are dicts (the savers need dict_row); READ names its columns in Lease's order
        return [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in (await self._run(sql, params))[1]]


class MemoryBackend:
    """Leases of one process, for checkpointers without a database (InMemorySaver)."""

    def __init__(self) -> None:
        self.table: dict[str, Lease] = {}

    async def execute(self, sql: str, params: dict[str, Any]) -> int:
        thread_id, current = params["thread_id"], self.table.get(params["thread_id"])
        new = Lease(thread_id, params.get("holder", ""), params.get("host", HOST), params.get("pid", 0),
                    params.get("expires", 0.0))
        if sql is ACQUIRE and (current is None or current.expires < params["now"] or current.holder == new.holder):
            self.table[thread_id] = new
        elif sql is TAKE_OVER and current is not None and current.holder == params["dead"]:
            self.table[thread_id] = new
        elif sql is RENEW and current is not None and current.holder == new.holder:
            self.table[thread_id] = replace(current, expires=new.expires)
        elif sql is RELEASE and current is not None and current.holder == new.holder:
            del self.table[thread_id]
        else:
            return 0
        return 1

    async def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        return [(l.thread_id, l.holder, l.host, l.pid, l.expires) for l in self.table.values()]


_memory: weakref.WeakKeyDictionary[Any, MemoryBackend] = weakref.WeakKeyDictionary()
_sqlite: weakref.WeakKeyDictionary[Any, SqliteBackend] = weakref.WeakKeyDictionary()
_postgres: weakref.WeakKeyDictionary[Any, PostgresBackend] = weakref.WeakKeyDictionary()


def backend_for(checkpointer: Any) -> Backend:
    """The lease table beside this checkpointer's checkpoints."""
    conn, lock = getattr(checkpointer, "conn", None), getattr(checkpointer, "lock", None)
    if type(conn).__module__.startswith("aiosqlite") and isinstance(lock, asyncio.Lock):
        if checkpointer not in _sqlite:
            _sqlite[checkpointer] = SqliteBackend(conn, lock)
        return _sqlite[checkpointer]
    if type(conn).__module__.startswith("psycopg_pool"):  # scale_graph.postgres: a pool, and its URL for messages
        if checkpointer not in _postgres:
            from scale_graph.postgres import PostgresUrl

            url = getattr(checkpointer, "scale_url", None) or PostgresUrl("postgresql://")
            _postgres[checkpointer] = PostgresBackend(conn, url)
        return _postgres[checkpointer]
    key = checkpointer if checkpointer is not None else _memory
    if key is _memory:  # no checkpointer: nothing is resumable, so nothing to share
        return MemoryBackend()
    if key not in _memory:
        _memory[key] = MemoryBackend()
    return _memory[key]


async def current(backend: Backend) -> dict[str, Lease]:
    """Every lease row (live or not), by thread id."""
    return {row[0]: Lease(*row) for row in await backend.rows(READ, {})}


async def acquire(backend: Backend, thread_id: str, ttl: float = TTL_S) -> Lease:
    """The lease of ``thread_id`` for this process; :class:`LeaseHeld` when a live worker has it.
    The holder counts as this process's until :func:`forget` (:func:`held` does it on release)."""
    now = time.time()
    mine = Lease(thread_id, uuid.uuid4().hex, HOST, os.getpid(), now + ttl)
    params = {**_params(mine), "now": now}
    _HOLDING.add(mine.holder)  # before the statement: a row that lands is never this process's orphan
    try:
        if await backend.execute(ACQUIRE, params):
            return mine
        held = (await current(backend)).get(thread_id)
        if held is None:  # released in between: try once more
            if await backend.execute(ACQUIRE, params):
                return mine
            held = (await current(backend)).get(thread_id)
        if (held is not None and (not held.live(now) or held.orphaned())
                and await backend.execute(TAKE_OVER, {**params, "dead": held.holder})):
            return mine
    except BaseException:
        forget(mine)
        raise
    forget(mine)
    raise LeaseHeld(held or mine)


def forget(lease: Lease) -> None:
    """``lease`` is no longer held by a worker of this process (released, or given up)."""
    _HOLDING.discard(lease.holder)


def _params(lease: Lease) -> dict[str, Any]:
    return {"thread_id": lease.thread_id, "holder": lease.holder, "host": lease.host, "pid": lease.pid,
            "expires": lease.expires}


async def _acquire_or_leave_nothing(backend: Backend, thread_id: str, ttl: float) -> Lease:
    """:func:`acquire`, cancellation-safe: a statement in flight when the caller is cancelled
    still lands in the database (its thread or server finishes it), and a lease nobody releases
    would refuse this very process's next attempt until it expires. So a cancelled caller waits
    for the acquisition to end and releases what it took before the cancellation goes on."""
    acquiring = asyncio.ensure_future(acquire(backend, thread_id, ttl))
    try:
        return await asyncio.shield(acquiring)
    except asyncio.CancelledError:
        with suppress(Exception):  # LeaseHeld, a failing database: nothing was taken
            await asyncio.wait_for(asyncio.shield(_release_taken(backend, acquiring)), RELEASE_ON_CANCEL_S)
        raise


async def _release_taken(backend: Backend, acquiring: asyncio.Future[Lease]) -> None:
    lease = await acquiring
    try:
        await backend.execute(RELEASE, _params(lease))
    finally:
        forget(lease)


@asynccontextmanager
async def held(backend: Backend, thread_id: str, ttl: float = TTL_S,
               renew_every: float | None = None) -> AsyncIterator[Lease]:
    """Hold ``thread_id`` for the body; renewed in the background, released at the end.

    When a renewal finds the lease taken (this process stalled past the expiry and another took
    over), the body is cancelled and :class:`LeaseHeld` raised with ``lost=True``.
    """
    lease = await _acquire_or_leave_nothing(backend, thread_id, ttl)
    task = asyncio.current_task()
    lost: list[Lease] = []

    async def renew() -> None:
        while True:
            await asyncio.sleep(renew_every or ttl / 4)
            try:
                kept = await backend.execute(RENEW, {**_params(lease), "expires": time.time() + ttl})
            except Exception:  # noqa: BLE001 - a busy database: the next renewal may succeed
                continue
            if not kept:
                try:
                    taker = (await current(backend)).get(thread_id)
                except Exception:  # noqa: BLE001 - who took it is only for the message
                    taker = None
                lost.append(taker or lease)
                if task is not None:
                    task.cancel()
                return

    renewer = asyncio.create_task(renew())
    try:
        yield lease
    except asyncio.CancelledError:
        if lost and task is not None:
            task.uncancel()
            raise LeaseHeld(lost[0], lost=True, removed=lost[0].holder == lease.holder) from None
        raise
    finally:
        renewer.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await renewer
        try:
            if not lost:
                with suppress(Exception):  # unreleased, it expires (or its dead pid frees it, or this process takes it back) anyway
                    await backend.execute(RELEASE, _params(lease))
        finally:  # a release cancelled mid-statement too: the row, if it stays, is this process's orphan
            forget(lease)
