"""The fake server: shared counters and faults (:class:`_State`) and :class:`FakeOpenAIServer`."""


from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import (
    _HTTP_FAULTS,
    _NOT_JSON_BODY,
    CONTEXT_LENGTH_MESSAGE,
    CONTEXT_LIMIT,
    FAULTS,
    MAX_MODEL_LEN,
    MODELS,
    STAGES,
    FakeOpenAIConfig,
)
from .replies import _completion, _stream_events, detect_stage
from .wire import _BadRequest, _error, _head, _read_request, _Reply, _Request, _send

logger = logging.getLogger(__name__)


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


