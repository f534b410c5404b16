"""`scale serve` under a slowloris: 200 connections that send their request headers one byte at
a time (reconnecting when dropped, as an attacker would), an oversized chunked upload, and 50
real concurrent requests whose inner SCALE calls go to the fake OpenAI server.

Every real request must be answered with a finished run, every slow-header connection closed at
the header deadline, the serve process's memory bounded (RSS sampled all along) and its log
bounded (bytes of stdout + stderr), without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import psutil
import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(120)

SLOW_CONNECTIONS = 200
REAL_REQUESTS = 50
HEADER_TIMEOUT_S = 3.0
RSS_GROWTH_BOUND = 128 * 1024 * 1024  # over the idle server's RSS; the 200 MiB upload alone would exceed it
LOG_BOUND = 32 * 1024  # 50 access lines ≈ 4 KiB, drop summaries a line per 10 s
PROBLEM = "What is 1+1?"




class Slowloris:
    """``count`` connections, each sending request-header bytes one at a time every ``pace`` s;
    a connection the server closes is replaced at once. Records how long each one lived."""

    def __init__(self, port: int, count: int, pace: float = 0.5) -> None:
        self.port, self.count, self.pace = port, count, pace
        self.lifetimes: list[float] = []
        self.refused_with: set[bytes] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open(self) -> tuple[socket.socket, float, int]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        return sock, time.monotonic(), 0

    def run(self) -> None:
        header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        conns = [self.open() for _ in range(self.count)]
        while not self.stop.is_set():
            readable, _, _ = select.select([c[0] for c in conns], [], [], self.pace)
            for index, (sock, opened, sent) in enumerate(conns):
                if sock in readable:  # the server answered (408) or closed: it dropped us
                    with contextlib.suppress(OSError):
                        self.refused_with.add(sock.recv(64)[:12])
                    sock.close()
                    self.lifetimes.append(time.monotonic() - opened)
                    conns[index] = self.open()
                    continue
                with contextlib.suppress(OSError):
                    sock.send(header[sent:sent + 1])
                conns[index] = (sock, opened, sent + 1)
        for sock, _, _ in conns:
            sock.close()


def oversized_upload(port: int) -> bytes:
    """Up to 200 MiB of a chunked body, stopping when the server answers; the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    with contextlib.suppress(OSError):
        for _ in range(200):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk)
    answer = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            answer += data
    sock.close()
    return answer


def test_serve_answers_every_real_request_under_a_slowloris(endpoint_env, tmp_path, fake_server):
    fake_server.configure(latency=0.05)
    port, log = free_port(), tmp_path / "serve.log"
    code = ("import sys; from scale_graph.serve import ServeLimits, create_app, run_server; "
            f"run_server(create_app(sys.argv[1]), '127.0.0.1', {port}, ServeLimits(header_timeout_s={HEADER_TIMEOUT_S}))")
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "load.db")],
                                   stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    slow = Slowloris(port, SLOW_CONNECTIONS)
    peak, sampling = [0], threading.Event()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.1)
        watched = psutil.Process(process.pid)
        idle_rss = watched.memory_info().rss

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], watched.memory_info().rss)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        slow.thread.start()
        time.sleep(1.0)  # the slow connections are open before the real requests start

        async def real_requests() -> list:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=90)
            async with client:
                return await asyncio.gather(*(client.chat.completions.create(
                    model="scale", messages=[{"role": "user", "content": PROBLEM}],
                    extra_body={"scale": {"candidates": 1}}) for _ in range(REAL_REQUESTS)))

        upload: list[bytes] = []
        uploader = threading.Thread(target=lambda: upload.append(oversized_upload(port)), daemon=True)
        began = time.monotonic()
        uploader.start()
        replies = asyncio.run(real_requests())
        served_in = time.monotonic() - began
        uploader.join(30)
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # every slow connection has met the deadline at least once
        slow.stop.set()
        slow.thread.join(10)
        sampling.set()
        sampler.join(5)
    finally:
        slow.stop.set()
        process.terminate()
        process.wait(30)

    assert len(replies) == REAL_REQUESTS
    assert all(r.model_extra["scale"]["answer"] and "\\boxed{" in r.choices[0].message.content for r in replies)
    assert len({r.model_extra["scale"]["thread_id"] for r in replies}) == REAL_REQUESTS
    assert upload and upload[0].startswith(b"HTTP/1.1 413"), upload

    assert len(slow.lifetimes) >= SLOW_CONNECTIONS, len(slow.lifetimes)  # each was dropped at least once
    assert max(slow.lifetimes) < HEADER_TIMEOUT_S + 2.0, max(slow.lifetimes)
    assert slow.refused_with == {b"HTTP/1.1 408"}, slow.refused_with

    growth = peak[0] - idle_rss
    text = log.read_bytes()
    print(f"\n{REAL_REQUESTS} requests in {served_in:.1f} s beside {SLOW_CONNECTIONS} slow connections "
          f"({len(slow.lifetimes)} dropped); RSS {idle_rss / 2**20:.0f} MiB idle, peak +{growth / 2**20:.0f} MiB; "
          f"log {len(text):,} bytes")
    assert growth < RSS_GROWTH_BOUND, growth
    assert len(text) < LOG_BOUND, text[-2000:]
    assert b"Traceback" not in text and b"ERROR" not in text, text[-2000:]
    assert b"without complete request headers" in text  # the drops are said, in summary lines
