"""The run database: LangGraph checkpoints and the call journal (store) in one SQLite file.

``--db``/``SCALE_DB`` may instead be a ``postgresql://`` URL: the same checkpoints, store and
lease table on a PostgreSQL server (:mod:`scale_graph.postgres`), for several processes or
machines sharing one store. Every function here takes either.

WAL with ``synchronous=NORMAL``: a committed step survives a killed process (only a power
loss can take the last commits), at a fraction of the fsync cost. ``busy_timeout`` lets
several processes share one file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiosqlite
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.sqlite import AsyncSqliteStore, SqliteStore

from scale_graph import postgres
from scale_graph.errors import DatabaseError  # noqa: F401  (re-exported: callers import it from here)
from scale_graph.database import DEFAULT_DB, SCHEMA_VERSION, Database, db_path  # noqa: F401  (re-exported)
from scale_graph.files import not_regular
from scale_graph.leases import CREATE as CREATE_LEASES
from scale_graph.postgres import PostgresUrl


try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no set-up lock
    fcntl = None  # type: ignore[assignment]

BUSY_TIMEOUT_S = 60.0
PRAGMAS = f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)};"


class _ImmediateSqliteStore(SqliteStore):
    """SqliteStore whose transactions take the write lock up front (``BEGIN IMMEDIATE``).

    The stock store opens deferred transactions that read, then write; when another connection
    (the checkpointer, another process) commits in between, SQLite refuses the write at once
    instead of waiting ``busy_timeout`` — "database is locked" under concurrency.
    """

    @contextmanager
    def _cursor(self, *, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        if not self.is_setup:
            self.setup()
        with self.lock:
            if transaction:
                self.conn.execute("BEGIN IMMEDIATE")
            cur = self.conn.cursor()
            try:
                yield cur
            except BaseException:
                if transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                if transaction:
                    self.conn.execute("COMMIT")
            finally:
                cur.close()


class _ImmediateAsyncSqliteStore(AsyncSqliteStore):
    """AsyncSqliteStore with ``BEGIN IMMEDIATE`` transactions (see :class:`_ImmediateSqliteStore`)."""

    @asynccontextmanager
    async def _cursor(self, *, transaction: bool = True) -> AsyncIterator[aiosqlite.Cursor]:
        if not self.is_setup:
            await self.setup()
        async with self.lock:
            if transaction:
                await self.conn.execute("BEGIN IMMEDIATE")
            async with self.conn.cursor() as cur:
                try:
                    yield cur
                except BaseException:
                    if transaction:
                        await self.conn.execute("ROLLBACK")
                    raise
                else:
                    if transaction:
                        await self.conn.execute("COMMIT")




def check_database(path: Database, *, must_exist: bool = False) -> None:
    """Fail early and clearly on a missing, unwritable, corrupted, foreign or too-new database."""
    if isinstance(path, PostgresUrl):
        postgres.check(path, SCHEMA_VERSION)
        return
    if not path.exists():
        if must_exist:
            raise DatabaseError(f"database {path} does not exist")
        if not path.parent.is_dir():
            raise DatabaseError(f"database folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise DatabaseError(f"cannot create database {path}: folder {path.parent} is not writable")
        return
    if path.is_dir():
        raise DatabaseError(f"database {path} is a directory")
    if kind := not_regular(path):  # opening a FIFO would wait for a writer forever
        raise DatabaseError(f"database {path} is {kind}, not a regular file")
    if not os.access(path, os.W_OK):
        raise DatabaseError(f"database {path} is read-only")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = (conn.execute("SELECT value FROM scale_meta WHERE key='schema_version'").fetchone()
                       if "scale_meta" in tables else None)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"database {path} is unreadable or corrupted: {exc}") from None
    if tables and "scale_meta" not in tables and not {"checkpoints", "writes"} <= tables:
        raise DatabaseError(f"{path} is another application's SQLite database (no SCALE-Graph tables); "
                            f"use a new file with --db")
    if version is not None:
        try:
            found = int(version[0])
        except (TypeError, ValueError):
            raise DatabaseError(f"database {path} has an unreadable schema version {version[0]!r}") from None
        if found > SCHEMA_VERSION:
            raise DatabaseError(f"database {path} was written by a newer SCALE-Graph (schema {found}, "
                                f"this version reads {SCHEMA_VERSION}); upgrade scale-graph")


MARK_SCHEMA = ("CREATE TABLE IF NOT EXISTS scale_meta (key TEXT PRIMARY KEY, value TEXT);"
               f"INSERT OR IGNORE INTO scale_meta VALUES ('schema_version', '{SCHEMA_VERSION}');"
               f"{CREATE_LEASES};")


def _open_setup_lock(path: Path) -> int | None:
    """An exclusive lock on ``<db>.lock`` around the tables' set-up, or None where none can be had.

    The store's migrations read their version, then alter tables: several processes setting up
    a new file at the same instant fail with "duplicate column name" or a UNIQUE constraint.
    None when the folder is not writable: then the file exists already (check_database) and
    is set up, so there is nothing to race on.
    """
    if fcntl is None:
        return None
    try:
        return os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


@contextmanager
def _setup_locked(path: Path) -> Iterator[None]:
    fd = _open_setup_lock(path)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


@asynccontextmanager
async def _asetup_locked(path: Path) -> AsyncIterator[None]:
    fd = _open_setup_lock(path)
    try:
        if fd is not None:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)  # waiting must not block the event loop
        yield
    finally:
        if fd is not None:
            os.close(fd)


class _FileWatch:
    """The database file a process opened, by (device, inode): :meth:`check` fails when its path
    names it no more. A deleted (or replaced) file stays open and writable, so without this a run
    would go on writing checkpoints nobody can ever read, and end as if saved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:  # unreadable metadata is no proof of deletion
            return getattr(self, "identity", None)
        return found.st_dev, found.st_ino

    def check(self) -> None:
        if self.identity is not None and self._identity() != self.identity:
            raise DatabaseError(f"database {self.path} was deleted or replaced while this process was using it; "
                                f"stopped, as nothing written from now on could be read again")


