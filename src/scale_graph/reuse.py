"""Call reuse across runs: a call identical to one already answered takes that answer.

Runs naming the same ``reuse_group`` (a :class:`~scale_graph.context.Context` field; ``""`` =
no reuse) share one call cache in the LangGraph store, namespace ``("scale", "reuse", <group>)``,
keyed by the *complete* request: the endpoint (base URL, served model and the model really
behind it — vLLM's ``root``, :mod:`scale_graph.servers.identity` — so a model swapped behind one
served name never receives another model's replies), the messages, the sampling
(temperature, top-p, top-k and seed), the budget, the thinking switch, ``n``, the JSON schema and
the capability switches that change what is sent (thinking flag, structured output, ``n``) —
everything of a :class:`~scale_graph.servers.chat.ChatCall` but the name it has in its run. Any
store LangGraph offers holds it (SQLite now, PostgreSQL when several machines share one), so
reuse works across processes and commands as well as within one ``scale eval`` sweep.

The runs of a sweep start together, so their identical first calls are *in flight* at the same
moment: within a process one request is made and every caller waits on it (single flight per
request key). Across processes a race can make a call twice, never corrupt it: each writer puts
a complete reply under the same key, last writer wins.

**What reuse changes, and what not.** A τ sweep over {0.2, 0.3, 0.5, 0.7, 0.9} on the same
problems and samples then generates only the calls that differ: the k decompositions, the
selection and every step before the first sub-problem whose route differs are made once. Per-run
results are identical to independent runs — the same answers, routes and Tok, because every run
still receives (and journals, marked ``reused``) every reply it asks for, and Tok counts what the
run would cost alone, the paper's metric. Reuse also pairs the settings' samples: every τ sees
the same decompositions and the same solutions up to its first different route (common random
numbers), which lowers the noise of the differences between settings that Table 2 reports.
The tokens actually generated (calls not reused) are reported beside Tok.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import re
import threading
import weakref
from dataclasses import asdict, replace
from typing import Any

from langgraph.store.base import BaseStore

from scale_graph.context import Context
from scale_graph.servers.chat import ChatCall, ChatReply, Systems
from scale_graph.servers import identity
from scale_graph.servers.endpoints import endpoints

_GROUP_CHARS = 80

_Key = tuple[tuple[str, ...], str]
_async_flights: weakref.WeakKeyDictionary[Any, dict[_Key, asyncio.Task[ChatReply]]] = weakref.WeakKeyDictionary()
_thread_flights: dict[_Key, concurrent.futures.Future[ChatReply]] = {}
_thread_lock = threading.Lock()


def namespace(group: str) -> tuple[str, ...]:
    """The store namespace of a reuse group: readable, and valid for any group name (the store
    refuses periods in labels), with a digest that keeps apart names the readable part merges."""
    readable = re.sub(r"[\s.]", "_", group)[:_GROUP_CHARS]
    digest = hashlib.blake2b(group.encode(), digest_size=4).hexdigest()
    return ("scale", "reuse", f"{readable}#{digest}")


def request_key(call: ChatCall, context: Context) -> str:
    """The identity of everything the server is sent for ``call`` (not the call's name), and of
    the model that answers it (probed once per process: no request on this path)."""
    endpoint = endpoints(context)[call.system - 1]
    request = asdict(call)
    del request["key"]
    model = identity.known(endpoint.base_url, endpoint.model, endpoint.system)
    key = {"base_url": endpoint.base_url, "model": endpoint.model, "root": model.root, "request": request,
           "switches": [context.thinking_flag, context.structured_output, context.use_n]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _entry(reply: ChatReply, call: ChatCall, context: Context) -> dict[str, Any]:
    """A cache entry: the reply, and the identity of the model that wrote it (for whoever inspects the cache)."""
    endpoint = endpoints(context)[call.system - 1]
    return {**reply.to_dict(), "model": identity.known(endpoint.base_url, endpoint.model, endpoint.system).to_dict()}


def _reply(entry: dict[str, Any]) -> ChatReply:
    return ChatReply.from_dict({name: value for name, value in entry.items() if name != "model"})


def _taken(reply: ChatReply) -> ChatReply:
    """A reply answered for another caller: a copy of its own (callers may change theirs), marked."""
    return replace(ChatReply.from_dict(reply.to_dict()), reused=True)


async def acall(systems: Systems, call: ChatCall, context: Context, store: BaseStore) -> ChatReply:
    """The reply to ``call``: from the group's cache, from an identical call in flight in this
    process, or made now (and cached). Only a reply made now has ``reused`` false."""
    space, key = namespace(context.reuse_group), request_key(call, context)
    flights = _async_flights.setdefault(asyncio.get_running_loop(), {})
    flight = flights.get((space, key))
    if flight is None:
        cached = await store.aget(space, key)
        if cached is not None:
            return replace(_reply(cached.value), reused=True)
        flight = flights.get((space, key))  # another caller may have started it while we looked
        if flight is None:
            made = asyncio.ensure_future(_make(systems, call, context, store, space, key))
            flights[space, key] = made
            made.add_done_callback(lambda done: _landed(flights, (space, key), done))
            # shielded: a caller cancelled (its run stopped) does not cancel the request others wait on
            return await asyncio.shield(made)
    return _taken(await asyncio.shield(flight))


async def _make(systems: Systems, call: ChatCall, context: Context, store: BaseStore, space: tuple[str, ...],
                key: str) -> ChatReply:
    reply = await systems.acall(call)
    await store.aput(space, key, _entry(reply, call, context), index=False)
    return reply


def _landed(flights: dict[_Key, asyncio.Task[ChatReply]], key: _Key, done: asyncio.Task[ChatReply]) -> None:
    flights.pop(key, None)
    if not done.cancelled():
        done.exception()  # retrieved: every waiter may have gone, and the loop would log it as lost


def call(systems: Systems, call: ChatCall, context: Context, store: BaseStore) -> ChatReply:
    """:func:`acall` for the blocking executor (``graph.invoke``): one flight per key across threads."""
    space, key = namespace(context.reuse_group), request_key(call, context)
    with _thread_lock:
        flight = _thread_flights.get((space, key))
    if flight is None:
        cached = store.get(space, key)
        if cached is not None:
            return replace(_reply(cached.value), reused=True)
        mine: concurrent.futures.Future[ChatReply] = concurrent.futures.Future()
        with _thread_lock:
            flight = _thread_flights.setdefault((space, key), mine)
        if flight is mine:
            try:
                reply = systems.call(call)
                store.put(space, key, _entry(reply, call, context), index=False)
            except BaseException as failed:
                mine.set_exception(failed)
                raise
            else:
                mine.set_result(reply)
                return reply
            finally:
                with _thread_lock:
                    _thread_flights.pop((space, key), None)
    return _taken(flight.result())
