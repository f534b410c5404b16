"""The run database on a PostgreSQL server (``--db``/``SCALE_DB`` = ``postgresql://…``).

Checkpoints go through ``langgraph-checkpoint-postgres`` (its savers) and the call journal and
run records through LangGraph's Postgres store, both on one psycopg pool whose connections are
``autocommit`` with ``dict_row`` rows, as those classes require. The pool checks a connection
before lending it, so a connection the server dropped (restart, ``pg_terminate_backend``, a
network cut) is replaced instead of failing the next step; an operation that fails on a
dropped connection anyway is retried a bounded number of times (every checkpoint and store
write is an upsert, so a retry cannot duplicate anything), then the run stops with one
:class:`~scale_graph.persistence.DatabaseError` line at its last checkpoint, resumable.

Many processes may start on a new database at once: the savers' migrations read a version,
then alter tables, so set-up runs under a PostgreSQL advisory lock (``pg_advisory_lock``), the
server-side counterpart of the SQLite path's ``flock`` (polled with ``pg_try_advisory_lock``).

Needs the ``postgres`` extra: ``pip install 'scale-graph[postgres]'``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

from tenacity import (AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay,
                      wait_exponential)

from scale_graph.redact import redact

T = TypeVar("T")

SCHEMES = ("postgresql://", "postgres://")
#: ``hashtext('scale-graph setup')`` would do too; a fixed 64-bit key needs no round trip
SETUP_LOCK_KEY = 0x5CA1E_6A_F00D
# Polled, not waited for: the store's migrations run CREATE INDEX CONCURRENTLY, which waits for every
# open statement — a session blocked in pg_advisory_lock among them would deadlock with the holder.
TRY_LOCK = "SELECT pg_try_advisory_lock(%s) AS locked"
LOCK_POLL_S = 0.05
POOL_MIN = 1
POOL_MAX = 8  # the saver serialises its own statements and the store batches: a few connections serve many runs
POOL_TIMEOUT_S = 2.0  # waiting for a connection (the server down: reconnection attempts fail meanwhile)
CONNECT_TIMEOUT_S = 5
RETRY_ATTEMPTS = 4
RETRY_WINDOW_S = 8.0


def is_postgres(value: object) -> bool:
    return isinstance(value, (str, PostgresUrl)) and str(getattr(value, "url", value)).startswith(SCHEMES)


_PASSWORD_IN_AUTHORITY = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/@:\s]*:)[^@\s]*@", re.I)
_PASSWORD_PARAM = re.compile(r"(?P<head>\bpassword=)[^&\s]+", re.I)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL (``user:PASSWORD@`` and ``password=``) masked."""
    text = _PASSWORD_IN_AUTHORITY.sub(lambda m: m.group("head") + "***@", text)
    return _PASSWORD_PARAM.sub(lambda m: m.group("head") + "***", text)


@dataclass(frozen=True)
class PostgresUrl:
    """A server database: its ``str`` (what messages print) never shows the password.

    ``exists``/``is_file`` answer like the :class:`~pathlib.Path` of a SQLite file that callers
    check before opening: a server database is always there to open (a wrong URL or a server
    that is down fails when opened, with its own message).
    """

    url: str

    def __str__(self) -> str:
        return mask_url(self.url)

    __repr__ = __str__

    def exists(self) -> bool:
        return True

    is_file = exists

    @property
    def sqlalchemy_url(self) -> str:
        """The same database for SQLAlchemy with psycopg 3 (its default PostgreSQL driver is psycopg2)."""
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]


def parse(value: str) -> PostgresUrl:
    """A ``postgres(ql)://`` URL, also when a ``pathlib.Path`` option collapsed its ``//`` into ``/``."""
    text = re.sub(r"^postgres(?:ql)?:/+", "postgresql://", value)
    return PostgresUrl(text)


def one_line(exc: BaseException, url: PostgresUrl) -> str:
    password = _password(url.url)
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return mask_url(redact(text, extra=(password,) if password else ()))


def _password(url: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(url).get("password")  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - an unparsable URL fails on connect with its own message
        return None


def _error(url: PostgresUrl, exc: BaseException, what: str = "") -> Exception:
    from scale_graph.errors import DatabaseError

    return DatabaseError(f"database {url}: {what}{one_line(exc, url)}")


def _unreachable(url: PostgresUrl, exc: BaseException) -> Exception:
    """One line naming host:port and libpq's cause ("connection refused", an unknown host, a
    refused password) instead of the pool's "initialization incomplete after 5 sec"."""
    from scale_graph.errors import DatabaseError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cause = first.rsplit(" failed: ", 1)[-1].strip()  # 'connection to server at "h", port p failed: CAUSE'
    if len(cause) > 1 and cause[0].isupper() and cause[1].islower():
        cause = cause[0].lower() + cause[1:]
    return DatabaseError(f"database {url}: cannot connect to {_address(url)}: {one_line(ValueError(cause), url)}")


def _address(url: PostgresUrl) -> str:
    """``host:port`` the URL points at, as libpq reads it (its defaults: the local socket, 5432)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url.url)
    except Exception:  # noqa: BLE001 - an unparsable URL: its own message says so
        return "the server"
    host, port = str(info.get("host") or "localhost"), str(info.get("port") or "5432")
    if host.startswith("/"):
        return f"socket {host}/.s.PGSQL.{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quiet_pool() -> None:
    """The pool logs each failed connection attempt as a warning, which reaches stderr through
    logging's last resort: a user would see it three times before the one line that says why."""
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def _retryable() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.OperationalError, psycopg.InterfaceError)


