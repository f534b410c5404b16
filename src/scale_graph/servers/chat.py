"""Chat calls to the System 1 / System 2 endpoints through ``langchain-openai``.

``ChatOpenAI`` drops the reasoning text vLLM returns (``reasoning`` or ``reasoning_content``)
and shares one ``finish_reason`` between choices; :class:`ReasoningChatOpenAI` keeps both per
choice. :class:`Systems` sends a :class:`ChatCall` to the right endpoint with the thinking
flag, sampling, ``n`` and JSON schema. It drops an optional feature only when the server says
it does not support it (each drop is a ``degraded:`` warning on the reply), caps the requests in
flight per endpoint, and turns transport failures and malformed replies (after bounded retries)
into :class:`EndpointError` (see :mod:`scale_graph.servers.chat_errors`).

Every request made inside :func:`session` carries that session's key in the ``X-Session-ID``
header (percent-encoded when it is not printable ASCII: :func:`session_header`): a router in front of several replicas (``scale servers up --replicas``) keeps all calls
of one run on one replica, whose prefix cache holds the run's earlier prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

import httpx
import openai
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI

from scale_graph.blocking import run_blocking, settled
from scale_graph.parsing import split_think
from scale_graph.redact import redact
from scale_graph.servers.chat_errors import (
    PREFIX_DEGRADED,
    ContextLengthError,
    EndpointError,
    Feature,
    MalformedResponse,
    context_length_error,
    error_message,
    refusal,
    rejected_error,
    thinking_switch_error,
    translated_errors,
    where,
)
from scale_graph.servers import capabilities
from scale_graph.servers.endpoints import Endpoint

__all__ = ["PREFIX_DEGRADED", "SESSION_HEADER", "ChatCall", "ChatReply", "Choice", "ContextLengthError",
           "EndpointError", "ReasoningChatOpenAI", "Systems", "close_clients", "session"]

# The header vllm-router's session policies read first (sticky_least_loaded, consistent_hash). A
# body field would not do: the router finds `"user"` by text search and stops at `"role": "user"`.
SESSION_HEADER = "X-Session-ID"
_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("scale_session", default=None)


#: What a header value may hold as it is: printable ASCII, less "%" (the escape character).
_HEADER_SAFE = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) != "%")


def session_header(key: str) -> str:
    """``key`` as an ``X-Session-ID`` value: a run id, eval name or problem id may be any text, a
    header only ASCII — anything else is percent-encoded (UTF-8), so every id reaches the router
    as one stable value; printable ASCII ids are sent as they are."""
    if key.isascii() and key.isprintable() and " " not in key:
        return key
    return urllib.parse.quote(key, safe=_HEADER_SAFE, errors="backslashreplace")


@contextlib.contextmanager
def session(key: str | None) -> Iterator[None]:
    """Requests made inside (this task or thread, and tasks it starts) carry ``key`` as their
    session; not part of :attr:`ChatCall.journal_key`, so journals and call reuse ignore it."""
    token = _session.set(key)
    try:
        yield
    finally:
        _session.reset(token)


class ReasoningChatOpenAI(ChatOpenAI):
    """ChatOpenAI that keeps each choice's reasoning text and its own finish reason."""

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> ChatResult:
        raw = _checked(response)
        # The parent gets the dict already made: given the typed reply it would dump it a second time
        # (30 KB of reasoning), and the only thing it takes from the typed form is copied below.
        result = super()._create_chat_result(raw, generation_info)
        if not isinstance(response, dict) and result.generations:
            message = response.choices[0].message
            for name in ("parsed", "refusal"):
                if hasattr(message, name):
                    result.generations[0].message.additional_kwargs[name] = getattr(message, name)
        for generation, choice in zip(result.generations, raw.get("choices") or []):
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            generation.message.additional_kwargs["reasoning_content"] = reasoning
            generation.generation_info = {**(generation.generation_info or {}), "finish_reason": choice.get("finish_reason")}
        return result


