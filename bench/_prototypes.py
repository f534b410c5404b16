"""What-if prototypes of package fixes, used by the benchmarks only to *measure* a proposed
change. Nothing here is imported by the package; the package code is untouched.

``batched_load_graph`` builds the SCALE graph with a node wrapper identical to
:func:`scale_graph.journal.journaled_node` except that a ``LoadReplies`` of k journal entries is one
``store.abatch`` of ``GetOp``s (one transaction, one ``SELECT … WHERE key IN (…)``) instead of k
sequential ``store.aget`` calls (k transactions).
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Iterator

from langgraph.store.base import GetOp


def batched_node(logic):
    from langchain_core.runnables import RunnableLambda

    from scale_graph import journal
    from scale_graph.servers.chat import ChatReply

    original = journal.journaled_node(logic)  # keeps the sync body as is

    async def arun(state: dict) -> dict:
        context, store = journal._runtime()
        run_id = journal.current_run_id(state)
        if "run_id" not in state:
            await journal.asave_run(store, run_id, state.get("problem", ""), context)
        steps = logic({**state, "run_id": run_id}, context)
        namespace = journal.calls_namespace(run_id)
        answer: Any = None
        while True:
            try:
                request = steps.send(answer)
            except StopIteration as finished:
                return finished.value
            if isinstance(request, journal.LoadReplies):
                items = await store.abatch([GetOp(namespace, key) for key in request.keys]) if request.keys else []
                answer = {item.key: ChatReply.from_dict(item.value) for item in items if item is not None}
                continue
            key = getattr(request, "journal_key", request.key)  # journal_key: newer package versions
            cached = await store.aget(namespace, key)
            if cached is not None:
                answer = ChatReply.from_dict(cached.value)
                continue
            answer = await journal.systems_for(context).acall(request)
            await store.aput(namespace, key, answer.to_dict(), index=False)

    return RunnableLambda(original.func, arun, name=logic.__name__)


@contextmanager
def batched_load() -> Iterator[None]:
    """While active, ``scale_graph.build_graph`` wraps nodes with :func:`batched_node`."""
    import importlib

    graph_module = importlib.import_module("scale_graph.graph")  # the module, not the `graph` object

    saved = graph_module.node
    graph_module.node = batched_node
    try:
        yield
    finally:
        graph_module.node = saved


def batched_load_graph(checkpointer=None, store=None):
    from scale_graph import build_graph

    with batched_load():
        return build_graph(checkpointer, store)


# ---- "database is locked" with many problems in flight --------------------------------------
# AsyncSqliteStore batches the gets and puts of concurrent tasks into one transaction opened
# with a plain (deferred) BEGIN: its SELECTs take a read snapshot, and the INSERT must then
# upgrade it to a write lock. If the checkpointer's connection committed in between, SQLite
# answers SQLITE_BUSY at once (a stale WAL snapshot cannot be upgraded; busy_timeout does not
# apply). Starting the store's transactions with BEGIN IMMEDIATE takes the write lock first
# (waiting up to busy_timeout), so there is no upgrade to fail.
def immediate_store_class():
    from contextlib import asynccontextmanager

    from langgraph.store.sqlite import AsyncSqliteStore

    class ImmediateAsyncSqliteStore(AsyncSqliteStore):
        @asynccontextmanager
        async def _cursor(self, *, transaction: bool = True):
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

    return ImmediateAsyncSqliteStore


def open_async_immediate(path):
    """``scale_graph.persistence.open_async`` with the store's transactions started IMMEDIATE."""
    from contextlib import asynccontextmanager

    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from scale_graph import persistence

    store_class = immediate_store_class()

    @asynccontextmanager
    async def opened():
        db = persistence.db_path(path)
        persistence.check_database(db)
        async with aiosqlite.connect(db, timeout=persistence.BUSY_TIMEOUT_S) as saver_conn, \
                aiosqlite.connect(db, timeout=persistence.BUSY_TIMEOUT_S, isolation_level=None) as store_conn:
            await saver_conn.executescript(persistence.PRAGMAS + persistence.MARK_SCHEMA)
            await store_conn.executescript(persistence.PRAGMAS)
            saver, store = AsyncSqliteSaver(saver_conn), store_class(store_conn)
            await saver.setup()
            await store.setup()
            yield saver, store

    return opened()