class _WatchedSqliteSaver(SqliteSaver):
    """SqliteSaver that checks its file is still there before each write (a ``stat``: cheap)."""

    watch: _FileWatch

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.watch.check()
        return super().put(*args, **kwargs)

    def put_writes(self, *args: Any, **kwargs: Any) -> None:
        self.watch.check()
        super().put_writes(*args, **kwargs)


class _WatchedAsyncSqliteSaver(AsyncSqliteSaver):
    """AsyncSqliteSaver that checks its file is still there before each write."""

    watch: _FileWatch

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        self.watch.check()
        return await super().aput(*args, **kwargs)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> None:
        self.watch.check()
        await super().aput_writes(*args, **kwargs)


def _translate(exc: sqlite3.Error, path: Path) -> DatabaseError:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return DatabaseError(f"database {path} is read-only: {text}")
    return DatabaseError(f"database {path}: {text}")


@contextmanager
def open_sync(path: str | os.PathLike | PostgresUrl | None = None) -> Iterator[tuple[Any, Any]]:
    """Checkpointer and store on one database, for ``graph.invoke``."""
    path = db_path(path)
    if isinstance(path, PostgresUrl):
        with postgres.open_sync(path, SCHEMA_VERSION, CREATE_LEASES) as pair:
            yield pair
        return
    check_database(path)
    saver_conn = store_conn = None
    try:
        with _setup_locked(path):
            saver_conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            saver_conn.executescript(PRAGMAS + MARK_SCHEMA)
            store_conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            store_conn.executescript(PRAGMAS)
            saver, store = _WatchedSqliteSaver(saver_conn), _ImmediateSqliteStore(store_conn)
            saver.setup()
            store.setup()
            saver.watch = _FileWatch(path)
        yield saver, store
    except sqlite3.Error as exc:
        raise _translate(exc, path) from None
    finally:
        for conn in (saver_conn, store_conn):
            if conn is not None:
                conn.close()


@asynccontextmanager
async def open_async(path: str | os.PathLike | PostgresUrl | None = None,
                     pool_size: int = postgres.POOL_MAX) -> AsyncIterator[tuple[Any, Any]]:
    """Checkpointer and store on one database, for ``graph.ainvoke`` with many runs in flight.

    ``pool_size``: connections to a PostgreSQL server (the runs this process keeps in flight
    share them); unused for SQLite, which gets one connection each.
    """
    path = db_path(path)
    if isinstance(path, PostgresUrl):
        async with postgres.open_async(path, SCHEMA_VERSION, CREATE_LEASES, pool_size) as pair:
            yield pair
        return
    check_database(path)
    try:
        async with aiosqlite.connect(path, timeout=BUSY_TIMEOUT_S) as saver_conn, \
                aiosqlite.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None) as store_conn:
            async with _asetup_locked(path):
                await saver_conn.executescript(PRAGMAS + MARK_SCHEMA)
                await store_conn.executescript(PRAGMAS)
                saver, store = _WatchedAsyncSqliteSaver(saver_conn), _ImmediateAsyncSqliteStore(store_conn)
                await saver.setup()
                await store.setup()
                saver.watch = _FileWatch(path)
            yield saver, store
    except sqlite3.Error as exc:
        raise _translate(exc, path) from None
