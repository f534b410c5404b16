"""Chat calls to the System 1 / System 2 endpoints through ``langchain-openai``.

``ChatOpenAI`` drops the reasoning text vLLM returns (``reasoning`` or ``reasoning_content``)
and shares one ``finish_reason`` between choices; :class:`ReasoningChatOpenAI` keeps both per
choice. :class:`Systems` sends a :class:`ChatCall` to the right endpoint with the thinking
flag, sampling, ``n`` and JSON schema, degrading gracefully when a server rejects an optional
feature, and turns transport failures (after the client's bounded retries) into
:class:`EndpointError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

import httpx
import openai
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI

from scale_graph.parsing import split_think
from scale_graph.servers.endpoints import Endpoint


class EndpointError(RuntimeError):
    """An endpoint failed after bounded retries, or refused a request; one line for the user."""


class ContextLengthError(EndpointError):
    """The server refused a prompt longer than its context window (``limit`` tokens; ``requested`` asked)."""

    def __init__(self, message: str, *, limit: int | None = None, requested: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.requested = limit, requested


class ReasoningChatOpenAI(ChatOpenAI):
    """ChatOpenAI that keeps each choice's reasoning text and its own finish reason."""

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump(warnings=False)
        for generation, choice in zip(result.generations, raw.get("choices") or []):
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            generation.message.additional_kwargs["reasoning_content"] = reasoning
            generation.generation_info = {**(generation.generation_info or {}), "finish_reason": choice.get("finish_reason")}
        return result


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

    @cached_property
    def journal_key(self) -> str:
        """``key`` plus a digest of the request: a run forked with other inputs (e.g. edited state
        in Studio) makes new calls, while a resumed run finds the calls it already made."""
        request = asdict(self)
        del request["key"]
        digest = hashlib.blake2b(json.dumps(request, sort_keys=True).encode(), digest_size=6).hexdigest()
        return f"{self.key}#{digest}"


@dataclass
class Choice:
    content: str
    reasoning: str
    finish_reason: str | None


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatReply:
        return cls(**{**data, "choices": [Choice(**c) for c in data["choices"]]})

    @property
    def usage(self) -> dict[str, int]:
        return {"calls": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "reasoning_tokens": self.reasoning_tokens}


# Optional request features a server may refuse with HTTP 400, dropped in this order.
Feature = Literal["schema", "n", "thinking_flag"]
_refused: dict[tuple[str, str], set[Feature]] = {}