# ---- HTTP transport under many requests in flight -------------------------------------------
# scale_graph.servers.chat._client gives ChatOpenAI an ``httpx.AsyncClient`` (httpcore 1.x
# pool, up to 1024 connections). httpcore's pool re-scans every connection (with a poll()
# syscall each, ``is_socket_readable``) for every queued request on every request/response
# event, so CPU per call grows with the number of requests in flight. openai's aiohttp transport
# (``openai.DefaultAioHttpClient``) has no such scan.
class AiohttpTransport:
    """Switchable: while enabled (inside the event loop it was made in), the package's async chat
    clients use ``openai.DefaultAioHttpClient``; ``aclose`` closes the clients it made."""

    def __init__(self) -> None:
        import asyncio

        from scale_graph.servers import chat

        self.chat = chat
        self.saved = chat._client
        self.made: dict = {}
        self.loop = asyncio.get_running_loop()

    def _client(self, endpoint):
        import asyncio

        import openai

        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not self.loop:
            return self.saved(endpoint)
        if endpoint not in self.made:
            http = openai.DefaultAioHttpClient(timeout=endpoint.timeout)
            self.made[endpoint] = (http, self.chat.ReasoningChatOpenAI(
                model=endpoint.model, base_url=endpoint.base_url, api_key=endpoint.api_key or "EMPTY",
                timeout=endpoint.timeout, max_retries=endpoint.max_retries, http_async_client=http))
        return self.made[endpoint][1]

    def enable(self) -> None:
        self.chat._client = self._client

    def disable(self) -> None:
        self.chat._client = self.saved

    async def aclose(self) -> None:
        self.disable()
        for http, _ in self.made.values():
            await http.aclose()
        self.made.clear()


@asynccontextmanager
async def aiohttp_transport() -> AsyncIterator[None]:
    """While active (inside one event loop), the package's async chat clients use
    ``openai.DefaultAioHttpClient``; the clients are closed on exit."""
    transport = AiohttpTransport()
    transport.enable()
    try:
        yield
    finally:
        await transport.aclose()


# ---- ChatCall.journal_key computed once ---------------------------------------------------
@contextmanager
def cached_journal_key() -> Iterator[None]:
    """While active, ``ChatCall.journal_key`` is computed once per call object (cached_property)."""
    from functools import cached_property

    from scale_graph.servers.chat import ChatCall

    original = ChatCall.__dict__.get("journal_key")
    if not isinstance(original, property):
        yield
        return
    cached = cached_property(original.fget)
    cached.__set_name__(ChatCall, "journal_key")
    ChatCall.journal_key = cached
    try:
        yield
    finally:
        ChatCall.journal_key = original


def open_async_shared(path):
    """Saver and store on ONE aiosqlite connection (autocommit; the store's explicit
    BEGIN…COMMIT and the saver's statements serialised by one shared asyncio lock), so the two
    never wait for each other's SQLite write lock (busy_timeout sleeps) and never meet a stale
    WAL snapshot."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.store.sqlite import AsyncSqliteStore

    from scale_graph import persistence

    @asynccontextmanager
    async def opened():
        db = persistence.db_path(path)
        persistence.check_database(db)
        async with aiosqlite.connect(db, timeout=persistence.BUSY_TIMEOUT_S, isolation_level=None) as conn:
            await conn.executescript(persistence.PRAGMAS + persistence.MARK_SCHEMA)
            saver, store = AsyncSqliteSaver(conn), AsyncSqliteStore(conn)
            await saver.setup()
            await store.setup()
            store.lock = saver.lock  # one lock: a store transaction never interleaves with the saver
            yield saver, store

    return opened()
