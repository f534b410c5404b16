"""vLLM replicas behind vllm-router: the session key every request of a run carries, and (marked
``vllm``) two real replicas of the tiny local model behind a real router."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import sys
from dataclasses import replace as _replace
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from scale_graph.servers import launch, manager
from scale_graph.servers.chat import SESSION_HEADER, ChatCall, Systems, session
from scale_graph.cli.servers import app
from scale_graph.servers.endpoints import Endpoint
from scale_graph.servers.launch import LaunchError, ProfileOptions
from scale_graph.servers.probe import port_in_use
from scale_graph.servers.router import ROUTER_MODULE
from scale_graph.servers.vllm import ServerSpec
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.tcp_proxy import RecordingProxy

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
    for _ in range(200):
        base = random.randint(20000, 60000)
        if not any(port_in_use("127.0.0.1", base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of ports")


@pytest.mark.vllm
def test_two_replicas_behind_the_router_keep_each_run_on_one_replica(tmp_path):
    from tests.support.vllm import _missing

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
            # vLLM counts each of a call's n samples as a request: at least `calls`, all on one replica
            assert min(added) == 0 and max(added) >= calls, f"run {run}: {added} requests per replica, {calls} calls"
            placement[run] = added.index(max(added))
        assert set(placement.values()) == {0, 1}, f"every run landed on one replica: {placement}"
    finally:
        down = scale("servers", "down", "--grace", "20", env=env)
        recorded = Path(state / "servers.json")
        assert down.returncode == 0 and not recorded.exists()


# --------------------------------------------------------------------------- command lines (no processes)

def _router_argv(port: int, workers: list[str], metrics: int, policy: str = "sticky_least_loaded") -> tuple:
    return (
        "python", "-m", ROUTER_MODULE, "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *workers, "--policy", policy,
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics),
        "--worker-startup-timeout-secs", "3600", "--worker-startup-check-interval", "2",
    )  # fmt: skip


def test_local_replicas_argv(tmp_path):
    one = ProfileOptions(python="python", local_model_dir=str(tmp_path / "m"), port=8100)
    (single,) = launch.servers_for_profile("local", one)
    specs = launch.servers_for_profile("local", _replace(one, replicas=2))
    assert [(s.name, s.role, s.port) for s in specs] == [
        ("local-1", "replica", 8101), ("local-2", "replica", 8102), ("router", "router", 8100)]
    for spec in specs[:2]:  # the single server's command line, on the replica's own port
        assert spec.argv == tuple(str(spec.port) if a == "8100" else a for a in single.argv)
        assert spec.env == single.env
    router = specs[2]
    assert router.argv == _router_argv(8100, ["http://127.0.0.1:8101", "http://127.0.0.1:8102"], 8103)
    assert router.other_ports == (8103,) and router.served_names == single.served_names
    assert router.env["NO_PROXY"].split(",")[0] == "127.0.0.1"
    assert launch.endpoints_for_servers(specs) == launch.endpoints_for_servers([single])  # clients: the router


def test_qwen3_replicas_get_their_own_gpus():
    options = ProfileOptions(python="python", port=9000, tensor_parallel_size=2, replicas=2,
                             router_policy="consistent_hash")
    first, second, router = launch.servers_for_profile("qwen3", options)
    assert (first.env["CUDA_VISIBLE_DEVICES"], second.env["CUDA_VISIBLE_DEVICES"]) == ("0,1", "2,3")
    for spec, port in ((first, 9001), (second, 9002)):
        argv = list(spec.argv)
        assert argv[argv.index("--port") + 1] == str(port)
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2" and "--enable-prefix-caching" in argv
    assert router.argv == _router_argv(9000, ["http://127.0.0.1:9001", "http://127.0.0.1:9002"], 9003,
                                       "consistent_hash")
    assert "CUDA_VISIBLE_DEVICES" not in router.env


def test_paired_replicas_one_router_per_system():
    specs = launch.servers_for_profile("paired", ProfileOptions(python="python", replicas=2))
    names = [(s.name, s.port, s.env.get("CUDA_VISIBLE_DEVICES")) for s in specs]
    assert names == [("system2-1", 8102, "0"), ("system2-2", 8103, "1"), ("system1-1", 8104, "2"),
                     ("system1-2", 8105, "3"), ("router-system2", 8100, None), ("router-system1", 8101, None)]
    assert specs[4].other_ports == (8106,) and specs[5].other_ports == (8107,)
    assert launch.endpoints_for_servers(specs) == {
        "system1": {"base_url": "http://127.0.0.1:8101/v1", "model": "scale-system1"},
        "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"}}


@pytest.mark.parametrize("profile, options, message", [
    ("qwen3", ProfileOptions(replicas=0), "--replicas must be a positive integer"),
    ("qwen3", ProfileOptions(replicas=2, router_policy="fastest"), "unknown router policy"),
    ("qwen3", ProfileOptions(replicas=3, port=65533), "choose a lower --port"),
    ("paired", ProfileOptions(replicas=2, system1_gpus="4"), "with --replicas each replica"),
])
def test_bad_replica_options(profile, options, message):
    with pytest.raises(LaunchError, match=message):
        launch.servers_for_profile(profile, options)


def test_external_profile_has_no_replicas():
    options = ProfileOptions(replicas=2, system2_base_url="http://router:8000/v1")
    with pytest.raises(LaunchError, match="your router's URL"):
        launch.external_endpoints(options)


def test_cli_dry_run_with_replicas():
    result = CliRunner().invoke(app, ["up", "--profile", "qwen3", "--replicas", "2", "--dry-run", "--port", "9100"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if " -m " in line]
    assert len(lines) == 3 and lines[2].endswith("--worker-startup-check-interval 2")
    assert "--worker-urls http://127.0.0.1:9101 http://127.0.0.1:9102" in lines[2]
    bad = CliRunner().invoke(app, ["up", "--replicas", "0", "--dry-run"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


# --------------------------------------------------------------------------- up / status / down (fake processes)

FAKE = """
import http.server, json, sys
port, names = int(sys.argv[1]), sys.argv[2].split(",")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": n} for n in names]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_up_status_down_with_replicas_and_router(tmp_path):
    """Replicas and router are recorded, shown and stopped like any server (fake processes whose
    command lines replace the real ones)."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    port = _free_block(4)
    options = ProfileOptions(python="python", local_model_dir=str(tmp_path), port=port, replicas=2)
    specs = [_replace(s, argv=(sys.executable, str(script), str(s.port), ",".join(s.served_names)))
             for s in launch.servers_for_profile("local", options)]
    state = tmp_path / "state"
    try:
        endpoints = manager.up("local", options, state_dir=state, specs=specs, timeout=30, poll_interval=0.1)
        assert endpoints["system1"]["base_url"] == f"http://127.0.0.1:{port}/v1"
        assert {k: v["url"] for k, v in manager.status(state).items()} == {
            "system1": f"http://127.0.0.1:{port}/v1", "system2": f"http://127.0.0.1:{port}/v1"}
        rows = manager.servers_status(state)
        assert [(r["name"], r["role"], r["alive"], r["answering"]) for r in rows] == [
            ("local-1", "replica", True, True), ("local-2", "replica", True, True), ("router", "router", True, True)]
        shown = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
        assert all(name in shown.output for name in ("local-1", "local-2", "router", "replica"))
        pids = [r["pid"] for r in rows]
    finally:
        stopped = manager.down(state, grace=5)
    assert stopped == ["local-1", "local-2", "router"]
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in pids)
    assert manager.servers_status(state) == []


def test_router_metrics_port_in_use_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        spec = ServerSpec(name="router", argv=("true",), env={}, port=_free_block(1), served_names=("m",),
                          role="router", other_ports=(taken,))
        with pytest.raises(manager.ServerError, match=f"port {taken} .*router"):
            manager.up("local", ProfileOptions(), state_dir=tmp_path / "s", specs=[spec], timeout=5)
