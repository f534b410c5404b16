"""``scale serve``: SCALE behind an OpenAI-compatible chat endpoint.

Any OpenAI client can call SCALE as a model named ``scale``::

    client = openai.OpenAI(base_url="http://127.0.0.1:8200/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="scale", messages=[{"role": "user", "content": "What is 1+1?"}],
        extra_body={"scale": {"threshold": 0.3, "candidates": 4}})
    reply.choices[0].message.content          # short plan, ends with \\boxed{answer}
    reply.choices[0].message.reasoning_content  # the whole SCALE trace
    reply.scale                                 # the run summary (same JSON as `scale solve --json`)

The last user message is the problem; run parameters come from the body's ``scale`` object
(any :class:`~scale_graph.Context` field except the endpoints, which stay the server's, and
``review``); a parameter that multiplies work (``context.MAXIMA``: candidates, token budgets,
``max_problem_chars`` ...) may not exceed the server's own value. Every request is a new checkpointed run in the server's database, under the id
returned in the ``X-Scale-Thread-Id`` header and ``scale.thread_id``: ``scale runs show ID``
inspects it, ``scale runs resume ID`` finishes one that stopped on an endpoint failure (502).
All requests share one SQLite saver and store and run concurrently on one event loop, so the
inference servers see them as one batch. A run continues when its client goes away.

The request's own sampling fields (``temperature``, ``max_tokens``, ...) are ignored: SCALE has
a budget and temperature per stage, set through ``scale``. ``n`` must be 1. Two OpenAI fields are
honoured (:mod:`scale_graph.efforts`): ``max_completion_tokens``, the per-problem budget of all
inner calls together, and ``reasoning_effort`` (``none``/``low``/``medium``/``high``: presets of
τ and budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import time
import typing
from dataclasses import fields
from typing import Any, AsyncIterator, Literal


try:  # the `serve` extra; without it the CLI still loads and `scale serve` says what to install
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # pragma: no cover - depends on the installation
    Starlette = None  # type: ignore[assignment,misc]

from scale_graph import efforts
from scale_graph.context import ENDPOINT_FIELDS, MAXIMA, Context
from scale_graph.graph import build_graph
from scale_graph.history import solution_texts
from scale_graph.journal import calls_namespace, new_run_id
from scale_graph.progress import difficulty_text, progress_line, short
from scale_graph.persistence import open_async
from scale_graph.redact import redact
from scale_graph.runner import InputError, start, validate_problem
from scale_graph.runs import summary
from scale_graph.servers.chat import ChatReply, EndpointError
from scale_graph.servers.endpoints import with_context_window
from scale_graph.settings import ConfigError, resolve

logger = logging.getLogger(__name__)

MODEL = "scale"
THREAD_HEADER = "X-Scale-Thread-Id"
MAX_BODY_BYTES = 4 * 1024 * 1024
KEEPALIVE_S = 15.0  # an SSE comment while a long System 2 call runs, so proxies keep the stream
#: Run parameters a client may not set: where the inner endpoints are (their API keys are the
#: server's) and the human review pause (nobody answers it over this API).
FORBIDDEN_PARAMS = frozenset(ENDPOINT_FIELDS) | {"review"}

_HINTS = typing.get_type_hints(Context)
PARAMS = {f.name: _HINTS[f.name] for f in fields(Context) if f.name not in FORBIDDEN_PARAMS}


class APIError(Exception):
    """An error answer: HTTP status and OpenAI-style error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, thread_id: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.thread_id = (
            status, message, type_, code, param, thread_id)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.thread_id:
            error["thread_id"] = self.thread_id
        return {"error": error}

    def response(self) -> JSONResponse:
        headers = {THREAD_HEADER: self.thread_id} if self.thread_id else None
        if self.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# ---- request parsing ---------------------------------------------------------------------
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
        raise bad_request(f"scale.{name} must be {expected}, got {json.dumps(value)}", f"scale.{name}")