def _checked(response: Any) -> dict[str, Any]:
    """The reply as a dict, or MalformedResponse when it is not a chat completion with choices."""
    if isinstance(response, dict):
        raw = response
    elif hasattr(response, "model_dump"):
        raw = response.model_dump(warnings=False)
    else:
        raise MalformedResponse(f"the body is not a JSON object: {' '.join(str(response).split())[:120]!r}")
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("no choices")
    if any(not isinstance(choice, dict) or not isinstance(choice.get("message"), dict) for choice in choices):
        raise MalformedResponse("a choice without a message")
    return raw


@dataclass
class ChatCall:
    """One logical request; ``key`` names it in the run's call journal."""

    key: str
    system: Literal[1, 2]
    messages: list[tuple[str, str]]
    thinking: bool
    max_tokens: int
    temperature: float
    top_p: float | None = None
    top_k: int = 0
    seed: int | None = None
    n: int = 1
    schema: dict[str, Any] | None = None  # {"name": ..., "schema": {...}}
    # Native thinking budget (vLLM's thinking_token_budget): sent with a thinking call where the
    # endpoint enforces it (scale_graph.servers.capabilities); max_tokens still bounds the whole reply.
    thinking_budget: int | None = None
    # Continue the last (assistant) message instead of starting a new one: vLLM's
    # continue_final_message with add_generation_prompt false (a forced answer after </think>).
    continue_final: bool = False
    # Sent instead when the endpoint cannot continue a message (its 400 says so); never digested:
    # it is derived from the same inputs as the call itself.
    fallback: ChatCall | None = None

    @cached_property
    def journal_key(self) -> str:
        """``key`` plus a digest of the request: a run forked with other inputs (e.g. edited state
        in Studio) makes new calls, while a resumed run finds the calls it already made."""
        # The fields as a plain dict rather than ``asdict``: its deep copy of the messages costs more
        # than the digest, and json writes tuples as lists, so the text (and key) is the same.
        request = {name: getattr(self, name) for name in _REQUEST_FIELDS}
        for name, default in _LATER_FIELDS.items():  # absent at their default: older journals still match
            if request[name] == default:
                del request[name]
        digest = hashlib.blake2b(json.dumps(request, sort_keys=True).encode(), digest_size=6).hexdigest()
        return f"{self.key}#{digest}"


_REQUEST_FIELDS = tuple(f.name for f in fields(ChatCall) if f.name not in ("key", "fallback"))
#: Fields added after journals were first written, with their defaults.
_LATER_FIELDS: dict[str, Any] = {"thinking_budget": None, "continue_final": False}


EndedBy = Literal["stop", "thinking_budget", "length", "forced_answer"]


@dataclass
class Choice:
    content: str
    reasoning: str
    finish_reason: str | None
    # What ended the thinking (a non-thinking call: the reply): the model ("stop"), the engine's
    # native thinking budget, max_tokens ("length", still thinking), or a forced answer after it.
    ended_by: EndedBy | None = None


@dataclass
class ChatReply:
    """What came back, with the server's token counts summed over the requests made."""

    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 1
    latency_s: float = 0.0
    model: str = ""
    warnings: list[str] = field(default_factory=list)
    reused: bool = False  # taken from another run's identical call (scale_graph.reuse), not generated for this one

    def to_dict(self) -> dict[str, Any]:
        """What ``asdict`` gives (same keys, same order), built directly: it runs for every journalled
        reply, and ``asdict``'s generic recursion costs more than the 30 KB strings it carries."""
        return {"choices": [{"content": c.content, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
                             "ended_by": c.ended_by} for c in self.choices],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "reasoning_tokens": self.reasoning_tokens, "requests": self.requests, "latency_s": self.latency_s,
                "model": self.model, "warnings": list(self.warnings), "reused": self.reused}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatReply:
        reply = cls(**{**data, "choices": [Choice(**c) for c in data["choices"]]})
        reply.warnings = list(reply.warnings)  # its own list: ``data`` may be a cached journal entry
        return reply

    @property
    def usage(self) -> dict[str, int]:
        return {"calls": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "reasoning_tokens": self.reasoning_tokens}


_refused: dict[tuple[str, str], set[Feature]] = {}
"""Per (base URL, model): features the server said it does not support, for the whole process."""

_FEATURE_NAMES: dict[Feature, str] = {"schema": "schema", "n": "n"}
_MAX_THREADS = 64  # a blocking fan-out waits on the endpoint's slots, so more threads would only idle


