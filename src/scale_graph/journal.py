"""The call journal: every finished LLM call of a run, kept in the LangGraph store.

Node logic is written once as a generator that *yields* what it needs — a :class:`ChatCall`
to make or :class:`LoadReplies` of earlier calls — and receives the result; a call that fails
raises its error at that ``yield``, so the logic can react (e.g. retry a prompt refused as too
long with a shorter one). :func:`journaled_node` turns such a generator into a LangGraph node
with both a sync body (``graph.invoke``) and an async body (``graph.ainvoke``, many problems in
flight). Each call is looked up in the journal first and recorded as soon as it returns, so a
run resumed after a crash never repeats a finished call, even one made by a node that was
interrupted half-way.

Every call goes through :func:`serve_call` / :func:`aserve_call`, which share identical calls
between runs of one reuse group (:mod:`scale_graph.reuse`); a reply taken that way is journalled
like any other, marked ``reused``, so the run resumes from it without a call and its Tok stays
what it would cost alone, while :func:`agenerated_tokens` counts only what was generated for it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Awaitable, Callable, Generator, Protocol

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_config, get_stream_writer
from langgraph.runtime import get_runtime
from langgraph.store.base import BaseStore, GetOp
from langgraph.store.memory import InMemoryStore

from scale_graph import budget, reuse
from scale_graph.blocking import run_blocking, settled
from scale_graph.context import Context
from scale_graph.servers.chat import ChatCall, ChatReply, Systems, session
from scale_graph.servers.endpoints import endpoints


@dataclass
class LoadReplies:
    """Request: the journalled replies of these call keys (missing keys are left out)."""

    keys: list[str]


Request = ChatCall | LoadReplies
NodeLogic = Callable[[dict, Context], Generator[Request, Any, dict] | dict]

RUNS_NAMESPACE = ("scale", "runs")
_PAGE = 1000
_fallback_store = InMemoryStore()  # for a graph compiled without a store outside the platform


class ReplyCache:
    """Journalled replies this process wrote or read, by (namespace, key), least recently used out
    first beyond ``max_chars`` of text.

    Each assess/solve node reads the replies of every earlier sub-problem again (O(n²) reads of
    up to 30 KB each per problem); a journal entry never changes once written (its key carries a
    digest of the request), so the copy this process put or read serves those reads without a
    store transaction or a JSON decode. Only history loads use it: a call is still looked up in
    the store, so a run deleted and started again makes its calls anew.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.chars = 0
        self._entries: OrderedDict[tuple[tuple[str, ...], str], tuple[dict[str, Any], int]] = OrderedDict()
        self._lock = threading.Lock()  # graph.invoke runs nodes in worker threads

    def put(self, namespace: tuple[str, ...], key: str, value: dict[str, Any]) -> None:
        size = sum(len(c.get("content") or "") + len(c.get("reasoning") or "") for c in value.get("choices", []))
        with self._lock:
            old = self._entries.pop((namespace, key), None)
            if old is not None:
                self.chars -= old[1]
            if size > self.max_chars:
                return
            self._entries[namespace, key] = (value, size)
            self.chars += size
            while self.chars > self.max_chars:
                self.chars -= self._entries.popitem(last=False)[1][1]

    def get_many(self, namespace: tuple[str, ...], keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get((namespace, key))
                if entry is not None:
                    self._entries.move_to_end((namespace, key))
                    found[key] = entry[0]
        return found


#: Text kept per store: 128 problems in flight × 8 solutions × 30 KB fit.
REPLY_CACHE_CHARS = 48_000_000
_reply_caches: weakref.WeakKeyDictionary[BaseStore, ReplyCache] = weakref.WeakKeyDictionary()
_reply_caches_lock = threading.Lock()


def reply_cache(store: BaseStore) -> ReplyCache:
    """The replies cached for ``store`` (per store object: two databases may hold the same run id)."""
    with _reply_caches_lock:
        cache = _reply_caches.get(store)
        if cache is None:
            cache = _reply_caches[store] = ReplyCache(REPLY_CACHE_CHARS)
        return cache


def calls_namespace(run_id: str) -> tuple[str, ...]:
    return ("scale", run_id, "calls")


def derive_seed(base: int, *parts: object) -> int:
    """A stable seed per (base seed, purpose): distinct for every candidate and retry.

    A hash of the base seed *and* the purpose, not ``base + hash(purpose)``: the engines give the
    i-th of ``n`` samples ``seed + i`` (vLLM's parallel sampling, and the chat layer's fan-out), so
    seeds one apart would make the streams of ``--seed 0`` and ``--seed 1`` share n-1 samples.
    """
    digest = hashlib.blake2b(repr((int(base), *map(str, parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1)


def new_run_id() -> str:
    """A UUID, so a run started from the CLI can also be opened in LangGraph Studio."""
    return str(uuid.uuid4())


def current_run_id(state: dict) -> str:
    """The run id: the state's, else the thread id, else a fresh one (no checkpointer)."""
    if state.get("run_id"):
        return state["run_id"]
    thread_id = (get_config().get("configurable") or {}).get("thread_id")
    return str(thread_id) if thread_id else new_run_id()


def emit(event: str, **data: Any) -> None:
    """Send a progress event to ``stream_mode="custom"`` listeners (no-op outside streaming)."""
    try:
        get_stream_writer()({"event": event, **data, "time": time.time()})
    except (RuntimeError, KeyError):
        pass


@lru_cache(maxsize=32)
def _systems(system1: Any, system2: Any, thinking_flag: bool, structured_output: bool, use_n: bool, max_in_flight: int) -> Systems:
    return Systems(system1, system2, thinking_flag=thinking_flag, structured_output=structured_output, use_n=use_n, max_in_flight=max_in_flight)


def systems_for(context: Context) -> Systems:
    """The shared :class:`Systems` for a context's endpoints and capability switches."""
    return _systems(*endpoints(context), context.thinking_flag, context.structured_output, context.use_n, context.max_in_flight)


class ChatLayer(Protocol):
    """What a node's calls go through: :class:`~scale_graph.servers.chat.Systems`, or a fake in tests."""

    def call(self, call: ChatCall) -> ChatReply: ...

    async def acall(self, call: ChatCall) -> ChatReply: ...


def serve_call(context: Context, store: BaseStore | None, call: ChatCall, chat: ChatLayer | None = None,
               meter: budget.Meter | None = None) -> ChatReply:
    """The reply to ``call`` (blocking) through ``chat`` (default: the context's endpoints), shared
    with the context's reuse group when it has one.

    Every call of every method passes here: with a token budget, ``meter`` clamps it to what the
    run may still spend (:mod:`scale_graph.budget`) — or answers it unsent when nothing is left."""
    sent, reply = budget.serve(meter, call)
    if reply is not None:
        return reply
    chat = chat or systems_for(context)
    try:
        if context.reuse_group and store is not None:
            reply = reuse.call(chat, sent, context, store)
        else:
            reply = chat.call(sent)
        return reply
    finally:
        if meter is not None:
            meter.settle(sent, reply)


async def aserve_call(context: Context, store: BaseStore | None, call: ChatCall,
                      chat: ChatLayer | None = None, meter: budget.Meter | None = None) -> ChatReply:
    """The reply to ``call`` (async); see :func:`serve_call`."""
    sent, reply = budget.serve(meter, call)
    if reply is not None:
        return reply
    chat = chat or systems_for(context)
    try:
        if context.reuse_group and store is not None:
            reply = await reuse.acall(chat, sent, context, store)
        else:
            reply = await chat.acall(sent)
        return reply
    finally:
        if meter is not None:
            meter.settle(sent, reply)


async def agenerated_tokens(store: BaseStore, run_id: str) -> int:
    """Completion tokens generated for run ``run_id``: its journalled calls not taken from another run."""
    namespace, total, offset = calls_namespace(run_id), 0, 0
    while items := await store.asearch(namespace, limit=_PAGE, offset=offset):
        total += sum(item.value.get("completion_tokens", 0) for item in items if not item.value.get("reused"))
        offset += len(items)
    return total


def run_context() -> Context:
    """This run's parameters.

    A context without endpoints — Studio's context panel, ``context={"threshold": 0.3}`` passed
    to ``graph.invoke`` (LangGraph turns the dict into a :class:`Context`), or none at all — is
    completed by the settings resolver: what the caller set wins, every other field comes from
    the environment, the config file, the servers record or its default.
    """
    runtime = get_runtime(Context)
    context = runtime.context if runtime is not None else None
    if isinstance(context, Context) and context.has_endpoints():
        return context
    from scale_graph.setup import complete  # lazy: the entry-point builder reaches the servers record

    return complete(context)


def _runtime() -> tuple[Context, BaseStore]:
    runtime = get_runtime(Context)
    return run_context(), (runtime.store if runtime is not None else None) or _fallback_store


def _operations(logic: NodeLogic, state: dict, context: Context, starts_run: bool, cache: ReplyCache,
                meter: budget.Meter | None = None) -> Generator[tuple, Any, dict]:
    """Serve ``logic``'s requests as primitive operations — ("get", namespace, key),
    ("get_many", [GetOp]), ("put", namespace, key, value), ("call", ChatCall) — so the journal logic is written once for
    the sync and the async executor. An operation's error is thrown back in at its ``yield``."""
    run_id = current_run_id(state)
    if starts_run:  # records what a resume needs; a new problem on a used thread replaces the old record
        record = yield ("get", RUNS_NAMESPACE, run_id)
        wanted = run_record(state.get("problem", ""), context)
        if record is None or any(record.value.get(k) != wanted[k] for k in ("problem", "params")):
            yield ("put", RUNS_NAMESPACE, run_id, wanted)
    namespace = calls_namespace(run_id)
    steps = logic({**state, "run_id": run_id}, context)
    if not isinstance(steps, Generator):  # a node that needs no call returns its update directly
        return steps
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            request = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as finished:
            if meter is not None and logic.__name__.startswith("solve"):  # Studio: what is left after each sub-problem
                emit("budget", index=state.get("solved", 0), budget=meter.budget, left=meter.left())
            return budget.node_update(finished.value, meter, fresh=starts_run and bool(state.get("budget_reached")))
        error = None
        if isinstance(request, LoadReplies):
            found = cache.get_many(namespace, request.keys)
            missing = [key for key in request.keys if key not in found]
            if missing:
                for item in (yield ("get_many", [GetOp(namespace, key) for key in missing])):
                    if item is not None:
                        found[item.key] = item.value
                        cache.put(namespace, item.key, item.value)
            answer = {key: ChatReply.from_dict(found[key]) for key in request.keys if key in found}
            continue
        key = request.journal_key
        cached = yield ("get", namespace, key)
        if cached is not None:
            cache.put(namespace, key, cached.value)
            answer = ChatReply.from_dict(cached.value)
            if meter is not None:  # made before a resume: it counts as if made now
                meter.record(answer)
            continue
        try:
            answer = yield ("call", request)
        except Exception as failed:  # the logic decides: handle it at its yield, or let it propagate
            error = failed
            continue
        value = answer.to_dict()
        yield ("put", namespace, key, value)
        cache.put(namespace, key, value)


async def _drive(operations: Generator[tuple, Any, dict], execute: dict[str, Callable[..., Any]]) -> dict:
    """Carry out ``operations`` one by one with ``execute``'s functions, sync or async alike."""
    result, error = None, None
    while True:
        try:
            operation, *arguments = operations.throw(error) if error is not None else operations.send(result)
        except StopIteration as finished:
            return finished.value
        try:
            result, error = await settled(execute[operation](*arguments)), None
        except Exception as failed:
            result, error = None, failed


class JournaledNode(Runnable[dict, dict]):
    """A node with a blocking and an async body, each called as is.

    Not a ``RunnableLambda``: that one inspects both bodies' signatures and opens a child callback
    run on every call (≈ 0.1 ms per node), for a span LangGraph's own task run already gives;
    LangGraph runs a plain-function node the same way (``trace=False``). LangGraph sets the
    config and runtime context variables before calling either body.
    """

    def __init__(self, run: Callable[[dict], dict], arun: Callable[[dict], Awaitable[dict]], name: str) -> None:
        self.name = name
        self._run, self._arun = run, arun

    def invoke(self, input: dict, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        return self._run(input)

    async def ainvoke(self, input: dict, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        return await self._arun(input)


def journaled_node(logic: NodeLogic, *, starts_run: bool = False, chat: ChatLayer | None = None) -> JournaledNode:
    """A LangGraph node (sync + async) that serves ``logic``'s requests through the journal.

    ``starts_run`` marks the graph's first node, which saves the run's record (problem, parameters);
    ``chat`` replaces the chat layer built from the run context's endpoints (a fake in tests).
    """

    def run(state: dict) -> dict:
        with session(current_run_id(state)):  # a router keeps the run on one replica
            context, store = _runtime()
            meter = budget.node_meter(logic.__name__, state, context, starts_run=starts_run)
            execute = {"get": store.get, "get_many": store.batch, "put": partial(store.put, index=False),
                       "call": partial(serve_call, context, store, chat=chat, meter=meter)}
            return run_blocking(_drive(_operations(logic, state, context, starts_run, reply_cache(store), meter), execute))

    async def arun(state: dict) -> dict:
        with session(current_run_id(state)):
            context, store = _runtime()
            meter = budget.node_meter(logic.__name__, state, context, starts_run=starts_run)
            execute = {"get": store.aget, "get_many": store.abatch, "put": partial(store.aput, index=False),
                       "call": partial(aserve_call, context, store, chat=chat, meter=meter)}
            return await _drive(_operations(logic, state, context, starts_run, reply_cache(store), meter), execute)

    node = JournaledNode(run, arun, logic.__name__)
    node.__doc__ = run.__doc__ = arun.__doc__ = logic.__doc__
    return node


# ---- run records: what a resume needs, kept beside the journal ----------------------------
def run_record(problem: str, context: Context) -> dict[str, Any]:
    return {"problem": problem, "params": context.to_dict(), "created": time.time()}


async def asave_run(store: BaseStore, run_id: str, problem: str, context: Context,
                    extra: dict[str, Any] | None = None) -> None:
    """Save a new run's record; ``extra``: more fields (its model identity, its evaluation)."""
    if await store.aget(RUNS_NAMESPACE, run_id) is None:
        await store.aput(RUNS_NAMESPACE, run_id, {**run_record(problem, context), **(extra or {})}, index=False)
