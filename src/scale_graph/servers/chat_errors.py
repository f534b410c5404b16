"""What an endpoint's failure means, in one redacted line: the errors of the chat layer.

A server's HTTP 400 is read for *what* it refuses: a prompt longer than the model's context
(:class:`ContextLengthError`, never a reason to drop a request feature), the thinking switch, an
optional feature (JSON schema, ``n``) it says it does not support, or anything else. Only the
feature a server names is ever dropped, so a context-length 400 can no longer switch System 1
into the model's default (thinking) mode for the rest of a process.

Every message passes through :func:`scale_graph.redact.redact` when the error is built, so keys
an upstream server echoes (``Authorization: Bearer …``) reach no database, log or client.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Literal

import openai

from scale_graph.redact import redact
from scale_graph.servers.endpoints import Endpoint

# Optional request features a server may refuse with HTTP 400, dropped in this order.
Feature = Literal["schema", "n", "thinking_flag", "thinking_budget", "continuation"]
Refusal = Literal["context_length", "schema", "n", "thinking_flag", "thinking_budget", "continuation"]

PREFIX_DEGRADED = "degraded: "
"""Stable prefix of every warning saying a request went without something it asked for
(the evaluation reports count warnings by it)."""


class EndpointError(RuntimeError):
    """An endpoint failed after bounded retries, or refused a request; one line for the user.

    ``reason`` is the message without the endpoint's location (what ``scale serve`` may show its
    clients); ``system`` the failing system, when known. Both are redacted like the message.
    """

    def __init__(self, message: str, *, endpoint: Endpoint | None = None, reason: str | None = None) -> None:
        secrets = (endpoint.api_key,) if endpoint is not None and endpoint.api_key else ()
        super().__init__(redact(message, secrets))
        self.endpoint = endpoint
        self.system: int | None = endpoint.system if endpoint is not None else None
        self.reason = redact(reason if reason is not None else message, secrets)


class ContextLengthError(EndpointError):
    """The server said the request does not fit the model's context (HTTP 400); nothing degraded.

    ``limit`` is the model's context in tokens and ``requested`` what the request needed, each
    when the server's message says it.
    """

    def __init__(self, message: str, *, limit: int | None, requested: int | None,
                 endpoint: Endpoint | None = None, reason: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint, reason=reason)
        self.limit = limit
        self.requested = requested


class MalformedResponse(ValueError):
    """A 200 reply that is not a chat completion (no choices, a choice without a message, not JSON)."""


def where(endpoint: Endpoint) -> str:
    return f"System {endpoint.system} endpoint {endpoint.base_url} (model {endpoint.model})"


# ---- reading a 400 -------------------------------------------------------------------------
# vLLM (renderers/params.py, v1/engine/input_processor.py, entrypoints/serve/utils/api_utils.py) and
# OpenAI word a too-long request in these ways; the numbers are parsed when present.
_CONTEXT = re.compile(r"maximum context length|maximum model length|context_length_exceeded|context window"
                      r"|exceeds? (?:the )?max_model_len", re.IGNORECASE)
_LIMIT = re.compile(r"maximum context length (?:is )?\(?(\d+)|maximum model length of (\d+)"
                    r"|max_model_len (?:of |is )?\(?(\d+)", re.IGNORECASE)
_REQUESTED = re.compile(r"you requested (\d+) tokens|resulted in (\d+) tokens|contains (?:at least )?(\d+) input tokens"
                        r"|prompt \(length (\d+)\)|input length \((\d+)\)|request has (\d+) input tokens", re.IGNORECASE)
# Words a server uses when it refuses one feature. Checked in this order: the thinking switch is
# never dropped silently, so it is recognised before anything else.
_FEATURE_WORDS: tuple[tuple[Feature, re.Pattern[str]], ...] = (
    ("thinking_flag", re.compile(r"chat_template_kwargs|enable_thinking", re.IGNORECASE)),
    ("thinking_budget", re.compile(r"thinking_token_budget|reasoning_config", re.IGNORECASE)),
    ("continuation", re.compile(r"continue_final_message|add_generation_prompt", re.IGNORECASE)),
    ("schema", re.compile(r"response_format|json[ _]schema|guided|structured|grammar", re.IGNORECASE)),
    ("n", re.compile(r"\bn must be\b|\bn\s*>\s*1\b|`n`|'n'|\"n\"|multiple choices|\bparameter=n\b", re.IGNORECASE)),
)
_FEATURE_PARAMS: dict[str, Feature] = {"chat_template_kwargs": "thinking_flag", "response_format": "schema",
                                       "guided_json": "schema", "structured_outputs": "schema", "n": "n",
                                       "thinking_token_budget": "thinking_budget",
                                       "continue_final_message": "continuation"}


def error_message(exc: BaseException, limit: int = 300) -> str:
    """The server's error text of ``exc`` on one line (its JSON ``message`` when there is one)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if message:
            return " ".join(str(message).split())[:limit]
    cause = exc.__cause__ or exc
    return " ".join(str(cause).split())[:limit] or type(exc).__name__


