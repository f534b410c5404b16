"""SCALE end to end against a real local vLLM server (the tiny CPU model): plumbing, never correctness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from scale_graph import Context, build_graph
from tests.support.tcp_proxy import RecordingProxy

pytestmark = pytest.mark.vllm
PROBLEM = "A rectangle has perimeter 20 and area 21. What is the length of its longer side?"


@pytest.fixture
def proxy(vllm_server):
    url = urlparse(vllm_server["system1"]["base_url"])
    proxy = RecordingProxy(url.hostname, url.port).start()
    yield proxy
    proxy.stop()


def local_params(vllm_server, **overrides):
    """The local profile's small budgets, with fewer sub-problems to keep CI short."""
    return {**vllm_server.get("run_defaults", {}), "candidates": 3, "max_subproblems": 3, **overrides}


def endpoint_env(base_url, **params):
    env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": base_url, "SCALE_SYSTEM1_MODEL": "scale-system1",
           "SCALE_SYSTEM2_BASE_URL": base_url, "SCALE_SYSTEM2_MODEL": "scale-system2"}
    env.update({f"SCALE_{k.upper()}": str(v) for k, v in params.items()})
    return env


def scale(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "scale_graph.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_solve_end_to_end(vllm_server, proxy, tmp_path):
    env = endpoint_env(proxy.base_url, **local_params(vllm_server), db=tmp_path / "runs.db")
    result = scale("solve", PROBLEM, "--json", "--thread-id", "e2e", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    requests = proxy.requests()
    assert shown["usage"]["total"]["calls"] == len(requests)  # usage counts every call the server saw
    assert 1 <= len(shown["subproblems"]) <= 3
    by_stage = shown["usage"]["by_stage"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert shown["usage"]["total"][key] == sum(stage[key] for stage in by_stage.values()) > 0

    decompose = [r for r in requests if (r.get("response_format") or {}).get("json_schema", {}).get("name") == "decomposition"]
    assert len(decompose) == 1 and decompose[0]["n"] == 3  # k candidates in one request
    for body in requests:  # the thinking flag is always explicit
        assert body["chat_template_kwargs"]["enable_thinking"] in (True, False)
    thinking = [r for r in requests if r["chat_template_kwargs"]["enable_thinking"]]
    assert all(r["model"] == "scale-system2" for r in thinking)

    detail = json.loads(scale("runs", "show", "e2e", "--json", env=env).stdout)
    for row in detail["subproblems"]:
        assert row["system"] in (1, 2) and row["completion_tokens"] > 0 and row["solution"]
        if row["system"] == 2:
            assert row["reasoning"], "System 2 reasoning text must be captured"
    table = scale("runs", "show", "e2e", env=env)
    assert "difficulty" in table.stdout and "answer:" in table.stdout


@pytest.mark.parametrize("threshold, system", [(0.0, 2), (1.0, 1)])
def test_threshold_extremes_route_everything(vllm_server, proxy, threshold, system):
    context = Context(system1_base_url=proxy.base_url, system1_model="scale-system1",
                      system2_base_url=proxy.base_url, system2_model="scale-system2",
                      **local_params(vllm_server, threshold=threshold))
    out = build_graph().invoke({"problem": PROBLEM}, context=context)  # the sync API, in memory
    assert out["steps"] and {s["system"] for s in out["steps"]} == {system}
    # solves only: not the planner's JSON calls, nor forced answers (a continuation of the model's own
    # reply after its closed think block, forcing.py, sent with thinking off by design)
    solves = [r for r in proxy.requests() if "response_format" not in r and not r.get("continue_final_message")]
    assert solves and all(r["chat_template_kwargs"]["enable_thinking"] is (system == 2)
                          for r in solves if r["model"] == f"scale-system{system}")
    if system == 2:
        assert all(s["reasoning_tokens"] > 0 or s["forced_answer"] or s["completion_tokens"] > 0 for s in out["steps"])
    calls = sum(u["calls"] for u in out["usage"].values())
    assert calls == len(proxy.requests())


def test_candidates_are_distinct_samples_and_structured(vllm_server, proxy):
    context = Context(system1_base_url=proxy.base_url, system1_model="scale-system1",
                      system2_base_url=proxy.base_url, system2_model="scale-system2",
                      **local_params(vllm_server, candidates=4, threshold=1.0, max_subproblems=2))
    graph = build_graph()
    graph.invoke({"problem": PROBLEM}, context=context)
    store = graph.store
    (run_ns,) = {ns for ns in store.list_namespaces(prefix=("scale",)) if ns[-1] == "calls"}
    decompose = next(item.value for item in store.search(run_ns, limit=100) if item.key.startswith("decompose/0"))
    contents = [choice["content"] for choice in decompose["choices"]]
    assert len(contents) == 4 and len(set(contents)) == 4, "k candidates must be k distinct samples"
    for choice in decompose["choices"]:  # guided decoding: JSON of the schema (cut only by the budget)
        assert choice["content"].lstrip().startswith("{") and '"subproblems"' in choice["content"]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["content"])["subproblems"], list)


def test_kill_then_resume_repeats_no_finished_call(vllm_server, proxy, tmp_path):
    env = endpoint_env(proxy.base_url, **local_params(vllm_server), db=tmp_path / "kill.db")
    process = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "solve", PROBLEM, "--thread-id", "k"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(proxy.requests()) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)  # decompose and select finished, an assessment is in flight
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = scale("runs", "resume", "k", "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    shown = json.loads(resumed.stdout)
    assert shown["answer"] is not None or shown["warnings"]
    made = len(proxy.requests())  # requests that reached the server, in both processes
    recorded = shown["usage"]["total"]["calls"]  # calls the run is made of
    assert recorded <= made <= recorded + 1  # only the call in flight at the kill is made twice


def test_server_down_mid_run_fails_clearly_then_resumes(vllm_server, proxy, tmp_path):
    env = endpoint_env(proxy.base_url, **local_params(vllm_server), db=tmp_path / "down.db", max_retries=1)
    process = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "solve", PROBLEM, "--thread-id", "d"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while len(proxy.requests()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    proxy.stop()  # the endpoint goes away: in-flight and new connections fail
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "unreachable" in stderr or "failed" in stderr
    assert "scale runs resume d" in stderr and "Traceback" not in stderr
    proxy.start()  # back on the same port
    resumed = scale("runs", "resume", "d", "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "done"