def _policy(**extra: Any) -> dict[str, Any]:
    return dict(stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_WINDOW_S),
                wait=wait_exponential(multiplier=0.25, max=2.0), retry=retry_if_exception_type(_retryable()),
                reraise=True, **extra)


def _lost(url: PostgresUrl, exc: BaseException) -> Exception:
    from scale_graph.errors import DatabaseError

    return DatabaseError(f"database {url}: connection lost, still failing after retries ({one_line(exc, url)}); "
                         "runs stop at their last checkpoint: resume them once the server is reachable")


async def aretry(url: PostgresUrl, operation: Callable[[], Awaitable[T]]) -> T:
    """``operation()`` with bounded retries on a dropped connection, then a one-line DatabaseError."""
    try:
        async for attempt in AsyncRetrying(**_policy()):
            with attempt:
                return await operation()
    except _retryable() as exc:
        raise _lost(url, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True re-raises the last error


def retry(url: PostgresUrl, operation: Callable[[], T]) -> T:
    """The blocking counterpart of :func:`aretry`."""
    try:
        for attempt in Retrying(**_policy()):
            with attempt:
                return operation()
    except _retryable() as exc:
        raise _lost(url, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _aretrying(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return await aretry(self.scale_url, lambda: method(self, *args, **kwargs))
    return wrapper


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    @wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return retry(self.scale_url, lambda: method(self, *args, **kwargs))
    return wrapper


def _classes() -> tuple[type, type, type, type]:
    """The savers and stores with retries, built on first use (psycopg is an optional extra)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
    except ImportError:
        from scale_graph.errors import DatabaseError

        raise DatabaseError("a postgresql:// database needs the postgres extra: "
                            "pip install 'scale-graph[postgres]'") from None

    _CLASSES = (_with_retries(AsyncPostgresSaver, _aretrying, "aget_tuple aput aput_writes adelete_thread",
                              alist=_alisting(AsyncPostgresSaver)),
                _with_retries(PostgresSaver, _retrying, "get_tuple put put_writes delete_thread",
                              list=_listing(PostgresSaver)),
                _with_retries(AsyncPostgresStore, _aretrying, "abatch"),
                _with_retries(PostgresStore, _retrying, "batch"))
    return _CLASSES


def _with_retries(base: type, wrap: Callable[[Callable[..., Any]], Callable[..., Any]], methods: str,
                  **overrides: Callable[..., Any]) -> type:
    """``base`` with each of ``methods`` (its calls that reach the database) retried as a whole;
    the instance's ``scale_url`` names the database in errors."""
    namespace = {name: wrap(getattr(base, name)) for name in methods.split()}
    return type(f"Retrying{base.__name__}", (base,), {**namespace, **overrides})


def _alisting(base: Any) -> Callable[..., AsyncIterator[Any]]:
    """``alist`` read whole before the first item is handed on, so that a retry cannot repeat items."""
    async def alist(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async def collect() -> list[Any]:
            return [item async for item in base.alist(self, *args, **kwargs)]
        for item in await aretry(self.scale_url, collect):
            yield item
    return alist


def _listing(base: Any) -> Callable[..., Iterator[Any]]:
    """The blocking ``list``, read whole like :func:`_alisting`."""
    def list_(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from retry(self.scale_url, lambda: [*base.list(self, *args, **kwargs)])
    return list_


_CLASSES: tuple[type, type, type, type] | None = None

_CONNECTION = {"autocommit": True, "prepare_threshold": 0, "connect_timeout": CONNECT_TIMEOUT_S}


def _schema_sql(schema_version: int, leases_sql: str) -> list[str]:
    return ["CREATE TABLE IF NOT EXISTS scale_meta (key TEXT PRIMARY KEY, value TEXT)",
            f"INSERT INTO scale_meta VALUES ('schema_version', '{schema_version}') ON CONFLICT (key) DO NOTHING",
            leases_sql]


def _check_version(url: PostgresUrl, found: Any, supported: int) -> None:
    from scale_graph.errors import DatabaseError

    try:
        version = int(found)
    except (TypeError, ValueError):
        raise DatabaseError(f"database {url} has an unreadable schema version {found!r}") from None
    if version > supported:
        raise DatabaseError(f"database {url} was written by a newer SCALE-Graph (schema {version}, "
                            f"this version reads {supported}); upgrade scale-graph")


def _pool(pool_class: Any, url: PostgresUrl, pool_size: int) -> Any:
    """A (sync or async) psycopg pool, not yet open: autocommit dict-row connections, each checked
    before it is lent (a connection the server dropped is replaced, not handed out)."""
    from psycopg.rows import dict_row

    _quiet_pool()
    return pool_class(url.url, min_size=POOL_MIN, max_size=max(2, pool_size), open=False, timeout=POOL_TIMEOUT_S,
                      check=pool_class.check_connection, kwargs={**_CONNECTION, "row_factory": dict_row})


def _on_pool(url: PostgresUrl, pool: Any, row: Any, schema_version: int, saver_class: Any,
             store_class: Any) -> tuple[Any, Any]:
    """Saver and store on ``pool`` once the schema version found (``row``) is one this version reads."""
    _check_version(url, row and row["value"], schema_version)
    saver, store = saver_class(pool), store_class(pool)
    saver.scale_url = store.scale_url = url
    return saver, store


@asynccontextmanager
async def open_async(url: PostgresUrl, schema_version: int, leases_sql: str,
                     pool_size: int = POOL_MAX) -> AsyncIterator[tuple[Any, Any]]:
    """Saver and store on one pool, the schema set up (or checked) under an advisory lock."""
    saver_class, _, store_class, _ = _classes()
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    try:  # one direct attempt first: its error names the cause (the pool's only says it timed out)
        await (await psycopg.AsyncConnection.connect(url.url, **_CONNECTION)).close()
    except (psycopg.Error, OSError) as exc:
        raise _unreachable(url, exc) from None
    pool = _pool(AsyncConnectionPool, url, pool_size)
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except (psycopg.Error, OSError) as exc:
        await pool.close()
        raise _error(url, exc, "cannot connect: ") from None
    try:
        try:
            async with pool.connection() as conn:
                while not (await (await conn.execute(TRY_LOCK, (SETUP_LOCK_KEY,))).fetchone())["locked"]:
                    await asyncio.sleep(LOCK_POLL_S)
                try:
                    await saver_class(conn).setup()
                    await store_class(conn).setup()
                    for sql in _schema_sql(schema_version, leases_sql):
                        await conn.execute(sql)
                    row = await (await conn.execute(
                        "SELECT value FROM scale_meta WHERE key = 'schema_version'")).fetchone()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
        except psycopg.Error as exc:
            raise _error(url, exc, "set-up failed: ") from None
        yield _on_pool(url, pool, row, schema_version, saver_class, store_class)
    finally:
        await pool.close()


@contextmanager
def open_sync(url: PostgresUrl, schema_version: int, leases_sql: str,
              pool_size: int = POOL_MAX) -> Iterator[tuple[Any, Any]]:
    """The blocking counterpart of :func:`open_async`, for ``graph.invoke``."""
    _, saver_class, _, store_class = _classes()
    import psycopg
    from psycopg_pool import ConnectionPool

    try:  # as in open_async: the direct attempt's error names the cause
        psycopg.connect(url.url, **_CONNECTION).close()
    except (psycopg.Error, OSError) as exc:
        raise _unreachable(url, exc) from None
    pool = _pool(ConnectionPool, url, pool_size)
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except (psycopg.Error, OSError) as exc:
        pool.close()
        raise _error(url, exc, "cannot connect: ") from None
    try:
        try:
            with pool.connection() as conn:
                while not conn.execute(TRY_LOCK, (SETUP_LOCK_KEY,)).fetchone()["locked"]:
                    time.sleep(LOCK_POLL_S)
                try:
                    saver_class(conn).setup()
                    store_class(conn).setup()
                    for sql in _schema_sql(schema_version, leases_sql):
                        conn.execute(sql)
                    row = conn.execute("SELECT value FROM scale_meta WHERE key = 'schema_version'").fetchone()
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
        except psycopg.Error as exc:
            raise _error(url, exc, "set-up failed: ") from None
        yield _on_pool(url, pool, row, schema_version, saver_class, store_class)
    finally:
        pool.close()


def check(url: PostgresUrl, schema_version: int) -> None:
    """Fail early (``scale serve`` before it listens) on an unreachable server or a too-new schema."""
    try:
        import psycopg
    except ImportError:
        _classes()  # the one-line "needs the postgres extra"
        raise
    try:
        conn = psycopg.connect(url.url, **_CONNECTION)
    except (psycopg.Error, OSError) as exc:
        raise _unreachable(url, exc) from None
    try:
        with conn:
            exists = conn.execute("SELECT to_regclass('scale_meta') IS NOT NULL").fetchone()
            row = (conn.execute("SELECT value FROM scale_meta WHERE key = 'schema_version'").fetchone()
                   if exists and exists[0] else None)
    except psycopg.Error as exc:
        raise _error(url, exc, "cannot read it: ") from None
    if row is not None:
        _check_version(url, row[0], schema_version)
