"""vLLM replicas behind vllm-router: the session key every request of a run carries, and (marked
``vllm``) two real replicas of the tiny local model behind a real router."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scale_graph.servers.chat import SESSION_HEADER, ChatCall, Systems, session
from scale_graph.servers.endpoints import Endpoint
from scale_graph.testing.fake_openai import FakeOpenAIServer
from tests.tcp_proxy import RecordingProxy

PROBLEM = "A rectangle has perimeter 20 and area 21. What is the length of its longer side?"


def session_ids(proxy: RecordingProxy) -> list[str | None]:
    """The X-Session-ID header of every chat request that went through ``proxy`` (None: absent)."""
    with proxy.lock:
        streams = [bytes(s) for s in proxy.streams]
    found: list[str | None] = []
    for stream in streams:
        for chunk in stream.split(b"POST /v1/chat/completions")[1:]:
            head = chunk.partition(b"\r\n\r\n")[0].decode("latin-1")
            match = re.search(rf"^{SESSION_HEADER}:\s*(\S+)", head, re.IGNORECASE | re.MULTILINE)
            found.append(match.group(1) if match else None)
    return found


@pytest.fixture
def proxied():
    with FakeOpenAIServer(supports_n=False) as server:
        proxy = RecordingProxy("127.0.0.1", server.port).start()
        yield proxy
        proxy.stop()


def scale(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scale_graph.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_every_call_of_a_run_carries_its_run_id_as_session(proxied, tmp_path):
    """Defect before: no request carried a session key, so a router spread a run's calls over its
    replicas and each call missed the prefix cache of the one before."""
    env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": proxied.base_url, "SCALE_SYSTEM1_MODEL": "scale-system1",
           "SCALE_SYSTEM2_BASE_URL": proxied.base_url, "SCALE_SYSTEM2_MODEL": "scale-system2",
           "SCALE_DB": str(tmp_path / "runs.db"), "SCALE_CANDIDATES": "2"}
    for run in ("run-a", "run-b"):
        result = scale("solve", PROBLEM, "--json", "--thread-id", run, env=env)
        assert result.returncode == 0, result.stderr
    seen = session_ids(proxied)
    calls = len(proxied.requests())
    assert len(seen) == calls >= 8
    assert set(seen) == {"run-a", "run-b"} and seen.count("run-a") == seen.count("run-b")


def _endpoints(base_url: str) -> tuple[Endpoint, Endpoint]:
    return (Endpoint(1, base_url, "scale-system1", timeout=10, max_retries=0),
            Endpoint(2, base_url, "scale-system2", timeout=10, max_retries=0))


def test_samples_sent_one_by_one_from_threads_keep_the_session(proxied):
    """The server refuses ``n``, so the blocking client sends the samples from pool threads, which
    do not inherit the caller's context variables by themselves."""
    systems = Systems(*_endpoints(proxied.base_url))
    call = ChatCall(key="k", system=1, messages=[("user", "Solve 1+1.")], thinking=False, max_tokens=16,
                    temperature=0.7, seed=1, n=3)
    with session("run-threads"):
        reply = systems.call(call)
    assert len(reply.choices) == 3
    # the request with n (refused), then one request per sample from the pool
    assert session_ids(proxied) == ["run-threads"] * 4


def test_async_samples_keep_the_session_and_no_session_sends_no_header(proxied):
    systems = Systems(*_endpoints(proxied.base_url))
    call = ChatCall(key="k", system=2, messages=[("user", "Solve 1+1.")], thinking=True, max_tokens=16,
                    temperature=0.7, seed=1, n=2)

    async def both() -> None:
        with session("run-async"):
            await systems.acall(call)
        await systems.acall(call)  # outside any session

    asyncio.run(both())
    seen = session_ids(proxied)
    # in session: the refused request with n and its 2 samples; outside: 2 samples, no header
    assert sorted(seen, key=str) == [None, None, "run-async", "run-async", "run-async"]


# --------------------------------------------------------------------------- real replicas

def _vllm_request_counts(base_url: str) -> float:
    """``vllm:request_success_total`` of one replica, summed over its labels."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))


def _free_block(size: int) -> int:
    from scale_graph.servers.probe import port_in_use

    for _ in range(200):
        base = random.randint(20000, 60000)
        if not any(port_in_use("127.0.0.1", base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of ports")


@pytest.mark.vllm
def test_two_replicas_behind_the_router_keep_each_run_on_one_replica(tmp_path):
    from tests.vllm_fixture import _missing

    missing = _missing()
    if importlib.util.find_spec("vllm_router") is None:
        missing.append("vllm-router (pip install 'scale-graph[router]')")
    if missing:
        message = "the router test needs " + " and ".join(missing)
        if os.environ.get("SCALE_REQUIRE_VLLM"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    state = tmp_path / "state"
    port = _free_block(4)  # router, two replicas, the router's metrics
    env = {**os.environ, "SCALE_STATE_DIR": str(state), "SCALE_DB": str(tmp_path / "runs.db"),
           "SCALE_CANDIDATES": "2", "SCALE_MAX_SUBPROBLEMS": "2", "VLLM_CPU_KVCACHE_SPACE": "1"}
    for name in ("SCALE_SYSTEM1_BASE_URL", "SCALE_SYSTEM2_BASE_URL", "SCALE_SYSTEM1_MODEL", "SCALE_SYSTEM2_MODEL"):
        env.pop(name, None)
    timeout = os.environ.get("SCALE_VLLM_TEST_TIMEOUT") or "900"
    try:
        up = scale("servers", "up", "--replicas", "2", "--port", str(port), "--timeout", timeout, env=env,
                   timeout=float(timeout) + 120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"SCALE_SYSTEM2_BASE_URL=http://127.0.0.1:{port}/v1" in up.stdout  # clients use the router

        status = json.loads(scale("servers", "status", "--json", env=env).stdout)
        rows = {row["name"]: row for row in status["servers"]}
        assert {name: row["role"] for name, row in rows.items()} == {
            "local-1": "replica", "local-2": "replica", "router": "router"}
        assert all(row["alive"] and row["answering"] for row in rows.values())
        assert status["system2"]["url"] == rows["router"]["url"] == f"http://127.0.0.1:{port}/v1"
        replicas = [rows["local-1"]["url"], rows["local-2"]["url"]]

        placement = {}
        for run in ("r1", "r2", "r3", "r4"):  # one after another, so each run's calls can be counted
            before = [_vllm_request_counts(url) for url in replicas]
            result = scale("solve", PROBLEM, "--json", "--thread-id", run, env=env)
            assert result.returncode == 0, result.stderr
            calls = json.loads(result.stdout)["usage"]["total"]["calls"]
            added = [_vllm_request_counts(url) - b for url, b in zip(replicas, before)]
            assert sorted(added) == [0, calls], f"run {run}: {added} requests per replica, {calls} calls"
            placement[run] = added.index(calls)
        assert set(placement.values()) == {0, 1}, f"every run landed on one replica: {placement}"
    finally:
        down = scale("servers", "down", "--grace", "20", env=env)
        recorded = Path(state / "servers.json")
        assert down.returncode == 0 and not recorded.exists()