class Systems:
    """The two endpoints of a run; safe to share between threads and concurrent tasks.

    At most ``max_in_flight`` requests go to one endpoint at a time (all Systems of the process
    with that limit share the slots), however many runs, candidates or samples ask at once.
    """

    def __init__(self, system1: Endpoint, system2: Endpoint, *, thinking_flag: bool = True,
                 structured_output: bool = True, use_n: bool = True, max_in_flight: int = 64) -> None:
        self.endpoints = {1: system1, 2: system2}
        self.disabled: set[Feature] = set()
        if not thinking_flag:
            self.disabled.add("thinking_flag")
        if not structured_output:
            self.disabled.add("schema")
        if not use_n:
            self.disabled.add("n")
        self.max_in_flight = max(1, max_in_flight)

    # ---- public API -------------------------------------------------------------------
    def call(self, call: ChatCall) -> ChatReply:
        """Send ``call`` and wait; blocking."""
        return run_blocking(self._attempts(call, self._send_sync))

    async def acall(self, call: ChatCall) -> ChatReply:
        """Send ``call`` without blocking the event loop."""
        return await self._attempts(call, self._send_async)

    # ---- internals ----------------------------------------------------------------------
    async def _attempts(self, call: ChatCall, send: Callable[[ChatCall, set[Feature]], Any]) -> ChatReply:
        """Send ``call`` with ``send`` (blocking or async), again without each optional feature the
        endpoint refuses (HTTP 400), until it is answered or fails for another reason."""
        warnings = self._remembered(call)
        if call.continue_final and "continuation" in self._refused(call.system):
            return await self._fallback(call, send, warnings, None)
        while True:
            refused = self._refused(call.system)
            budget = self._budget_sent(call, refused)
            started = time.perf_counter()
            try:
                parts = await settled(send(call, refused))
            except openai.BadRequestError as exc:
                if call.continue_final and refusal(exc) not in ("context_length", "thinking_flag"):
                    return await self._fallback(call, send, warnings, exc)
                self._degrade(call, exc, warnings)
                continue
            reply = _merge(parts, time.perf_counter() - started, warnings)
            self._judge_budget(call, budget, reply)
            _mark_ended(reply, call.thinking, budget)
            return reply

    async def _fallback(self, call: ChatCall, send: Callable[[ChatCall, set[Feature]], Any], warnings: list[str],
                        exc: openai.BadRequestError | None) -> ChatReply:
        """``call.fallback`` for an endpoint that cannot continue a message (now, or earlier in the process)."""
        endpoint = self.endpoints[call.system]
        if call.fallback is None:
            if exc is None:
                raise EndpointError(f"{where(endpoint)} cannot continue a message", endpoint=endpoint)
            raise rejected_error(endpoint, exc) from None
        if exc is not None:
            _refused.setdefault((endpoint.base_url, endpoint.model), set()).add("continuation")
        why = f"HTTP 400: {error_message(exc)}" if exc is not None else "it refused earlier in this process"
        reply = await self._attempts(call.fallback, send)
        reply.warnings.insert(0, redact(f"{PREFIX_DEGRADED}System {call.system} endpoint cannot continue its own "
                                        f"reply ({why}); System {call.fallback.system} wrote this instead"))
        reply.warnings[:0] = warnings
        return reply

    def _budget_sent(self, call: ChatCall, refused: set[Feature]) -> int | None:
        """The thinking budget this call sends: a thinking call's, unless the endpoint does not enforce it."""
        if not call.thinking or call.thinking_budget is None or "thinking_budget" in refused:
            return None
        endpoint = self.endpoints[call.system]
        return call.thinking_budget if capabilities.sends_budget(endpoint.base_url, endpoint.model) else None

    def _judge_budget(self, call: ChatCall, budget: int | None, reply: ChatReply) -> None:
        """The probe: what the endpoint did with the budget, from this reply (see capabilities)."""
        if budget is None:
            return
        endpoint = self.endpoints[call.system]
        answer = capabilities.judge(budget, reply.reasoning_tokens, len(reply.choices))
        if capabilities.record(endpoint.base_url, endpoint.model, answer) and answer == "ignored":
            reply.warnings.append(f"thinking budget: System {call.system} endpoint accepted thinking_token_budget "
                                  f"but thought past it ({reply.reasoning_tokens:,} reasoning tokens for a budget of "
                                  f"{budget:,}); cut thinking is finished by the forced-answer follow-up instead")

    def _send_sync(self, call: ChatCall, refused: set[Feature]) -> list[ChatReply]:
        if call.n > 1 and "n" in refused:
            return self._fan_out_sync(call, refused)
        return [self._request_sync(call, None, refused)]

    async def _send_async(self, call: ChatCall, refused: set[Feature]) -> list[ChatReply]:
        if call.n > 1 and "n" in refused:
            return await self._fan_out_async(call, refused)
        return [await self._request_async(call, None, refused)]

    def _fan_out_sync(self, call: ChatCall, refused: set[Feature]) -> list[ChatReply]:
        """The ``n`` samples as ``n`` requests; the first failure stops every sample not yet sent."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def sample_of(sample: int) -> ChatReply:
            try:
                return self._request_sync(call, sample, refused, stop)
            except _Stopped:
                raise
            except BaseException as exc:
                failures.append(exc)
                stop.set()  # here, before this worker takes the next sample
                raise

        pool = ThreadPoolExecutor(max_workers=min(call.n, self.max_in_flight, _MAX_THREADS))
        # a pool thread does not see this thread's context variables (the session): give each its copy
        futures = [pool.submit(contextvars.copy_context().run, sample_of, sample) for sample in range(call.n)]
        wait(futures, return_when=FIRST_EXCEPTION)
        if failures:
            # requests already on the wire finish in the background; nothing new is sent
            pool.shutdown(wait=False, cancel_futures=True)
            raise failures[0]
        pool.shutdown()
        return [f.result() for f in futures]

    async def _fan_out_async(self, call: ChatCall, refused: set[Feature]) -> list[ChatReply]:
        """The ``n`` samples as ``n`` requests; the first failure cancels the others."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._request_async(call, sample, refused)) for sample in range(call.n)]
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None  # the failure that cancelled its siblings
        return [task.result() for task in tasks]

    def _remembered(self, call: ChatCall) -> list[str]:
        """A warning for each thing this call goes without: features the endpoint refused earlier in
        this process, and the thinking switch when the user turned it off."""
        endpoint = self.endpoints[call.system]
        refused = _refused.get((endpoint.base_url, endpoint.model), set())
        warnings = [f"{PREFIX_DEGRADED}System {call.system} endpoint: sent without {_FEATURE_NAMES[feature]}, "
                    f"which it refused (HTTP 400) earlier in this process"
                    for feature in _features(call) if feature in refused and feature not in self.disabled]
        if "thinking_flag" in self.disabled:
            warnings.append(f"{PREFIX_DEGRADED}System {call.system} endpoint: sent without the thinking switch "
                            f"(thinking_flag off), so the server's default thinking mode applied, not "
                            f"enable_thinking={str(call.thinking).lower()}")
        return warnings

    def _refused(self, system: int) -> set[Feature]:
        endpoint = self.endpoints[system]
        return self.disabled | _refused.get((endpoint.base_url, endpoint.model), set())

    def _degrade(self, call: ChatCall, exc: openai.BadRequestError, warnings: list[str]) -> None:
        """Drop the one optional feature the server's 400 says it does not support, or raise the
        error the 400 is: a context-length error, a refused thinking switch, or a rejection."""
        endpoint = self.endpoints[call.system]
        kind = refusal(exc)
        if kind == "context_length":
            raise context_length_error(endpoint, exc) from None
        if kind == "thinking_flag":
            raise thinking_switch_error(endpoint, exc) from None
        if kind == "thinking_budget" and self._budget_sent(call, self._refused(call.system)) is not None:
            capabilities.record(endpoint.base_url, endpoint.model, "refused")
            _refused.setdefault((endpoint.base_url, endpoint.model), set()).add("thinking_budget")
            # not a degradation: the forced-answer follow-up is the documented policy without it
            warnings.append(redact(f"thinking budget: System {call.system} endpoint refused thinking_token_budget "
                                   f"(HTTP 400: {error_message(exc)}); cut thinking is finished by the "
                                   f"forced-answer follow-up instead"))
            return
        feature = next((f for f in _features(call) if f == kind), None)
        if feature is not None and feature not in self._refused(call.system):
            _refused.setdefault((endpoint.base_url, endpoint.model), set()).add(feature)
            warnings.append(redact(f"{PREFIX_DEGRADED}System {call.system} endpoint refused {_FEATURE_NAMES[feature]} "
                                   f"(HTTP 400: {error_message(exc)}); retried without it"))
            return
        raise rejected_error(endpoint, exc) from None

    def _payload(self, call: ChatCall, sample: int | None, refused: set[Feature]) -> tuple[list, dict]:
        messages = [{"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}[role](content=text)
                    for role, text in call.messages]
        extra: dict[str, Any] = {}
        kwargs: dict[str, Any] = {"max_tokens": call.max_tokens, "temperature": call.temperature}
        if call.top_p is not None:
            kwargs["top_p"] = call.top_p
        if call.top_k:
            extra["top_k"] = call.top_k
        if call.seed is not None:
            kwargs["seed"] = call.seed + (sample or 0)
        if call.n > 1 and sample is None:
            kwargs["n"] = call.n
        if "thinking_flag" not in refused:
            extra["chat_template_kwargs"] = {"enable_thinking": call.thinking}
        if call.schema is not None and "schema" not in refused:
            extra["response_format"] = {"type": "json_schema", "json_schema": {**call.schema, "strict": True}}
        budget = self._budget_sent(call, refused)
        if budget is not None:
            extra["thinking_token_budget"] = budget
        if call.continue_final:
            extra["continue_final_message"] = True
            extra["add_generation_prompt"] = False
        kwargs["extra_body"] = extra
        key = _session.get()
        if key:
            kwargs["extra_headers"] = {SESSION_HEADER: session_header(key)}
        return messages, kwargs

    def _request_sync(self, call: ChatCall, sample: int | None, refused: set[Feature],
                      stop: threading.Event | None = None) -> ChatReply:
        endpoint = self.endpoints[call.system]
        messages, kwargs = self._payload(call, sample, refused)
        with _sync_slot(endpoint, self.max_in_flight):
            problem = MalformedResponse()
            for _ in range(endpoint.max_retries + 1):
                if stop is not None and stop.is_set():
                    raise _Stopped
                try:
                    with translated_errors(endpoint):
                        return _reply(_client(endpoint).generate([messages], **kwargs))
                except MalformedResponse as exc:
                    problem = exc
        raise _malformed(endpoint, problem)

    async def _request_async(self, call: ChatCall, sample: int | None, refused: set[Feature]) -> ChatReply:
        endpoint = self.endpoints[call.system]
        messages, kwargs = self._payload(call, sample, refused)
        async with _async_slot(endpoint, self.max_in_flight):
            problem = MalformedResponse()
            for _ in range(endpoint.max_retries + 1):
                try:
                    with translated_errors(endpoint):
                        return _reply(await _client(endpoint).agenerate([messages], **kwargs))
                except MalformedResponse as exc:
                    problem = exc
        raise _malformed(endpoint, problem)


class _Stopped(Exception):
    """A sample not sent because a sibling request of its call failed first."""


def _malformed(endpoint: Endpoint, exc: MalformedResponse) -> EndpointError:
    reason = f"sent a malformed response after {endpoint.max_retries} retries: {exc}"
    return EndpointError(f"malformed response from {where(endpoint)} after {endpoint.max_retries} retries: {exc}",
                         endpoint=endpoint, reason=reason)


def _features(call: ChatCall) -> list[Feature]:
    """The optional features a call uses that a server may refuse (the thinking switch is never
    dropped: without it a Qwen3-like server thinks on every System 1 call)."""
    used: list[Feature] = []
    if call.schema is not None:
        used.append("schema")
    if call.n > 1:
        used.append("n")
    return used


# ---- requests in flight ------------------------------------------------------------------------
_SlotKey = tuple[str, str, int]
_async_slots: weakref.WeakKeyDictionary[Any, dict[_SlotKey, asyncio.Semaphore]] = weakref.WeakKeyDictionary()
_thread_slots: dict[_SlotKey, threading.BoundedSemaphore] = {}
_thread_slots_lock = threading.Lock()


def _slot_key(endpoint: Endpoint, limit: int) -> _SlotKey:
    return (endpoint.base_url, endpoint.model, limit)


def _async_slot(endpoint: Endpoint, limit: int) -> asyncio.Semaphore:
    """The endpoint's in-flight slots on the running event loop (a semaphore is bound to its loop)."""
    slots = _async_slots.setdefault(asyncio.get_running_loop(), {})
    return slots.setdefault(_slot_key(endpoint, limit), asyncio.Semaphore(limit))


def _sync_slot(endpoint: Endpoint, limit: int) -> threading.BoundedSemaphore:
    with _thread_slots_lock:
        return _thread_slots.setdefault(_slot_key(endpoint, limit), threading.BoundedSemaphore(limit))


def _reply(result: Any) -> ChatReply:
    choices = []
    for generation in result.generations[0]:
        content = generation.message.content if isinstance(generation.message.content, str) else ""
        reasoning = generation.message.additional_kwargs.get("reasoning_content") or ""
        inline_reasoning, content = split_think(content or "")
        choices.append(Choice(content=content, reasoning=(reasoning or inline_reasoning),
                              finish_reason=(generation.generation_info or {}).get("finish_reason")))
    usage = (result.llm_output or {}).get("token_usage") or {}
    details = usage.get("completion_tokens_details") or {}
    return ChatReply(choices=choices, prompt_tokens=usage.get("prompt_tokens") or 0,
                     completion_tokens=usage.get("completion_tokens") or 0,
                     reasoning_tokens=(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0,
                     model=(result.llm_output or {}).get("model_name", ""))


def _mark_ended(reply: ChatReply, thinking: bool, budget: int | None) -> None:
    """Each choice's ``ended_by``: cut while thinking, ended by the native budget, or by the model."""
    total_reasoning = sum(len(choice.reasoning) for choice in reply.choices) or 1
    for choice in reply.choices:
        # the reply's reasoning tokens shared among its choices by the length of their reasoning text
        tokens = reply.reasoning_tokens * len(choice.reasoning) / total_reasoning
        if choice.finish_reason == "length" and not choice.content.strip():
            choice.ended_by = "length"
        elif thinking and budget is not None and choice.reasoning and tokens >= budget:
            choice.ended_by = "thinking_budget"
        else:
            choice.ended_by = "length" if choice.finish_reason == "length" else "stop"


def _merge(parts: list[ChatReply], latency: float, warnings: list[str]) -> ChatReply:
    return ChatReply(choices=[c for p in parts for c in p.choices],
                     prompt_tokens=sum(p.prompt_tokens for p in parts),
                     completion_tokens=sum(p.completion_tokens for p in parts),
                     reasoning_tokens=sum(p.reasoning_tokens for p in parts),
                     requests=len(parts), latency_s=round(latency, 4), model=parts[0].model,
                     warnings=list(warnings))


_LIMITS = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
_clients: weakref.WeakKeyDictionary[Any, dict[Endpoint, ReasoningChatOpenAI]] = weakref.WeakKeyDictionary()
_sync_clients: dict[Endpoint, ReasoningChatOpenAI] = {}


async def close_clients() -> None:
    """Close the connection pools of the running event loop (call before the loop ends)."""
    clients = _clients.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        if client.http_async_client is not None:
            await client.http_async_client.aclose()


def _client(endpoint: Endpoint) -> ReasoningChatOpenAI:
    """One client (connection pool) per endpoint, shared by every run of the process — per event
    loop for async use, since an async connection pool cannot outlive its loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    cache = _sync_clients if loop is None else _clients.setdefault(loop, {})
    if endpoint not in cache:
        # aiohttp transport for async: httpx's pool costs several ms of CPU per call at 100+ in flight.
        http = ({"http_client": httpx.Client(timeout=endpoint.timeout, limits=_LIMITS)} if loop is None
                else {"http_async_client": openai.DefaultAioHttpClient(timeout=endpoint.timeout)})
        cache[endpoint] = ReasoningChatOpenAI(model=endpoint.model, base_url=endpoint.base_url,
                                              api_key=endpoint.api_key or "EMPTY", timeout=endpoint.timeout,
                                              max_retries=endpoint.max_retries, **http)
    return cache[endpoint]
