"""What `scale serve` accepts: the request body read within its limits, and every check of a chat
request in one function (:func:`check_request`), each refusal an OpenAI-style error (:class:`APIError`).

The body is read as it arrives (chunked bodies included) and refused with a 413 as soon as it
passes :data:`MAX_BODY_BYTES`, so a client cannot make the server hold more than that; a body
that trickles in slower than :data:`BODY_TIMEOUT_S` is a 408. Anything that is not a JSON object
(deeply nested JSON included) is a 400.
"""

from __future__ import annotations

import asyncio
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from scale_graph import efforts
from scale_graph.context import ENDPOINT_FIELDS, MAXIMA, Context
from scale_graph.runner import InputError, validate_problem
from scale_graph.settings import ConfigError

MODEL = "scale"
THREAD_HEADER = "X-Scale-Thread-Id"
MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_TIMEOUT_S = 30.0  # the whole body, once the headers are in (a trickled body holds a connection)
#: Run parameters a client may not set: where the inner endpoints are (their API keys are the
#: server's) and the human review pause (nobody answers it over this API).
FORBIDDEN_PARAMS = frozenset(ENDPOINT_FIELDS) | {"review"}

PARAMS = {name: info.annotation for name, info in Context.model_fields.items() if name not in FORBIDDEN_PARAMS}


class APIError(Exception):
    """An error answer: HTTP status and OpenAI-style error object. ``close`` ends the connection
    after the answer (the rest of a refused body is never read)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, thread_id: str | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.thread_id = (
            status, message, type_, code, param, thread_id)
        self.close = close

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.thread_id:
            error["thread_id"] = self.thread_id
        return {"error": error}

    def response(self) -> JSONResponse:
        headers: dict[str, str] = {THREAD_HEADER: self.thread_id} if self.thread_id else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.close:
            headers["Connection"] = "close"
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


@dataclass(frozen=True)
class ChatRequest:
    """A chat request that passed every check: what the run needs and how to answer."""

    problem: str
    context: Context
    stream: bool
    include_usage: bool


# ---- the body ----------------------------------------------------------------------------
def too_large() -> APIError:
    return APIError(413, f"request body larger than {MAX_BODY_BYTES:,} bytes", code="body_too_large", close=True)


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON object of the body, read chunk by chunk and refused at the first byte past the limit."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_large()
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body took longer than {BODY_TIMEOUT_S:g} s to arrive",
                       code="body_timeout", close=True) from None
    except ClientDisconnect:  # nobody reads this answer; it only ends the handler
        raise APIError(400, "the client closed the connection before the body was complete", close=True) from None
    return parse_body(b"".join(chunks))


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    except RecursionError:
        raise bad_request("the request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


# ---- the request -------------------------------------------------------------------------
def check_request(body: dict[str, Any], base: Context) -> ChatRequest:
    """Every check of a chat request, in the order a client would fix them; ``base`` holds the
    server's run parameters (and so the most work a request may ask for)."""
    try:
        model = body.get("model", MODEL)
        if not isinstance(model, str):
            raise bad_request("'model' must be a string", "model")
        if model != MODEL:
            raise APIError(404, f"model {model[:80]!r} does not exist; this server serves {MODEL!r}",
                           code="model_not_found", param="model")
        if body.get("n", 1) not in (1, None):
            raise bad_request("'n' must be 1: each request is one SCALE run", "n")
        stream, include_usage = _stream_options(body)
        problem = problem_of(body.get("messages"))
        context = context_of(efforts.scale_params(body, base.budget, bad_request), base)
        try:
            problem = validate_problem(problem, context)
        except InputError as exc:
            raise bad_request(str(exc), "messages") from None
    except RecursionError:  # a value nested deeper than any check walks
        raise bad_request("the request body is nested too deeply") from None
    return ChatRequest(problem, context, stream, include_usage)


def _shown(value: Any) -> str:
    """A client's value in an error message: short, and never walked deeply."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _text_of(content: Any, where: str) -> str:
    """A message content as text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{where}: each content part must be an object with a 'type'", "messages")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}: a text part needs a string 'text'", "messages")
                texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where}: content must be a string or a list of content parts", "messages")


def problem_of(messages: Any) -> str:
    """The last user message's text."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    problem = None
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{number}] must be an object with a string 'role'", "messages")
        text = _text_of(message.get("content"), f"messages[{number}]")
        if message["role"] == "user":
            problem = text
    if problem is None:
        raise bad_request("no user message: the last user message is the problem to solve", "messages")
    if not problem.strip():
        raise bad_request("the problem (last user message) is empty", "messages")
    return problem


def _check_type(name: str, value: Any) -> None:
    hint = PARAMS[name]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        ok = value in choices and type(value) is type(choices[0])
        expected = " or ".join(json.dumps(c) for c in choices)
    elif hint is bool:
        ok, expected = isinstance(value, bool), "a boolean"
    elif hint is int:
        ok = (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) and not isinstance(value, bool)
        expected = "an integer"
    elif hint is float:
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise bad_request(f"scale.{name} must be {expected}, got {_shown(value)}", f"scale.{name}")


def context_of(params: Any, base: Context) -> Context:
    """The run parameters: the server's own (resolved once at start), overridden by the request's
    ``scale`` object; the endpoints are always the server's, and a request may not ask for more
    work than the server is set to do (``base`` holds the limits)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise bad_request("'scale' must be an object of run parameters", "scale")
    check_params(params)
    _check_limits(params, base)
    chosen = {k: v for k, v in params.items() if k not in ENDPOINT_FIELDS}
    try:
        return Context.from_dict(base.to_dict(), **chosen)
    except ConfigError as exc:
        raise bad_request(f"invalid run parameters: {exc}", "scale") from None


def check_params(params: dict[str, Any], *, server: bool = False) -> None:
    """Known run parameters of the right type; ``server`` allows the endpoints (the server's own defaults)."""
    for name, value in params.items():
        if server and name in ENDPOINT_FIELDS:
            if not isinstance(value, str):
                raise bad_request(f"{name} must be a string", name)
            continue
        if name in FORBIDDEN_PARAMS:
            reason = ("the endpoints are configured on the server" if name in ENDPOINT_FIELDS
                      else "nobody can review a decomposition over this API")
            raise bad_request(f"scale.{name} cannot be set per request: {reason}", f"scale.{name}")
        if name not in PARAMS:
            raise bad_request(f"unknown run parameter scale.{name[:80]}; known: {', '.join(sorted(PARAMS))}",
                              f"scale.{name}")
        _check_type(name, value)


def _check_limits(params: dict[str, Any], limits: Context) -> None:
    """Refuse a parameter that multiplies work above the server's own value (a client must not
    make one request fan out further than the operator allows)."""
    for name in MAXIMA:
        if name not in params:
            continue
        most = getattr(limits, name)
        if name == "context_window" and most == 0:  # the server asks its endpoints: nothing to exceed
            continue
        if params[name] > most:
            raise bad_request(f"scale.{name} may be at most {most:,} on this server (its own setting), "
                              f"got {params[name]:,}", f"scale.{name}")


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if include_usage is not None and not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options")
    return bool(stream), bool(include_usage)
