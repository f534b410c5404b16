"""How `scale serve` holds up against clients that never finish: the HTTP connection limits and
the shutdown order, on top of uvicorn.

uvicorn times out only idle keep-alive connections (``timeout_keep_alive``); a connection that
sends its request headers slowly, or nothing at all, is never closed, and its ``limit_concurrency``
refuses a request only once its headers are in, so slow-header connections still pile up until
the process runs out of file descriptors. :class:`ServeLimits` adds what is missing through a
small subclass of uvicorn's h11 protocol (:func:`guarded_protocol`): a deadline for the request
headers, a cap on open connections checked when a connection is accepted, and a bound on the
header size. Dropped connections are logged as one summary line every
:data:`DROP_LOG_EVERY_S` at most, never one traceback each.

:class:`ScaleServer` orders a shutdown (SIGTERM, Ctrl-C) so that every client is answered:
stop accepting, give runs in flight ``shutdown_grace_s`` to finish, stop the rest at their last
checkpoint (their clients get the 503 JSON with the thread id, streams an error event), then let
uvicorn close the connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.main import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

connection_log = logging.getLogger("uvicorn.error")  # where uvicorn says what happens to connections

DROP_LOG_EVERY_S = 10.0


def default_max_connections() -> int:
    """Half the process's file descriptors, at most 1,000: the other half stays for the database,
    the upstream endpoints and the listening socket, so accepting never hits the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(16, min(1000, soft // 2))


@dataclass(frozen=True)
class ServeLimits:
    """The connection limits of `scale serve` (README, "scale serve" section)."""

    header_timeout_s: float = 10.0  # from accepting (or the last answer) to complete request headers
    keepalive_timeout_s: int = 5  # an idle connection between requests (uvicorn's timeout_keep_alive)
    max_connections: int = field(default_factory=default_max_connections)  # open at once; more are refused (503)
    max_header_bytes: int = 32 * 1024  # request line + headers (h11_max_incomplete_event_size)
    shutdown_grace_s: float = 10.0  # runs in flight may finish before they are stopped with a 503


class DropLog:
    """Counts dropped connections and says so in one line per period, whatever the rate."""

    def __init__(self, every_s: float = DROP_LOG_EVERY_S) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self.flush_at: asyncio.TimerHandle | None = None
        self.since = 0.0

    def note(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.flush_at is None:
            self.since = time.monotonic()
            self.flush_at = loop.call_later(self.every_s, self.flush)

    def flush(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
        self.flush_at = None
        if self.counts:
            said = "; ".join(f"{n} connection(s) {why}" for why, n in sorted(self.counts.items()))
            connection_log.warning("closed %s in the last %.0f s", said, time.monotonic() - self.since)
            self.counts = {}


class RepeatFilter(logging.Filter):
    """Lets each message template through once per period (with its traceback), then only a count:
    a client that sends garbage, or a flood that fails ``accept()``, cannot flood the log."""

    def __init__(self, every_s: float = DROP_LOG_EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self.seen: dict[str, tuple[float, int]] = {}  # template -> (when last let through, suppressed since)

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        last, suppressed = self.seen.get(key, (float("-inf"), 0))
        if now - last < self.every_s:
            self.seen[key] = (last, suppressed + 1)
            return False
        if len(self.seen) > 1000:  # templates are few; bounded all the same
            self.seen.clear()
        self.seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more like it in the last {now - last:.0f} s)"
        return True


def quiet_repeats(names: tuple[str, ...] = ("uvicorn.error", "asyncio")) -> None:
    """Install one :class:`RepeatFilter` on each named logger (once per process)."""
    for name in names:
        named = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in named.filters):
            named.addFilter(RepeatFilter())


def _refusal(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer, written before any request was parsed, then the connection closes."""
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def guarded_protocol(limits: ServeLimits, drops: DropLog) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap (module docstring)."""
    late = _refusal(408, "Request Timeout", f"the request headers did not arrive within {limits.header_timeout_s:g} s")
    full = _refusal(503, "Service Unavailable", f"too many connections (at most {limits.max_connections:,}); retry later")

    class GuardedH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                drops.note("over the connection cap", self.loop)
                transport.write(full)
                transport.close()
                return
            self._expect_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._expect_headers()  # the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _expect_headers(self) -> None:
            self._cancel_deadline()
            self.header_deadline = self.loop.call_later(limits.header_timeout_s, self._headers_late)

        def _cancel_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _headers_late(self) -> None:
            self.header_deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # the headers came: the request is being answered (its body has its own deadline)
            drops.note(f"without complete request headers within {limits.header_timeout_s:g} s", self.loop)
            self.transport.write(late)
            self.transport.close()

    return GuardedH11Protocol


class ScaleServer(uvicorn.Server):
    """uvicorn's server with the shutdown order of the module docstring."""

    def __init__(self, config: uvicorn.Config, app: Starlette, limits: ServeLimits, drops: DropLog) -> None:
        super().__init__(config)
        self.app, self.limits, self.drops = app, limits, drops

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drops.flush()
        for server in self.servers:
            server.close()  # no new connections while the runs in flight have their grace period
        service = getattr(self.app.state, "service", None)
        if service is not None:
            stopped = await service.drain(self.limits.shutdown_grace_s, lambda: self.force_exit)
            if stopped:
                connection_log.warning("stopped %d run(s) still in flight after the %g s grace period; "
                                       "each is resumable (its client got a 503)", stopped, self.limits.shutdown_grace_s)
        await super().shutdown(sockets)


def server_for(app: Starlette, host: str, port: int, limits: ServeLimits | None = None,
               **options: Any) -> ScaleServer:
    """A server for ``app`` with ``limits`` (default :class:`ServeLimits`); ``options`` go to uvicorn's Config."""
    limits = limits or ServeLimits()
    drops = DropLog()
    quiet_repeats()
    config = uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits, drops),
                            ws="none",  # no websocket routes: an upgrade must not leave the guarded protocol
                            timeout_keep_alive=limits.keepalive_timeout_s,
                            h11_max_incomplete_event_size=limits.max_header_bytes,
                            # after the runs are stopped: time for their 503s and error events to be written
                            timeout_graceful_shutdown=5, **options)
    return ScaleServer(config, app, limits, drops)


def run_server(app: Starlette, host: str, port: int, limits: ServeLimits | None = None) -> None:
    """Serve until SIGTERM / Ctrl-C (`scale serve`), as ``uvicorn.run`` does: Ctrl-C ends quietly,
    a server that could not start exits with uvicorn's startup-failure status."""
    server = server_for(app, host, port, limits, log_level="info")
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the captured Ctrl-C again once it has shut down
        pass
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