def refusal(exc: openai.BadRequestError) -> Refusal | None:
    """What a 400 refuses: the context length, one named feature, or None (something else)."""
    text = error_message(exc, limit=10_000)
    if _CONTEXT.search(text):
        return "context_length"
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    param = error.get("param") if isinstance(error, dict) else None
    if isinstance(param, str) and param in _FEATURE_PARAMS:
        return _FEATURE_PARAMS[param]
    for feature, words in _FEATURE_WORDS:
        if words.search(text):
            return feature
    return None


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group is not None))


def context_length_error(endpoint: Endpoint, exc: openai.BadRequestError) -> ContextLengthError:
    text = error_message(exc, limit=10_000)
    reason = f"the request does not fit the model's context (HTTP 400): {error_message(exc)}"
    return ContextLengthError(f"{where(endpoint)}: {reason}", endpoint=endpoint, reason=reason,
                              limit=_first_number(_LIMIT, text), requested=_first_number(_REQUESTED, text))


def thinking_switch_error(endpoint: Endpoint, exc: openai.BadRequestError) -> EndpointError:
    reason = (f"rejected the thinking switch chat_template_kwargs.enable_thinking (HTTP 400: {error_message(exc)}); "
              f"without it System 1 and planning calls would think whenever the model thinks by default. "
              f"Only for a server that does not think by default: set thinking_flag off "
              f"(SCALE_THINKING_FLAG=0, or thinking_flag = false in scale.toml) and runs record that the "
              f"switch was not sent")
    return EndpointError(f"{where(endpoint)} {reason}", endpoint=endpoint, reason=reason)


def rejected_error(endpoint: Endpoint, exc: openai.BadRequestError) -> EndpointError:
    reason = f"rejected the request (HTTP 400): {error_message(exc)}"
    return EndpointError(f"{where(endpoint)} {reason}", endpoint=endpoint, reason=reason)


# ---- transport failures ----------------------------------------------------------------------
class translated_errors:
    """Turn the OpenAI client's final transport/server errors into one-line EndpointErrors
    (HTTP 400 and malformed replies pass through: the caller decides what they mean)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, (openai.BadRequestError, MalformedResponse)):
            return False
        reason = _reason(self.endpoint, exc)
        if reason is None:
            if isinstance(exc, (ValueError, KeyError, TypeError)) and "langchain" not in type(exc).__module__:
                raise MalformedResponse(" ".join(str(exc).split())[:300] or type(exc).__name__) from exc
            return False
        raise EndpointError(f"{where(self.endpoint)} {reason}", endpoint=self.endpoint, reason=reason) from None


def _reason(endpoint: Endpoint, exc: BaseException) -> str | None:
    retries = f"after {endpoint.max_retries} retries"
    if isinstance(exc, openai.APIConnectionError) and (failure := _connection_failure(exc)):
        return f"is unreachable {retries}: {failure}"
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out {retries} (timeout {endpoint.timeout:g} s)"
    if isinstance(exc, openai.APIConnectionError):
        return f"is unreachable {retries}: {error_message(exc)}"
    if isinstance(exc, openai.AuthenticationError):
        return "refused the API key (HTTP 401)"
    if isinstance(exc, openai.NotFoundError):
        return "answered 404: check the base URL and model name"
    if isinstance(exc, openai.APIStatusError):
        if not _retried(exc):
            return f"failed (HTTP {exc.status_code}, a status that is not retried): {error_message(exc)}"
        return f"failed {retries}: HTTP {exc.status_code} {error_message(exc)}"
    return None


def _retried(exc: openai.APIStatusError) -> bool:
    """Whether the OpenAI client retried this answer, by its rule: the server's ``x-should-retry``
    when given, else 408, 409, 429 and 5xx."""
    header = exc.response.headers.get("x-should-retry")
    if header in ("true", "false"):
        return header == "true"
    return exc.status_code in (408, 409, 429) or exc.status_code >= 500


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