def context_of(params: Any, base: Context) -> Context:
    """The run parameters: the server's own (resolved once at start), overridden by the request's
    ``scale`` object; the endpoints are always the server's, and a request may not ask for more
    work than the server is set to do (``base`` holds the limits)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise bad_request("'scale' must be an object of run parameters", "scale")
    _check_params(params)
    _check_limits(params, base)
    chosen = {k: v for k, v in params.items() if k not in ENDPOINT_FIELDS}
    try:
        return Context.from_dict(base.to_dict(), **chosen)
    except ConfigError as exc:
        raise bad_request(f"invalid run parameters: {exc}", "scale") from None


def _check_params(params: dict[str, Any], *, server: bool = False) -> None:
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
            raise bad_request(f"unknown run parameter scale.{name}; known: {', '.join(sorted(PARAMS))}", f"scale.{name}")
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


async def read_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise APIError(413, f"request body larger than {MAX_BODY_BYTES:,} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"request body larger than {MAX_BODY_BYTES:,} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


# ---- rendering ---------------------------------------------------------------------------
def render_content(shown: dict[str, Any]) -> str:
    """The visible answer: the sub-problems in a few lines, then the answer in ``\\boxed{}``."""
    rows = shown["subproblems"]
    lines = [f"SCALE solved this in {len(rows)} sub-problem{'s' if len(rows) != 1 else ''}:"]
    for row in rows:
        system = f"System {row['system']}" if row.get("system") else "unsolved"
        lines.append(f"{row['index'] + 1}. {short(row['text'])} (difficulty {difficulty_text(row['difficulty'])}, "
                     f"{system}) → {row['result'] if row['result'] is not None else 'no result'}")
    answer = shown.get("answer")
    lines.append("")
    lines.append(f"The answer is \\boxed{{{answer}}}" if answer is not None else "No final answer could be extracted.")
    return "\n".join(lines)


def render_trace(shown: dict[str, Any], texts: list[tuple[str, str]]) -> str:
    """The whole SCALE trace as text: the plan, then every sub-problem with its difficulty, system,
    thinking and solution (``texts``: (solution, reasoning) per sub-problem)."""
    out = [f"Problem:\n{shown['problem']}", ""]
    selection = shown.get("selection") or {}
    candidates = shown.get("candidates") or []
    if selection:
        out.append(f"Decomposition (Eq. 1–2): {len(candidates)} candidate(s); chose candidate "
                   f"{selection.get('chosen', 0) + 1} ({selection.get('method', '?')}).")
    for number, text in enumerate(shown.get("planned_subproblems") or [], 1):
        out.append(f"  {number}. {text}")
    total = len(shown["subproblems"])
    for row, (solution, reasoning) in zip(shown["subproblems"], texts):
        out += ["", f"## Sub-problem {row['index'] + 1}/{total}: difficulty {difficulty_text(row['difficulty'])} "
                    f"→ System {row['system']} ({row['completion_tokens']} completion tokens"
                    + (f", {row['reasoning_tokens']} reasoning" if row.get("reasoning_tokens") else "")
                    + (", answer forced after the thinking budget ran out" if row.get("forced_answer") else "") + ")",
                row["text"] or ""]
        if reasoning:
            out += ["", "Thinking:", reasoning]
        out += ["", "Solution:", solution or "(empty)", f"Result: {row['result']}"]
        out += [f"Warning: {w}" for w in row.get("warnings", [])]
    usage = shown["usage"]["total"]
    out += ["", f"Answer: {shown.get('answer')}",
            f"Usage: {usage.get('calls', 0)} calls, {usage.get('prompt_tokens', 0)} prompt + "
            f"{usage.get('completion_tokens', 0)} completion tokens ({usage.get('reasoning_tokens', 0)} reasoning)"]
    out += [f"Warning: {w}" for w in shown.get("warnings", [])]
    return "\n".join(out)


def openai_usage(shown: dict[str, Any]) -> dict[str, Any]:
    total = shown["usage"]["total"]
    prompt, completion = total.get("prompt_tokens", 0), total.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": total.get("reasoning_tokens", 0)}}


# ---- the app -------------------------------------------------------------------------------
class Service:
    """The shared graph, store and in-flight runs of one app."""

    def __init__(self, graph: Any, store: Any) -> None:
        self.graph, self.store = graph, store
        self.tasks: set[asyncio.Task] = set()

    def launch(self, problem: str, context: Context, thread_id: str, queue: asyncio.Queue | None) -> asyncio.Task:
        """Start a run as its own task: it finishes (and is checkpointed) even if its client leaves."""
        on_event = queue.put_nowait if queue is not None else None
        task = asyncio.create_task(start(self.graph, self.store, problem, context, thread_id, on_event),
                                   name=f"scale-run-{thread_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if queue is not None:
            task.add_done_callback(lambda _: queue.put_nowait(None))
        return task

    async def finished(self, values: dict[str, Any], thread_id: str, *, trace: bool = True) -> tuple[dict[str, Any], str]:
        """The run summary (``runs.summary``) and the whole trace, with full texts from the journal."""
        shown = summary(values, thread_id)
        if not trace:
            return shown, ""
        namespace = calls_namespace(thread_id)
        texts = []
        for step in values.get("steps", []):
            replies = [ChatReply.from_dict(item.value) for key in step.get("call_keys", [])
                       if (item := await self.store.aget(namespace, key)) is not None]
            texts.append(solution_texts(replies))
        return shown, render_trace(shown, texts)


_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\",)]+", re.IGNORECASE)


def upstream_reason(exc: EndpointError) -> str:
    """What a client may read of an endpoint failure: the redacted reason, without where the
    server's upstream endpoints are (URLs, host:port) or their keys."""
    hidden = ()
    if exc.endpoint is not None:
        base = exc.endpoint.base_url
        host = base.split("://", 1)[-1].split("/", 1)[0]
        hidden = (base, host) if host else (base,)
    reason = redact(exc.reason, hidden)
    return _URL.sub("[upstream]", reason)


