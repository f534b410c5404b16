"""A TCP proxy in front of a real server: counts and records HTTP requests, and can go down.

Stopping it makes the endpoint refuse connections exactly like a stopped server, without
paying a vLLM restart.
"""

from __future__ import annotations

import json
import socket
import threading


class RecordingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener: socket.socket | None = None
        self.port = 0
        self.lock = threading.Lock()
        self.streams: list[bytearray] = []  # client → server bytes, one per connection
        self.sockets: list[socket.socket] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "RecordingProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            record = bytearray()
            with self.lock:
                self.streams.append(record)
                self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, record), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    with self.lock:
                        record += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests(self) -> list[dict]:
        """The JSON bodies of the chat completion requests seen so far."""
        bodies = []
        with self.lock:
            streams = [bytes(s) for s in self.streams]
        for stream in streams:
            for chunk in stream.split(b"POST /v1/chat/completions")[1:]:
                _, _, rest = chunk.partition(b"\r\n\r\n")
                try:
                    body, _ = json.JSONDecoder().raw_decode(rest.decode("utf-8", "replace"))
                except ValueError:  # cut off mid-body
                    continue
                bodies.append(body)
        return bodies

    def reset(self) -> None:
        with self.lock:
            self.streams.clear()
