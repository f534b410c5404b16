"""Just enough HTTP/1.1 for the fake: reading a request, sending a reply (keep-alive, chunked)."""


from __future__ import annotations

import asyncio
import http
import json
from dataclasses import dataclass, field
from typing import Any


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