def run_failure(exc: BaseException, thread_id: str) -> APIError:
    """The error answer of a run that stopped; it stays resumable. No text of it names an
    upstream URL or carries a key."""
    hint = f"; the run is saved: resume with `scale runs resume {thread_id}`"
    if isinstance(exc, EndpointError):
        system = f"System {exc.system} endpoint" if exc.system is not None else "endpoint"
        return APIError(502, f"upstream {system} failed: {upstream_reason(exc)}{hint}", "upstream_error",
                        "endpoint_error", thread_id=thread_id)
    if isinstance(exc, InputError):
        return APIError(400, redact(str(exc)), thread_id=thread_id)
    if isinstance(exc, asyncio.CancelledError):
        return APIError(503, f"the server is shutting down{hint}", "server_error", thread_id=thread_id)
    logger.error("run %s failed: %s", thread_id, redact(f"{type(exc).__name__}: {exc}"))
    message = _URL.sub("[upstream]", redact(" ".join(str(exc).split()))) or type(exc).__name__
    return APIError(500, f"unexpected {type(exc).__name__}: {message}{hint}", "server_error", thread_id=thread_id)


def create_app(db_path: str | os.PathLike | None = None, api_key: str | None = None,
               default_params: dict[str, Any] | None = None) -> Starlette:
    """The OpenAI-compatible SCALE app: ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /health``.

    Runs go to ``db_path`` (default ``$SCALE_DB`` or ``./scale.db``), opened once for the app's
    lifetime. ``default_params`` are run parameters for every request (the request's ``scale``
    object overrides them). With ``api_key`` every ``/v1`` request needs ``Authorization: Bearer``.
    """
    if Starlette is None:
        raise ConfigError("`scale serve` needs starlette and uvicorn: pip install 'scale-graph[serve]'")
    defaults = dict(default_params or {})
    _check_params(defaults, server=True)  # bad server defaults fail here (APIError), not on the first request
    try:
        base = with_context_window(resolve(defaults).context)
    except ConfigError as exc:
        raise bad_request(f"invalid run parameters: {exc}", "scale") from None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_async(db_path) as (saver, store):
            app.state.service = service = Service(build_graph(saver, store), store)
            try:
                yield
            finally:  # runs still in flight stop at their last checkpoint (resumable)
                for task in list(service.tasks):
                    task.cancel()
                await asyncio.gather(*service.tasks, return_exceptions=True)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except APIError as exc:
            return exc.response()
        return JSONResponse({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "scale-graph"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "runs_in_flight": len(request.app.state.service.tasks)})

    async def chat_completions(request: Request) -> Response:
        try:
            authorize(request)
            body = await read_body(request)
            model = body.get("model", MODEL)
            if not isinstance(model, str):
                raise bad_request("'model' must be a string", "model")
            if model != MODEL:
                raise APIError(404, f"model {model!r} does not exist; this server serves {MODEL!r}",
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
        except APIError as exc:
            return exc.response()

        service: Service = request.app.state.service
        thread_id = new_run_id()
        if stream:
            queue: asyncio.Queue = asyncio.Queue()
            task = service.launch(problem, context, thread_id, queue)
            return StreamingResponse(_stream(service, task, queue, thread_id, include_usage),
                                     media_type="text/event-stream",
                                     headers={THREAD_HEADER: thread_id, "Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        task = service.launch(problem, context, thread_id, None)
        try:
            values = await asyncio.shield(task)  # a cancelled request leaves the run going
        except asyncio.CancelledError as exc:
            if not task.done():
                raise
            return run_failure(exc, thread_id).response()  # the run itself was cancelled (shutdown)
        except Exception as exc:  # every failure becomes one JSON error line
            return run_failure(exc, thread_id).response()
        try:
            shown, trace = await service.finished(values, thread_id)
        except Exception as exc:
            return run_failure(exc, thread_id).response()
        return JSONResponse(completion(shown, trace, thread_id), headers={THREAD_HEADER: thread_id})

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/health", health, methods=["GET"])]

    async def not_found(request: Request, exc: Exception) -> Response:
        return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return APIError(405, f"method {request.method} not allowed on {request.url.path}").response()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed})


def _envelope(thread_id: str, created: int, **fields_: Any) -> dict[str, Any]:
    return {"id": f"chatcmpl-{thread_id}", "created": created, "model": MODEL, "system_fingerprint": None, **fields_}


def completion(shown: dict[str, Any], trace: str, thread_id: str) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished run."""
    message = {"role": "assistant", "content": render_content(shown), "reasoning_content": trace}
    return _envelope(thread_id, int(time.time()), object="chat.completion",
                     choices=[{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                     usage=openai_usage(shown), scale=shown)


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(service: Service, task: asyncio.Task, queue: asyncio.Queue, thread_id: str,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """SSE: progress as ``reasoning_content`` deltas, then the content, then usage and ``[DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _sse(_envelope(thread_id, created, object="chat.completion.chunk", choices=[choice],
                              **({"usage": None} if include_usage else {}), **extra))

    yield chunk({"role": "assistant", "content": "", "reasoning_content": f"SCALE run {thread_id}\n"})
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
        except asyncio.TimeoutError:
            yield b": keepalive\n\n"
            continue
        if event is None:  # the run's task finished
            break
        line = progress_line(event)
        if line:
            yield chunk({"reasoning_content": line})
    try:
        shown, _ = await service.finished(task.result(), thread_id, trace=False)
    except (Exception, asyncio.CancelledError) as exc:  # the run failed or was cancelled: an error event
        yield _sse(run_failure(exc, thread_id).body())
        yield b"data: [DONE]\n\n"
        return
    yield chunk({"content": render_content(shown)})
    yield chunk({}, "stop", scale=shown)
    if include_usage:
        yield _sse(_envelope(thread_id, created, object="chat.completion.chunk", choices=[], usage=openai_usage(shown)))
    yield b"data: [DONE]\n\n"