class Systems:
    """The two endpoints of a run; safe to share between threads and concurrent tasks."""

    def __init__(self, system1: Endpoint, system2: Endpoint, *, thinking_flag: bool = True,
                 structured_output: bool = True, use_n: bool = True) -> None:
        self.endpoints = {1: system1, 2: system2}
        self.disabled: set[Feature] = set()
        if not thinking_flag:
            self.disabled.add("thinking_flag")
        if not structured_output:
            self.disabled.add("schema")
        if not use_n:
            self.disabled.add("n")

    # ---- public API -------------------------------------------------------------------
    def call(self, call: ChatCall) -> ChatReply:
        """Send ``call`` and wait; blocking."""
        return self._sync(call)

    async def acall(self, call: ChatCall) -> ChatReply:
        """Send ``call`` without blocking the event loop."""
        return await self._async(call)

    # ---- internals ----------------------------------------------------------------------
    def _sync(self, call: ChatCall) -> ChatReply:
        warnings = self._remembered(call)
        while True:
            refused = self._refused(call.system)
            started = time.perf_counter()
            try:
                if call.n > 1 and "n" in refused:
                    with ThreadPoolExecutor(max_workers=min(call.n, 16)) as pool:
                        parts = list(pool.map(lambda j: self._request_sync(call, j, refused), range(call.n)))
                    return _merge(parts, time.perf_counter() - started, warnings)
                return _merge([self._request_sync(call, None, refused)], time.perf_counter() - started, warnings)
            except openai.BadRequestError as exc:
                self._degrade(call, exc, warnings)

    async def _async(self, call: ChatCall) -> ChatReply:
        warnings = self._remembered(call)
        while True:
            refused = self._refused(call.system)
            started = time.perf_counter()
            try:
                if call.n > 1 and "n" in refused:
                    parts = await asyncio.gather(*(self._request_async(call, j, refused) for j in range(call.n)))
                    return _merge(list(parts), time.perf_counter() - started, warnings)
                return _merge([await self._request_async(call, None, refused)], time.perf_counter() - started, warnings)
            except openai.BadRequestError as exc:
                self._degrade(call, exc, warnings)

    def _remembered(self, call: ChatCall) -> list[str]:
        """A warning for each feature this call goes without because the endpoint refused it before."""
        endpoint = self.endpoints[call.system]
        used = _features(call)
        return [f"System {call.system} endpoint: sent without {feature}, which it refused (HTTP 400) earlier "
                f"in this process" for feature in used if feature in _refused.get((endpoint.base_url, endpoint.model), ())
                and feature not in self.disabled]

    def _refused(self, system: int) -> set[Feature]:
        endpoint = self.endpoints[system]
        return self.disabled | _refused.get((endpoint.base_url, endpoint.model), set())

    def _degrade(self, call: ChatCall, exc: openai.BadRequestError, warnings: list[str]) -> None:
        """Drop the next optional feature the request used, or give up with a clear error."""
        endpoint = self.endpoints[call.system]
        refused = self._refused(call.system)
        for feature in _features(call):
            if feature not in refused:
                _refused.setdefault((endpoint.base_url, endpoint.model), set()).add(feature)
                warnings.append(f"System {call.system} endpoint refused {feature} (HTTP 400); retried without it")
                return
        raise EndpointError(f"System {call.system} endpoint {endpoint.base_url} rejected the request "
                            f"(HTTP 400): {_error_message(exc)}") from None

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
        kwargs["extra_body"] = extra
        return messages, kwargs

    def _request_sync(self, call: ChatCall, sample: int | None, refused: set[Feature]) -> ChatReply:
        messages, kwargs = self._payload(call, sample, refused)
        with _translated_errors(self.endpoints[call.system]):
            result = _client(self.endpoints[call.system]).generate([messages], **kwargs)
        return _reply(result)

    async def _request_async(self, call: ChatCall, sample: int | None, refused: set[Feature]) -> ChatReply:
        messages, kwargs = self._payload(call, sample, refused)
        with _translated_errors(self.endpoints[call.system]):
            result = await _client(self.endpoints[call.system]).agenerate([messages], **kwargs)
        return _reply(result)


def _features(call: ChatCall) -> list[Feature]:
    """The optional features a call uses, in the order they are dropped on HTTP 400."""
    used: list[Feature] = []
    if call.schema is not None:
        used.append("schema")
    if call.n > 1:
        used.append("n")
    used.append("thinking_flag")
    return used


class _translated_errors:
    """Turn the OpenAI client's final transport/server errors into one-line EndpointErrors."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, _tb: Any) -> bool:
        if exc is None or isinstance(exc, openai.BadRequestError):
            return False
        where = f"System {self.endpoint.system} endpoint {self.endpoint.base_url} (model {self.endpoint.model})"
        retries = f"after {self.endpoint.max_retries} retries"
        if isinstance(exc, openai.APIConnectionError) and (failure := _connection_failure(exc)):
            raise EndpointError(f"{where} is unreachable {retries}: {failure}") from None
        if isinstance(exc, openai.APITimeoutError):
            raise EndpointError(f"{where} timed out {retries} (timeout {self.endpoint.timeout:g} s)") from None
        if isinstance(exc, openai.APIConnectionError):
            raise EndpointError(f"{where} is unreachable {retries}: {_error_message(exc)}") from None
        if isinstance(exc, openai.AuthenticationError):
            raise EndpointError(f"{where} refused the API key (HTTP 401)") from None
        if isinstance(exc, openai.NotFoundError):
            raise EndpointError(f"{where} answered 404: check the base URL and model name") from None
        if isinstance(exc, openai.APIStatusError):
            raise EndpointError(f"{where} failed {retries}: HTTP {exc.status_code} {_error_message(exc)}") from None
        if isinstance(exc, (ValueError, KeyError, TypeError)) and "langchain" not in type(exc).__module__:
            raise EndpointError(f"{where} returned a malformed response: {exc}") from None
        return False


_CLOSED = ("ServerDisconnectedError", "RemoteProtocolError", "ReadError")


def _connection_failure(exc: BaseException) -> str | None:
    """What went wrong when a transport error is a refused or dropped connection, not a timeout
    (the aiohttp transport reports those as timeouts too)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionError) or type(seen).__name__ in _CLOSED:
            return "the server closed the connection"
        seen = seen.__cause__ or seen.__context__
    return None


def _error_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if message:
            return " ".join(str(message).split())[:300]
    cause = exc.__cause__ or exc
    return " ".join(str(cause).split())[:300] or type(exc).__name__


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
