"""The `scale serve` app: Starlette routes that turn each chat request into a SCALE run.

Runs are tasks of one :class:`Service`, so a run goes on when its client leaves, and a shutdown
(:meth:`Service.drain`) gives runs in flight a grace period, then stops the rest at their last
checkpoint: each waiting client gets the 503 of :func:`~scale_graph.serve.render.shutting_down`
with its thread id, each stream an error event before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scale_graph.context import Context
from scale_graph.graph import build_graph
from scale_graph.history import solution_texts
from scale_graph.journal import calls_namespace, new_run_id
from scale_graph.persistence import open_async
from scale_graph.progress import progress_line
from scale_graph.runner import start
from scale_graph.runs import summary
from scale_graph.serve.checks import (MODEL, THREAD_HEADER, APIError, ChatRequest, bad_request, check_params,
                                      check_request, read_body)
from scale_graph.serve.render import (completion, envelope, openai_usage, render_content, render_trace,
                                      run_failure, shutting_down, sse)
from scale_graph.servers.chat import ChatReply
from scale_graph.servers.endpoints import with_context_window
from scale_graph.settings import ConfigError
from scale_graph.setup import build

KEEPALIVE_S = 15.0  # an SSE comment while a long System 2 call runs, so proxies keep the stream


class Service:
    """The shared graph, store and in-flight runs of one app."""

    def __init__(self, graph: Any, store: Any) -> None:
        self.graph, self.store = graph, store
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False

    def launch(self, chat: ChatRequest, thread_id: str, queue: asyncio.Queue | None) -> asyncio.Task:
        """Start a run as its own task: it finishes (and is checkpointed) even if its client leaves."""
        on_event = queue.put_nowait if queue is not None else None
        task = asyncio.create_task(start(self.graph, self.store, chat.problem, chat.context, thread_id, on_event),
                                   name=f"scale-run-{thread_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if queue is not None:
            task.add_done_callback(lambda _: queue.put_nowait(None))
        return task

    async def drain(self, grace_s: float, give_up: Callable[[], bool] = lambda: False) -> int:
        """Refuse new runs, wait up to ``grace_s`` for those in flight (``give_up()`` cuts the wait:
        a second Ctrl-C), then cancel the rest; each stops at its last checkpoint and its client is
        answered by the request handler (503 / error event). How many runs were stopped."""
        self.stopping = True
        deadline = time.monotonic() + grace_s
        while self.tasks and time.monotonic() < deadline and not give_up():
            await asyncio.sleep(0.05)
        stopped = list(self.tasks)
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)
        return len(stopped)

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


def create_app(db_path: str | os.PathLike | None = None, api_key: str | None = None,
               default_params: dict[str, Any] | None = None) -> Starlette:
    """The OpenAI-compatible SCALE app: ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /health``.

    Runs go to ``db_path`` (default ``$SCALE_DB`` or ``./scale.db``), opened once for the app's
    lifetime. ``default_params`` are run parameters for every request (the request's ``scale``
    object overrides them). With ``api_key`` every ``/v1`` request needs ``Authorization: Bearer``;
    an empty key is refused (it would let every client in).
    """
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty: give a non-empty --api-key / SCALE_SERVE_API_KEY, "
                          "or none to serve without a key")
    defaults = dict(default_params or {})
    check_params(defaults, server=True)  # bad server defaults fail here (APIError), not on the first request
    try:
        base: Context = with_context_window(build(defaults, db=db_path).context)
    except ConfigError as exc:
        raise bad_request(f"invalid run parameters: {exc}", "scale") from None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_async(db_path) as (saver, store):
            app.state.service = service = Service(build_graph(saver, store), store)
            try:
                yield
            finally:  # runs still in flight stop at their last checkpoint (resumable)
                await service.drain(0)

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
        service: Service = request.app.state.service
        return JSONResponse({"status": "stopping" if service.stopping else "ok", "runs_in_flight": len(service.tasks)},
                            status_code=503 if service.stopping else 200)

    async def chat_completions(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            authorize(request)
            chat = check_request(await read_body(request), base)
            if service.stopping:
                raise shutting_down()
        except APIError as exc:
            return exc.response()

        thread_id = new_run_id()
        if chat.stream:
            queue: asyncio.Queue = asyncio.Queue()
            task = service.launch(chat, thread_id, queue)
            return StreamingResponse(_stream(service, task, queue, thread_id, chat.include_usage),
                                     media_type="text/event-stream",
                                     headers={THREAD_HEADER: thread_id, "Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        task = service.launch(chat, thread_id, None)
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


async def _stream(service: Service, task: asyncio.Task, queue: asyncio.Queue, thread_id: str,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """SSE: progress as ``reasoning_content`` deltas, then the content, then usage and ``[DONE]``;
    a run that stopped (endpoint failure, shutdown) ends with an error event and ``[DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse(envelope(thread_id, created, object="chat.completion.chunk", choices=[choice],
                            **({"usage": None} if include_usage else {}), **extra))

    yield chunk({"role": "assistant", "content": "", "reasoning_content": f"SCALE run {thread_id}\n"})
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
        except TimeoutError:
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
        yield sse(run_failure(exc, thread_id).body())
        yield b"data: [DONE]\n\n"
        return
    yield chunk({"content": render_content(shown)})
    yield chunk({}, "stop", scale=shown)
    if include_usage:
        yield sse(envelope(thread_id, created, object="chat.completion.chunk", choices=[], usage=openai_usage(shown)))
    yield b"data: [DONE]\n\n"
