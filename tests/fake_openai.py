"""A scriptable fake OpenAI-compatible chat server for tests and benchmarks.

The server speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` request bodies,
chunked SSE responses) to be driven by the real ``openai`` / ``httpx`` clients, and it
answers every SCALE stage with the right *kind* of text, so the whole workflow can run
against it without a model. It is standard library only: one asyncio event loop in a
background thread serves all connections, so hundreds of requests can sleep a simulated
latency at the same time without a thread per request.

In-process use::

    with FakeOpenAIServer(latency=0.0, reasoning_bytes=30_000) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        server.inject("500", times=2)        # the next two requests fail with HTTP 500
        ...
        server.stats()["by_stage"]           # {"decomposition": 1, "selection": 1, ...}

As a separate process (prints ``READY <base_url>`` once listening)::

    python -m tests.fake_openai --port 0 --latency 0.2

Another process drives it through control endpoints: ``GET /_stats``,
``POST /_inject {"fault": ..., "times": N, "stage": ...}``, ``POST /_reset``,
``GET|POST /_config {...}``.

**Stage detection.** A request with ``response_format.type == "json_schema"`` whose
``json_schema.name`` is one of ``decomposition``, ``selection``, ``difficulty`` is that
stage. Otherwise the *last* message's content decides: the closing ``Respond with JSON only:
{"difficulty"`` / ``{"choice"`` / ``{"subproblems"`` line of the planner prompts (taken from
:mod:`scale_graph.prompts`, so the fake follows the real prompts) names the stage; anything
else is a solve.

**Answers.** Decomposition ``{"subproblems": [...]}``, selection ``{"choice": k}``,
difficulty ``{"difficulty": x}``; the JSON is the bare ``content`` when the request asked for
structured output (``json_schema`` or ``json_object``) and wrapped in a ```` ```json ````
fence otherwise. Solve answers end with ``The result is \\boxed{N}.`` where
``N = answer_for(messages)``. When ``chat_template_kwargs.enable_thinking`` is true (any
stage) the model "thinks" first: ``reasoning_bytes`` of reasoning text placed as the
``reasoning_field`` setting says.

**Usage.** ``tokens(text) = len(text) // 4``. ``prompt_tokens = max(1, tokens(all message
contents))``; ``completion_tokens`` is the sum over choices of ``tokens(content + reasoning
field)`` (plus the hidden reasoning when ``reasoning_field="none"``);
``completion_tokens_details.reasoning_tokens`` (sum of ``tokens(reasoning)``) is present
when any reasoning was generated.

**Thinking budget.** ``thinking_token_budget`` is ignored, enforced (the reasoning cut at
``4 * budget`` characters, the thinking closed, the answer following) or refused with HTTP 400, as
the ``thinking_budget`` setting says; ``continue_final_message`` (a continued assistant message)
is answered like any solve unless ``supports_continuation`` is false (HTTP 400).

**Budget.** When the reasoning is longer than ``4 * (max_completion_tokens or max_tokens)``
characters it is cut there, the content is empty (inline mode: an unclosed ``<think>``) and
``finish_reason`` is ``"length"``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import http
import inspect
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scale_graph import prompts
from scale_graph.nodes.assess import DIFFICULTY_SCHEMA
from scale_graph.nodes.decompose import decomposition_schema
from scale_graph.nodes.select import selection_schema

__all__ = [
    "FAULTS",
    "MODELS",
    "REASONING_FIELDS",
    "STAGES",
    "FakeOpenAIConfig",
    "FakeOpenAIServer",
    "answer_for",
    "detect_stage",
    "main",
]

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("decomposition", "selection", "difficulty", "solve")
"""The request kinds the server recognises, see :func:`detect_stage`."""

MODELS: tuple[str, ...] = ("scale-system1", "scale-system2")
"""Model ids listed by ``GET /v1/models`` (requests may name any model)."""

REASONING_FIELDS: tuple[str, ...] = ("reasoning", "reasoning_content", "inline", "none")
"""Where thinking text goes: newer vLLM, older vLLM, ``<think>`` in content, hidden."""

THINKING_BUDGETS: tuple[str, ...] = ("ignore", "enforce", "refuse")
"""What the server does with ``thinking_token_budget``, see :attr:`FakeOpenAIConfig.thinking_budget`."""

def _json_line(template: str, **fields: Any) -> str:
    """The closing ``Respond with JSON only: {"key"`` of a planner prompt, lower-cased: its key
    names the stage, and taking it from the prompt constants keeps the fake in step with them."""
    line = template.format(**fields).rstrip().splitlines()[-1]
    return line[: line.index('":') + 1].lower()


#: Stage → (JSON-schema name the node sends, what its prompt's last line starts with).
_PLANNER_STAGES = {
    "difficulty": (DIFFICULTY_SCHEMA["name"], _json_line(prompts.ASSESS, number=1)),
    "selection": (selection_schema(2)["name"], _json_line(prompts.SELECT, count=2, candidates="")),
    "decomposition": (decomposition_schema(2)["name"], _json_line(prompts.DECOMPOSE, max_subproblems=2)),
}
_JSON_STAGES = frozenset(_PLANNER_STAGES)
_ALL_STAGES = frozenset(STAGES)

FAULTS: dict[str, frozenset[str]] = {
    # Transport and HTTP-level faults: meaningful for every stage.
    "refuse": _ALL_STAGES,  # close the socket without answering
    "500": _ALL_STAGES,
    "502": _ALL_STAGES,
    "503": _ALL_STAGES,
    "429": _ALL_STAGES,  # with Retry-After: 0
    "400": _ALL_STAGES,
    "timeout": _ALL_STAGES,  # hold the request open for hang_seconds, then close
    "drop": _ALL_STAGES,  # headers with Content-Length, then close mid-body
    "context_length": _ALL_STAGES,  # HTTP 400 worded as vLLM words a prompt longer than the context
    "echo_auth_500": _ALL_STAGES,  # HTTP 500 whose message echoes the request's Authorization header
    # Malformed 200 replies.
    "no_choices": _ALL_STAGES,  # "choices": []
    "no_message": _ALL_STAGES,  # a choice without "message"
    "not_json": _ALL_STAGES,  # a 200 whose body is not JSON (an HTML page)
    # Content faults.
    "empty": _ALL_STAGES,  # content "", no reasoning, finish_reason "stop"
    "reasoning_only": _ALL_STAGES,  # content "", the whole answer in the reasoning field
    "length": _ALL_STAGES,  # thinking cut at the budget: content "", finish_reason "length"
    "malformed_json": _JSON_STAGES,  # the JSON answer cut in half
    "difficulty_out_of_range": frozenset({"difficulty"}),  # {"difficulty": 7.5}
    "no_difficulty": frozenset({"difficulty"}),  # "I cannot tell."
    "zero_subproblems": frozenset({"decomposition"}),  # {"subproblems": []}
    "many_subproblems": frozenset({"decomposition"}),  # 200 sub-problems
    "no_boxed": frozenset({"solve"}),  # solve answer without \\boxed{}
}
"""Injectable faults, each mapped to the stages it can apply to. ``inject(f)`` without a
stage is consumed by the next request of any of these stages."""

_HTTP_FAULTS = {"500": 500, "502": 502, "503": 503, "429": 429, "400": 400}
#: vLLM's wording (renderers/params.py) for a request that does not fit the model's context.
CONTEXT_LENGTH_MESSAGE = ("This model's maximum context length is {limit} tokens. However, you requested {requested} "
                          "tokens ({prompt} in the messages, {output} in the completion). Please reduce the length "
                          "of the messages or completion.")
CONTEXT_LIMIT = 8192
#: The ``max_model_len`` reported with ``model_root`` (Qwen3's native window: larger than any default budget).
MAX_MODEL_LEN = 40_960
_NOT_JSON_BODY = b"<html><body><h1>Welcome</h1>This is not the API you are looking for.</body></html>"
_MANY_SUBPROBLEMS = 200
_OUT_OF_RANGE_DIFFICULTY = 7.5
_STREAM_PIECE_CHARS = 256
_REASONING_FILLER = "Let me think about this step carefully and check each quantity. "
_CONTENT_FILLER = "We work through the sub-problem one quantity at a time. "


@dataclass(frozen=True)
class FakeOpenAIConfig:
    """Behaviour of a :class:`FakeOpenAIServer`; every field is also a constructor kwarg,
    a ``POST /_config`` key and a CLI flag (``--reasoning-bytes`` ...)."""

    latency: float = 0.0
    """Seconds every chat completion waits before answering."""
    reasoning_bytes: int = 200
    """Length of the reasoning text of a thinking request."""
    content_bytes: int = 64
    """Length of the worked-solution text before the final sentence of a non-thinking solve."""
    reasoning_field: str = "reasoning"
    """One of :data:`REASONING_FIELDS`."""
    subproblem_count: int = 3
    """Sub-problems per decomposition."""
    difficulties: Sequence[float] | Callable[[dict[str, Any]], float] = (0.1, 0.8)
    """Difficulty answers cycled per difficulty request (all ``n`` choices share one), or
    (in-process only) a callable receiving the parsed request body and returning the
    difficulty; it runs on the server's event loop thread and must not block."""
    choice: int = 1
    """1-based decomposition index returned by the selection stage."""
    supports_json_schema: bool = True
    """If false, ``response_format`` of type ``json_schema`` gets HTTP 400."""
    supports_n: bool = True
    """If false, ``n > 1`` gets HTTP 400."""
    supports_thinking_flag: bool = True
    """If false, any ``chat_template_kwargs`` gets HTTP 400."""
    thinking_budget: str = "ignore"
    """What ``thinking_token_budget`` does: ``"ignore"`` (accepted, no effect: servers that drop unknown
    fields), ``"enforce"`` (vLLM ≥ 0.19 with a reasoning parser: the reasoning is cut at the budget,
    the thinking closed and the answer follows in the same reply) or ``"refuse"`` (HTTP 400)."""
    supports_continuation: bool = True
    """If false, ``continue_final_message`` gets HTTP 400 (a server that cannot continue a message)."""
    api_key: str | None = None
    """If set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401."""
    hang_seconds: float = 30.0
    """How long the ``timeout`` fault holds a request open before closing it."""
    model_root: str | None = None
    """If set, ``GET /v1/models`` describes every model as vLLM does: ``root`` (the model path,
    this value) and ``max_model_len`` (:data:`MAX_MODEL_LEN`); a new value swaps the model behind
    the served names."""

    def __post_init__(self) -> None:
        for name in ("latency", "hang_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("reasoning_bytes", "content_bytes", "subproblem_count", "choice"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.choice < 1:
            raise ValueError(f"choice is 1-based, got {self.choice!r}")
        if self.thinking_budget not in THINKING_BUDGETS:
            raise ValueError(f"thinking_budget must be one of {THINKING_BUDGETS}, got {self.thinking_budget!r}")
        for name in ("supports_json_schema", "supports_n", "supports_thinking_flag", "supports_continuation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(f"reasoning_field must be one of {REASONING_FIELDS}, got {self.reasoning_field!r}")
        for name in ("api_key", "model_root"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        if not callable(self.difficulties):
            values = self.difficulties
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"difficulties must be a non-empty list of numbers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise ValueError(f"difficulties must be numbers, got {values!r}")
            object.__setattr__(self, "difficulties", tuple(float(v) for v in values))

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (a difficulty callable is shown by its repr)."""
        data = dataclasses.asdict(self)
        data["difficulties"] = repr(self.difficulties) if callable(self.difficulties) else list(self.difficulties)
        return data


# --------------------------------------------------------------------------------------
# Request interpretation and answer generation (pure functions)
# --------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def detect_stage(body: dict[str, Any]) -> str:
    """The SCALE stage a chat request belongs to (one of :data:`STAGES`)."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema")
        name = schema.get("name") if isinstance(schema, dict) else None
        for stage, (schema_name, _) in _PLANNER_STAGES.items():
            if name == schema_name:
                return stage
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    text = _text_of(last.get("content")).lower()
    for stage, (_, closing) in _PLANNER_STAGES.items():
        if closing in text:
            return stage
    return "solve"


def answer_for(messages: list[dict[str, Any]]) -> int:
    """The number a solve request is answered with: a deterministic hash of the message
    contents, in ``[0, 1000)``. Tests use it to know the expected ``\\boxed{}`` value."""
    text = "\x00".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 1000


def _tokens(text: str) -> int:
    return len(text) // 4


def _filler(pattern: str, size: int) -> str:
    """Deterministic text of exactly ``size`` characters."""
    return (pattern * (size // len(pattern) + 1))[:size]


def _thinking_requested(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs")
    return isinstance(kwargs, dict) and kwargs.get("enable_thinking") is True


def _structured_output(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")


def _budget_chars(body: dict[str, Any]) -> int | None:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return 4 * limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


@dataclass
class _Generation:
    """One choice before it is placed into a message: the visible answer text, the thinking
    text, whether the thinking was closed, and why generation stopped."""

    content: str
    reasoning: str = ""
    thinking_closed: bool = True
    finish_reason: str = "stop"


def _stage_answer(stage: str, body: dict[str, Any], cfg: FakeOpenAIConfig, index: int, difficulty: float, fault: str | None) -> str:
    """The visible answer of one choice for ``stage`` (before thinking and budget)."""
    if stage == "solve":
        boxed = answer_for(body["messages"])
        final = f"The result is {boxed}." if fault == "no_boxed" else f"The result is \\boxed{{{boxed}}}."
        if _thinking_requested(body) or cfg.content_bytes == 0:
            return final
        return _filler(_CONTENT_FILLER, cfg.content_bytes) + "\n" + final
    if fault == "no_difficulty":
        return "I cannot tell."
    if stage == "decomposition":
        count = {"zero_subproblems": 0, "many_subproblems": _MANY_SUBPROBLEMS}.get(fault, cfg.subproblem_count)
        seed = body.get("seed")
        variant = (seed if isinstance(seed, int) else 0) + index
        payload: dict[str, Any] = {
            "subproblems": [
                f"Sub-problem {i} (plan {variant}): determine intermediate quantity {i} needed for the final answer."
                for i in range(1, count + 1)
            ]
        }
    elif stage == "selection":
        payload = {"choice": cfg.choice}
    else:
        payload = {"difficulty": _OUT_OF_RANGE_DIFFICULTY if fault == "difficulty_out_of_range" else difficulty}
    text = json.dumps(payload)
    if fault == "malformed_json":
        text = text[: len(text) // 2]
    return text if _structured_output(body) else f"```json\n{text}\n```"


def _generate(stage: str, body: dict[str, Any], cfg: FakeOpenAIConfig, index: int, difficulty: float, fault: str | None) -> _Generation:
    """Choice ``index`` of the answer to ``body``, with content faults applied."""
    if fault == "empty":
        return _Generation(content="")
    gen = _Generation(content=_stage_answer(stage, body, cfg, index, difficulty, fault))
    if _thinking_requested(body):
        gen.reasoning = _filler(_REASONING_FILLER, cfg.reasoning_bytes)
    thinking_budget = body.get("thinking_token_budget")
    if cfg.thinking_budget == "enforce" and isinstance(thinking_budget, int) and len(gen.reasoning) > 4 * thinking_budget:
        gen.reasoning = gen.reasoning[: 4 * thinking_budget]  # the engine closes the thinking; the answer follows
    budget = _budget_chars(body)
    if budget is not None and len(gen.reasoning) > budget:
        gen.reasoning = gen.reasoning[:budget]
        gen.content, gen.thinking_closed, gen.finish_reason = "", False, "length"
    if fault == "length":
        gen.content, gen.thinking_closed, gen.finish_reason = "", False, "length"
    elif fault == "reasoning_only":
        gen.reasoning = "\n".join(t for t in (gen.reasoning, gen.content) if t)
        gen.content, gen.thinking_closed = "", False
    return gen


def _place(gen: _Generation, reasoning_field: str) -> tuple[dict[str, Any], int]:
    """The assistant message for a generation and its completion token count."""
    content, hidden = gen.content, ""
    message: dict[str, Any] = {"role": "assistant"}
    if reasoning_field == "inline":
        if gen.reasoning:
            content = f"<think>{gen.reasoning}" + (f"</think>\n\n{content}" if gen.thinking_closed else "")
    elif reasoning_field == "none":
        hidden = gen.reasoning
    else:
        message[reasoning_field] = gen.reasoning or None
    message["content"] = content
    visible_reasoning = message.get(reasoning_field) or ""
    return message, _tokens(content + visible_reasoning + hidden)


def _completion(body: dict[str, Any], stage: str, cfg: FakeOpenAIConfig, difficulty: float, fault: str | None, completion_id: str) -> dict[str, Any]:
    """The full ``chat.completion`` object for a request."""
    n = body.get("n") or 1
    choices, completion_tokens, reasoning_tokens, any_reasoning = [], 0, 0, False
    for index in range(n):
        gen = _generate(stage, body, cfg, index, difficulty, fault)
        message, tokens = _place(gen, cfg.reasoning_field)
        choices.append({"index": index, "message": message, "finish_reason": gen.finish_reason, "logprobs": None})
        completion_tokens += tokens
        reasoning_tokens += _tokens(gen.reasoning)
        any_reasoning = any_reasoning or bool(gen.reasoning)
    prompt_chars = sum(len(_text_of(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
    prompt_tokens = max(1, prompt_chars // 4)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if any_reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODELS[0],
        "choices": choices,
        "usage": usage,
    }


def _pieces(text: str) -> list[str]:
    return [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]


def _stream_events(completion: dict[str, Any], include_usage: bool) -> list[str]:
    """The SSE ``data:`` payloads that stream ``completion`` chunk by chunk."""
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return json.dumps(head | {"choices": [choice]})

    events = []
    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        events.append(chunk(index, {"role": "assistant", "content": ""}))
        for key in ("reasoning", "reasoning_content"):
            events.extend(chunk(index, {key: piece}) for piece in _pieces(message.get(key) or ""))
        events.extend(chunk(index, {"content": piece}) for piece in _pieces(message["content"]))
        events.append(chunk(index, {}, choice["finish_reason"]))
    if include_usage:
        events.append(json.dumps(head | {"choices": [], "usage": completion["usage"]}))
    events.append("[DONE]")
    return events


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Reply:
    """What to do with a request: a JSON body, an SSE event stream, or a transport fault
    (``action`` "refuse", "hang" or "drop")."""

    status: int = 200
    payload: Any = None
    events: list[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    action: str | None = None
    hang_seconds: float = 0.0
    raw: bytes | None = None  # a non-JSON body, sent as text/html


def _error(status: int, message: str, **headers: str) -> _Reply:
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return _Reply(status, {"error": {"message": message, "type": error_type, "param": None, "code": status}}, headers=headers)


class _BadRequest(Exception):
    """The bytes on the wire are not an HTTP request this server understands."""


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on a connection, or None when the client closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("connection closed inside the request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError as exc:
        raise _BadRequest(f"bad request line {lines[0]!r}") from exc
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequest("chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise _BadRequest("bad Content-Length") from exc
    body = await reader.readexactly(length) if length else b""
    return _Request(method.upper(), target.split("?", 1)[0], headers, body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: asyncio.StreamWriter, reply: _Reply, keep_alive: bool) -> bool:
    """Write ``reply``; returns whether the connection may serve another request."""
    if reply.action == "refuse":
        return False
    if reply.action == "hang":
        await asyncio.sleep(reply.hang_seconds)
        return False
    dropping = reply.action == "drop"
    headers = {"Connection": "keep-alive" if keep_alive and not dropping else "close"} | reply.headers
    if reply.events is not None:
        headers |= {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Transfer-Encoding": "chunked"}
        events = reply.events[: len(reply.events) // 2] if dropping else reply.events
        data = b"".join(_chunk(f"data: {event}\n\n".encode()) for event in events)
        writer.write(_head(reply.status, headers) + data + (b"" if dropping else b"0\r\n\r\n"))
    else:
        body = reply.raw if reply.raw is not None else json.dumps(reply.payload, default=repr).encode()
        content_type = "text/html" if reply.raw is not None else "application/json"
        headers |= {"Content-Type": content_type, "Content-Length": str(len(body))}
        writer.write(_head(reply.status, headers) + (body[: len(body) // 2] if dropping else body))
    await writer.drain()
    return keep_alive and not dropping


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --------------------------------------------------------------------------------------
# Shared mutable state
# --------------------------------------------------------------------------------------


class _State:
    """Counters, request log and pending faults, shared by the event loop and callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._completions = 0
        self._in_flight = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_stage = dict.fromkeys(STAGES, 0)
            self._faults_served = 0
            self._log: list[dict[str, Any]] = []
            self._faults: list[dict[str, Any]] = []
            self._difficulty_requests = 0
            self._max_in_flight = self._in_flight  # requests still being answered keep counting

    def enter(self) -> None:
        """A chat completion started being answered (for the ``max_in_flight`` statistic)."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def add_fault(self, fault: str, times: int, stage: str | None) -> None:
        with self._lock:
            self._faults.append({"fault": fault, "times": times, "stage": stage})

    def take_fault(self, stage: str) -> str | None:
        """Consume one use of the oldest pending fault that applies to ``stage``."""
        with self._lock:
            for entry in self._faults:
                if stage == entry["stage"] or (entry["stage"] is None and stage in FAULTS[entry["fault"]]):
                    entry["times"] -= 1
                    if entry["times"] == 0:
                        self._faults.remove(entry)
                    self._faults_served += 1
                    return entry["fault"]
        return None

    def next_difficulty_index(self) -> int:
        with self._lock:
            self._difficulty_requests += 1
            return self._difficulty_requests - 1

    def next_completion_id(self) -> str:
        with self._lock:
            self._completions += 1
            return f"chatcmpl-fake-{self._completions}"

    def record(self, stage: str, body: dict[str, Any], status: int | None, fault: str | None,
               session: str | None = None) -> None:
        with self._lock:
            self._requests += 1
            self._by_stage[stage] += 1
            self._log.append({"stage": stage, "model": body.get("model"), "body": body, "status": status, "fault": fault,
                              "session": session})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_stage": dict(self._by_stage),
                "faults_served": self._faults_served,
                "max_in_flight": self._max_in_flight,
                "pending_faults": [dict(entry) for entry in self._faults],
                "log": [dict(entry) for entry in self._log],
            }


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """A fake OpenAI-compatible chat server running on its own event loop thread.

    ``FakeOpenAIServer(host="127.0.0.1", port=0, **config)`` where ``config`` are the
    :class:`FakeOpenAIConfig` fields. Use as a context manager (start on enter, close on
    exit) or call :meth:`start` / :meth:`close`. :meth:`stop` and :meth:`start` take the
    server down and bring it back on the same port. All methods are thread-safe.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self._port = port
        self._config = FakeOpenAIConfig(**config)
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._lifecycle = threading.Lock()  # start/stop/close; never taken on the event loop
        self._config_lock = threading.Lock()
        self._routes: dict[tuple[str, str], Callable[[_Request], _Reply | Awaitable[_Reply]]] = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/_stats"): lambda _: _Reply(payload=self.stats()),
            ("POST", "/_inject"): self._control_inject,
            ("POST", "/_reset"): self._control_reset,
            ("GET", "/_config"): lambda _: _Reply(payload=self._config.to_json()),
            ("POST", "/_config"): self._control_config,
        }

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The TCP port (the free port picked at the first start when created with 0)."""
        if self._port == 0:
            raise RuntimeError("the server has not been started yet")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, the ``base_url`` for OpenAI clients."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the port; no-op when already listening."""
        with self._lifecycle:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
                self._thread.start()
            if self._server is None:
                self._run(self._listen())

    def stop(self) -> None:
        """Stop listening and drop every open connection (clients see refused connections
        until :meth:`start`). Pending faults, stats and config are kept."""
        with self._lifecycle:
            if self._server is not None:
                self._run(self._shutdown())

    def close(self) -> None:
        """Stop the server and its event loop thread. Idempotent."""
        self.stop()
        with self._lifecycle:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                assert self._thread is not None
                self._thread.join()
                self._loop.close()
                self._loop = self._thread = None

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve_connection, self.host, self._port, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # -- control --------------------------------------------------------------------

    @property
    def config(self) -> FakeOpenAIConfig:
        """The current settings."""
        return self._config

    def configure(self, **changes: Any) -> FakeOpenAIConfig:
        """Change settings (any :class:`FakeOpenAIConfig` field); affects later requests."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(FakeOpenAIConfig)}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        with self._config_lock:
            self._config = dataclasses.replace(self._config, **changes)
        return self._config

    def inject(self, fault: str, times: int = 1, stage: str | None = None) -> None:
        """Queue ``fault`` (a :data:`FAULTS` key) for the next ``times`` matching requests.

        Pending faults form a FIFO; a request consumes the oldest one that matches it: the
        same ``stage`` if one was given, else any stage the fault applies to.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        if stage is not None and stage not in FAULTS[fault]:
            raise ValueError(f"fault {fault!r} cannot apply to stage {stage!r}; it applies to {sorted(FAULTS[fault])}")
        self._state.add_fault(fault, times, stage)

    def reset(self) -> None:
        """Clear counters, the request log, pending faults and the difficulty cycle."""
        self._state.reset()

    def stats(self) -> dict[str, Any]:
        """``{"requests", "by_stage", "faults_served", "max_in_flight", "pending_faults", "log"}``
        (``max_in_flight``: most chat completions being answered at once since the last reset); each log
        entry is ``{"stage", "model", "body", "status", "fault"}`` (status None when the
        connection was closed without a response). Counts chat completions only."""
        return self._state.snapshot()

    # -- HTTP handling --------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                try:
                    reply = await self._dispatch(request)
                except Exception as exc:  # a bug in this module: make it visible to the client
                    logger.exception("fake OpenAI server failed on %s %s", request.method, request.path)
                    reply = _error(500, f"fake server error: {exc!r}")
                keep_alive = request.headers.get("connection", "").lower() != "close"
                if not await _send(writer, reply, keep_alive):
                    break
        except _BadRequest as exc:
            message = str(exc).encode()
            writer.write(_head(400, {"Connection": "close", "Content-Length": str(len(message))}) + message)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels open connections; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error (Python 3.11).
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _dispatch(self, request: _Request) -> _Reply:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            known_path = any(path == request.path for _, path in self._routes)
            return _error(405, "method not allowed") if known_path else _error(404, f"no route {request.path}")
        reply = handler(request)
        return await reply if inspect.isawaitable(reply) else reply

    def _unauthorized(self, request: _Request) -> _Reply | None:
        key = self._config.api_key
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return _error(401, "Incorrect API key provided")
        return None

    def _models(self, request: _Request) -> _Reply:
        rejection = self._unauthorized(request)
        if rejection:
            return rejection
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "scale-graph"} for m in MODELS]
        if self._config.model_root is not None:
            data = [{**entry, "root": self._config.model_root, "max_model_len": MAX_MODEL_LEN} for entry in data]
        return _Reply(payload={"object": "list", "data": data})

    def _unsupported(self, body: dict[str, Any], cfg: FakeOpenAIConfig) -> _Reply | None:
        n = body.get("n", 1)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            return _error(400, f"n must be a positive integer, got {n!r}")
        response_format = body.get("response_format")
        if not cfg.supports_json_schema and isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            return _error(400, "response_format not supported")
        if not cfg.supports_n and (n or 1) > 1:
            return _error(400, "n > 1 not supported")
        if not cfg.supports_thinking_flag and "chat_template_kwargs" in body:
            return _error(400, "Unrecognized request argument supplied: chat_template_kwargs")
        if cfg.thinking_budget == "refuse" and "thinking_token_budget" in body:
            # vLLM's words (v1/engine/input_processor.py) when no reasoning parser is configured
            return _error(400, "thinking_token_budget is set but reasoning_config is not configured. Please set "
                               "--reasoning-parser and/or --reasoning-config to use thinking_token_budget.")
        if not cfg.supports_continuation and body.get("continue_final_message"):
            return _error(400, "Unrecognized request argument supplied: continue_final_message")
        return None

    async def _chat_completions(self, request: _Request) -> _Reply:
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list")
        cfg = self._config
        stage = detect_stage(body)
        fault = None
        reply = self._unauthorized(request) or self._unsupported(body, cfg)
        if reply is None:
            fault = self._state.take_fault(stage)
            self._state.enter()
            try:
                reply = await self._answer(body, stage, cfg, fault, request.headers)
            finally:
                self._state.leave()
        status = None if reply.action in ("refuse", "hang") else reply.status
        self._state.record(stage, body, status, fault, request.headers.get("x-session-id"))
        return reply

    async def _answer(self, body: dict[str, Any], stage: str, cfg: FakeOpenAIConfig, fault: str | None,
                      headers: dict[str, str]) -> _Reply:
        """The reply to a valid chat request, after the configured latency."""
        if fault == "refuse":
            return _Reply(action="refuse")
        if fault == "timeout":
            return _Reply(action="hang", hang_seconds=cfg.hang_seconds)
        await asyncio.sleep(cfg.latency)
        if fault in _HTTP_FAULTS:
            extra = {"Retry-After": "0"} if fault == "429" else {}
            return _error(_HTTP_FAULTS[fault], f"injected fault {fault}", **extra)
        if fault == "context_length":
            prompt = CONTEXT_LIMIT + 1000
            output = body.get("max_tokens") or body.get("max_completion_tokens") or 16
            return _error(400, CONTEXT_LENGTH_MESSAGE.format(limit=CONTEXT_LIMIT, requested=prompt + output,
                                                             prompt=prompt, output=output))
        if fault == "echo_auth_500":
            return _error(500, f"upstream failed; request headers were: Authorization: {headers.get('authorization', '')}")
        if fault == "not_json":
            return _Reply(raw=_NOT_JSON_BODY)
        difficulty = 0.0
        if stage == "difficulty":
            if callable(cfg.difficulties):
                difficulty = float(cfg.difficulties(body))
            else:
                difficulty = cfg.difficulties[self._state.next_difficulty_index() % len(cfg.difficulties)]
        completion = _completion(body, stage, cfg, difficulty, fault, self._state.next_completion_id())
        if fault == "no_choices":
            completion["choices"] = []
        elif fault == "no_message":
            for choice in completion["choices"]:
                del choice["message"]
        action = "drop" if fault == "drop" else None
        if body.get("stream"):
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            return _Reply(events=_stream_events(completion, include_usage), action=action)
        return _Reply(payload=completion, action=action)

    # -- control endpoints ------------------------------------------------------------

    @staticmethod
    def _json_object(request: _Request) -> dict[str, Any]:
        data = json.loads(request.body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def _control_inject(self, request: _Request) -> _Reply:
        try:
            data = self._json_object(request)
            self.inject(data["fault"], times=data.get("times", 1), stage=data.get("stage"))
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad /_inject request: {exc}")
        return _Reply(payload={"pending_faults": self.stats()["pending_faults"]})

    def _control_reset(self, request: _Request) -> _Reply:
        self.reset()
        return _Reply(payload={"ok": True})

    def _control_config(self, request: _Request) -> _Reply:
        try:
            config = self.configure(**self._json_object(request))
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad /_config request: {exc}")
        return _Reply(payload=config.to_json())


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = FakeOpenAIConfig()
    p = argparse.ArgumentParser(
        prog="python -m tests.fake_openai",
        description="Fake OpenAI-compatible chat server for SCALE tests; prints 'READY <base_url>' when listening.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", type=Path, help="also write the chosen port to this file once listening")
    p.add_argument("--latency", type=float, default=defaults.latency)
    p.add_argument("--reasoning-bytes", type=int, default=defaults.reasoning_bytes)
    p.add_argument("--content-bytes", type=int, default=defaults.content_bytes)
    p.add_argument("--reasoning-field", choices=REASONING_FIELDS, default=defaults.reasoning_field)
    p.add_argument("--subproblem-count", type=int, default=defaults.subproblem_count)
    p.add_argument(
        "--difficulties",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(defaults.difficulties),
        help="comma-separated difficulty answers cycled per request",
    )
    p.add_argument("--choice", type=int, default=defaults.choice)
    for name in ("supports-json-schema", "supports-n", "supports-thinking-flag", "supports-continuation"):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--thinking-budget", choices=THINKING_BUDGETS, default=defaults.thinking_budget)
    p.add_argument("--api-key", default=defaults.api_key)
    p.add_argument("--hang-seconds", type=float, default=defaults.hang_seconds)
    p.add_argument("--model-root", default=defaults.model_root)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM."""
    args = vars(_parser().parse_args(argv))
    host, port, port_file = args.pop("host"), args.pop("port"), args.pop("port_file")
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with FakeOpenAIServer(host=host, port=port, **args) as server:
        if port_file is not None:
            port_file.write_text(f"{server.port}\n")
        print(f"READY {server.base_url}", flush=True)
        done.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
