"""`scale serve`: the OpenAI-compatible SCALE endpoint, driven by the official openai client
against a real uvicorn server whose inner SCALE calls go to the fake OpenAI server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from typer.testing import CliRunner

from scale_graph.cli import app as cli_app
from scale_graph.cli import serve_command
from scale_graph.serve import THREAD_HEADER, create_app

PROBLEM = "What is 1+1?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A uvicorn server running ``create_app`` in a background thread."""

    def __init__(self, db, **kwargs) -> None:
        self.db = db
        self.port = free_port()
        config = uvicorn.Config(create_app(db, **kwargs), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def client(self, api_key="unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, api_key="unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture
def served(endpoint_env, tmp_path):
    with Served(tmp_path / "serve.db") as server:
        yield server


def show(db, thread_id) -> dict:
    result = CliRunner().invoke(cli_app, ["runs", "show", thread_id, "--json", "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_models(served):
    assert [m.id for m in served.client().models.list()] == ["scale"]


def test_completion_non_streaming(served, fake_server):
    raw = served.client().chat.completions.with_raw_response.create(
        model="scale", messages=[{"role": "system", "content": "You are helpful."},
                                 {"role": "user", "content": PROBLEM}],
        extra_body={"scale": {"candidates": 2, "threshold": 0.5}})
    thread_id = raw.headers[THREAD_HEADER]
    reply = raw.parse()
    message = reply.choices[0].message
    scale = reply.model_extra["scale"]
    assert scale["thread_id"] == thread_id and reply.id == f"chatcmpl-{thread_id}"
    assert reply.object == "chat.completion" and reply.model == "scale" and reply.choices[0].finish_reason == "stop"

    # content: a short plan, ending with the answer in \boxed{}
    assert scale["answer"] and message.content.endswith(f"\\boxed{{{scale['answer']}}}")
    assert "SCALE solved this in 3 sub-problems" in message.content
    # reasoning_content: the whole trace
    trace = message.model_extra["reasoning_content"]
    assert trace.startswith(f"Problem:\n{PROBLEM}") and "Decomposition (Eq. 1–2): 2 candidate(s)" in trace
    shown = show(served.db, thread_id)  # the same run through `scale runs show --json`
    for row in shown["subproblems"]:
        assert f"## Sub-problem {row['index'] + 1}/3: difficulty {row['difficulty']:.2f} → System {row['system']}" in trace
        assert row["text"] in trace and row["solution"] and f"Solution:\n{row['solution']}" in trace
    hard = [r for r in shown["subproblems"] if r["system"] == 2]
    assert hard and all(r["reasoning"] and f"Thinking:\n{r['reasoning']}" in trace for r in hard)
    assert {r["system"] for r in scale["subproblems"]} == {1, 2}  # fake difficulties 0.1/0.8 around τ = 0.5
    assert "solution" not in scale["subproblems"][0]  # `scale` is the summary; long texts only in the trace

    # usage: summed over every inner call
    total = scale["usage"]["total"]
    assert total["calls"] == fake_server.stats()["requests"] == 8
    assert reply.usage.prompt_tokens == total["prompt_tokens"] > 0
    assert reply.usage.completion_tokens == total["completion_tokens"] > 0
    assert reply.usage.total_tokens == total["prompt_tokens"] + total["completion_tokens"]
    assert reply.usage.completion_tokens_details.reasoning_tokens == total["reasoning_tokens"] > 0
    assert fake_server.stats()["log"][0]["body"]["n"] == 2  # candidates reached the run

    # the run is an ordinary checkpointed run in the server's database
    assert shown["status"] == "done" and shown["answer"] == scale["answer"]
    assert shown["params"]["candidates"] == 2 and shown["params"]["threshold"] == 0.5
    assert shown["problem"] == PROBLEM and len(shown["checkpoints"]) > 5


def test_completion_streaming(served):
    stream = served.client().chat.completions.create(
        model="scale", messages=[{"role": "user", "content": [{"type": "text", "text": PROBLEM}]}],
        stream=True, stream_options={"include_usage": True}, extra_body={"scale": {"candidates": 2}})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    thread_id = chunks[0].id.removeprefix("chatcmpl-")
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    # progress arrives as reasoning before any content
    first_content = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    last_reasoning = max(i for i, c in enumerate(chunks)
                         if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content"))
    assert last_reasoning < first_content
    for expected in ("candidate plan(s)", "Chose plan", "Sub-problem 1: difficulty", "solved on System", "Answer:"):
        assert expected in reasoning
    assert len(re.findall(r"Sub-problem \d: difficulty", reasoning)) == 3
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    scale = finish[0].model_extra["scale"]
    assert scale["thread_id"] == thread_id and content.endswith(f"\\boxed{{{scale['answer']}}}")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == scale["usage"]["total"]["completion_tokens"] > 0
    assert show(served.db, thread_id)["status"] == "done"


def test_run_goes_on_when_the_streaming_client_leaves(served, fake_server):
    fake_server.configure(latency=0.2)
    body = {"model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "stream": True,
            "scale": {"candidates": 1}}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body) as response:
        thread_id = response.headers[THREAD_HEADER]
        next(response.iter_lines())  # the first chunk, then hang up
    deadline = time.monotonic() + 30
    while httpx.get(f"{served.url}/health").json()["runs_in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    shown = show(served.db, thread_id)
    assert shown["status"] == "done" and shown["answer"]


def test_streaming_without_usage_has_no_usage_chunk(served):
    chunks = list(served.client().chat.completions.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], stream=True,
        extra_body={"scale": {"candidates": 1}}))
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_concurrent_requests_run_concurrently(served, fake_server):
    fake_server.configure(latency=0.25)  # 8 calls per run: each run takes >= 2 s
    body = dict(model="scale", messages=[{"role": "user", "content": PROBLEM}], extra_body={"scale": {"candidates": 2}})

    async def main():
        in_flight = []

        async def watch(http):
            while True:
                in_flight.append((await http.get(f"{served.url}/health")).json()["runs_in_flight"])
                await asyncio.sleep(0.05)

        async with served.async_client() as client, httpx.AsyncClient() as http:
            watcher = asyncio.create_task(watch(http))
            began = time.monotonic()
            replies = await asyncio.gather(*(client.chat.completions.with_raw_response.create(**body) for _ in range(4)))
            elapsed = time.monotonic() - began
            watcher.cancel()
        return replies, max(in_flight), elapsed

    replies, most, elapsed = asyncio.run(main())
    assert most == 4, f"at most {most} runs were in flight at once"
    assert elapsed < 4 * 8 * 0.25  # not one after another
    thread_ids = [r.headers[THREAD_HEADER] for r in replies]
    assert len(set(thread_ids)) == 4
    for raw, thread_id in zip(replies, thread_ids):
        reply = raw.parse()
        assert reply.model_extra["scale"]["thread_id"] == thread_id and reply.model_extra["scale"]["answer"]
    assert fake_server.stats()["requests"] == 4 * 8
    listed = json.loads(CliRunner().invoke(cli_app, ["runs", "list", "--json", "--db", str(served.db)]).stdout)
    assert sorted(r["thread_id"] for r in listed) == sorted(thread_ids)
    assert {r["status"] for r in listed} == {"done"}


BAD_BODIES = [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"model": "scale"}, 400, "'messages' must be a non-empty list"),
    ({"model": "scale", "messages": []}, 400, "'messages' must be a non-empty list"),
    ({"model": "scale", "messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"model": "scale", "messages": [{"content": "x"}]}, 400, "string 'role'"),
    ({"model": "scale", "messages": [{"role": "system", "content": "x"}]}, 400, "no user message"),
    ({"model": "scale", "messages": [{"role": "user", "content": "  \n"}]}, 400, "is empty"),
    ({"model": "scale", "messages": [{"role": "user", "content": 42}]}, 400, "content must be a string"),
    ({"model": "scale", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "is empty"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x" * 20001}]}, 400, "max_problem_chars"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "'stream' must be a boolean"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "'n' must be 1"),
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, 400, "'model' must be a string"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": [1]}, 400, "'scale' must be an object"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"tau": 0.3}}, 400, "unknown run parameter scale.tau"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"threshold": "high"}}, 400, "scale.threshold must be a number"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"candidates": 2.5}}, 400, "scale.candidates must be an integer"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"use_n": 1}}, 400, "scale.use_n must be a boolean"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"carry": "all"}}, 400, "scale.carry must be"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"threshold": 1.5}}, 400, "threshold must be within [0, 1]"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"system1_base_url": "http://evil/v1"}}, 400, "cannot be set per request"),
    ({"model": "scale", "messages": [{"role": "user", "content": "x"}], "scale": {"review": True}}, 400, "cannot be set per request"),
]


def test_bad_bodies(served, fake_server):
    for body, status, message in BAD_BODIES:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(f"{served.url}/v1/chat/completions", content=content,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error", (body, error)
        assert THREAD_HEADER not in response.headers
    assert fake_server.stats()["requests"] == 0  # nothing ran
    assert json.loads(CliRunner().invoke(cli_app, ["runs", "list", "--json", "--db", str(served.db)]).stdout) == []


def test_bad_request_through_the_openai_client(served):
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model="scale", messages=[{"role": "assistant", "content": "hi"}])
    assert caught.value.status_code == 400 and "no user message" in caught.value.message


def test_api_key_required_when_set(endpoint_env, tmp_path):
    with Served(tmp_path / "keyed.db", api_key="sekret") as server:
        for key in ("wrong", "unused"):
            with pytest.raises(openai.AuthenticationError):
                server.client(api_key=key).models.list()
            with pytest.raises(openai.AuthenticationError) as caught:
                server.client(api_key=key).chat.completions.create(
                    model="scale", messages=[{"role": "user", "content": PROBLEM}])
            assert caught.value.status_code == 401 and "API key" in caught.value.message
        assert httpx.get(f"{server.url}/v1/models").status_code == 401  # no header at all
        assert [m.id for m in server.client(api_key="sekret").models.list()] == ["scale"]
        reply = server.client(api_key="sekret").chat.completions.create(
            model="scale", messages=[{"role": "user", "content": PROBLEM}], extra_body={"scale": {"candidates": 1}})
        assert "\\boxed{" in reply.choices[0].message.content


def test_server_defaults_and_request_overrides(endpoint_env, tmp_path, fake_server, monkeypatch):
    monkeypatch.setenv("SCALE_CANDIDATES", "5")
    with Served(tmp_path / "d.db", default_params={"threshold": 0.9}) as server:
        reply = server.client().chat.completions.create(
            model="scale", messages=[{"role": "user", "content": PROBLEM}], extra_body={"scale": {"candidates": 2}})
        scale = reply.model_extra["scale"]
        assert {r["system"] for r in scale["subproblems"]} == {1}  # τ = 0.9 from the server defaults
        assert fake_server.stats()["log"][0]["body"]["n"] == 2  # the request beat SCALE_CANDIDATES
        reply = server.client().chat.completions.create(
            model="scale", messages=[{"role": "user", "content": PROBLEM}], extra_body={"scale": {"threshold": 0.2}})
        assert fake_server.stats()["log"][8]["body"]["n"] == 5  # no request value: the environment's
        assert 2 in {r["system"] for r in reply.model_extra["scale"]["subproblems"]}


def test_bad_server_defaults_fail_at_creation(endpoint_env, tmp_path):
    from scale_graph.serve import APIError

    with pytest.raises(APIError, match="threshold must be within"):
        create_app(tmp_path / "x.db", default_params={"threshold": 7})
    with pytest.raises(APIError, match="cannot be set per request"):
        create_app(tmp_path / "x.db", default_params={"review": True})


def test_endpoint_failure_is_502_with_a_resumable_thread(served, fake_server):
    fake_server.inject("500", times=100, stage="solve")
    with pytest.raises(openai.APIStatusError) as caught:
        served.client().chat.completions.with_raw_response.create(
            model="scale", messages=[{"role": "user", "content": PROBLEM}],
            extra_body={"scale": {"candidates": 1, "max_retries": 0}})
    error = caught.value
    assert error.status_code == 502
    thread_id = error.response.headers[THREAD_HEADER]
    body = error.response.json()["error"]
    assert body["thread_id"] == thread_id and body["type"] == "upstream_error"
    assert "HTTP 500" in body["message"] and f"scale runs resume {thread_id}" in body["message"]
    assert "\n" not in body["message"]
    assert show(served.db, thread_id)["status"].startswith("stopped before")

    fake_server.reset()
    result = CliRunner().invoke(cli_app, ["runs", "resume", thread_id, "--json", "--db", str(served.db)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"]
    assert show(served.db, thread_id)["status"] == "done"


def test_endpoint_failure_while_streaming_is_an_error_event(served, fake_server):
    fake_server.inject("500", times=100, stage="solve")
    stream = served.client().chat.completions.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], stream=True,
        extra_body={"scale": {"candidates": 1, "max_retries": 0}})
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "HTTP 500" in caught.value.message and "scale runs resume" in caught.value.message


def test_serve_command_refuses_without_endpoints(tmp_path):
    import typer

    app = typer.Typer()
    app.command()(serve_command)
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "s.db"), "--port", str(free_port())])
    assert result.exit_code == 2 and "scale servers up" in result.output


def test_serve_command_in_a_process(endpoint_env, tmp_path):
    """The command as `scale serve` runs it: typer options, SCALE_SERVE_API_KEY, uvicorn, clean stop."""
    port, db = free_port(), tmp_path / "cmd.db"
    env = {**os.environ, "SCALE_SERVE_API_KEY": "k1"}
    code = "import typer; from scale_graph.cli import serve_command; typer.run(serve_command)"
    process = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--db", str(db)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        reply = client.chat.completions.create(model="scale", messages=[{"role": "user", "content": PROBLEM}],
                                               extra_body={"scale": {"candidates": 1}})
        assert reply.model_extra["scale"]["answer"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"SCALE on http://127.0.0.1:{port}/v1" in output and str(db) in output
    assert show(db, reply.model_extra["scale"]["thread_id"])["status"] == "done"


def test_unknown_route_is_json(served):
    response = httpx.get(f"{served.url}/v1/nothing")
    assert response.status_code == 404 and "no route" in response.json()["error"]["message"]
    assert httpx.get(f"{served.url}/health").json()["status"] == "ok"


def test_upstream_error_hides_the_key_and_the_upstream_url(endpoint_env, tmp_path, fake_server, monkeypatch):
    key = "sk-test-123456789"
    for system in (1, 2):
        monkeypatch.setenv(f"SCALE_SYSTEM{system}_API_KEY", key)
    fake_server.inject("echo_auth_500", times=100, stage="decomposition")
    with Served(tmp_path / "k.db") as server:
        for stream in (False, True):
            response = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "stream": stream,
                "scale": {"candidates": 1, "max_retries": 0}})
            text = response.text
            assert fake_server.stats()["log"][-1]["status"] == 500
            assert "upstream System 1 endpoint failed" in text and "request headers were" in text, text
            assert key not in text and "[redacted]" in text, text
            assert fake_server.base_url not in text and f"127.0.0.1:{fake_server.port}" not in text, text
            if not stream:
                assert response.status_code == 502
                assert "scale runs resume" in response.json()["error"]["message"]


@pytest.mark.parametrize("name, value", [("candidates", 9), ("max_problem_chars", 20001), ("max_retries", 4),
                                         ("system2_max_tokens", 32_769)])  # the default (32,768) + 1
def test_a_client_may_not_exceed_the_servers_limits(served, fake_server, name, value):
    response = httpx.post(f"{served.url}/v1/chat/completions", json={
        "model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "scale": {name: value}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"scale.{name} may be at most" in error["message"] and "on this server" in error["message"]
    assert error["param"] == f"scale.{name}"
    assert fake_server.stats()["requests"] == 0


def test_a_client_may_ask_for_less_and_for_the_servers_own_value(endpoint_env, tmp_path, fake_server):
    with Served(tmp_path / "l.db", default_params={"candidates": 3}) as server:
        for candidates in (3, 2):
            fake_server.reset()
            reply = server.client().chat.completions.create(
                model="scale", messages=[{"role": "user", "content": PROBLEM}],
                extra_body={"scale": {"candidates": candidates}})
            assert reply.model_extra["scale"]["answer"]
            assert fake_server.stats()["log"][0]["body"]["n"] == candidates
        refused = httpx.post(f"{server.url}/v1/chat/completions", json={
            "model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "scale": {"candidates": 4}})
        assert refused.status_code == 400 and "at most 3" in refused.json()["error"]["message"]
