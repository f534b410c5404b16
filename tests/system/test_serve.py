"""`scale serve`: the OpenAI-compatible SCALE endpoint, driven by the official openai client
against a real uvicorn server whose inner SCALE calls go to the fake OpenAI server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
from typer.testing import CliRunner

from scale_graph.cli import app as cli_app
from scale_graph.cli import serve_command
from scale_graph.serve import (
    MAX_BODY_BYTES,
    THREAD_HEADER,
    ServeLimits,
    create_app,
    server_for,
)
from tests.support.ports import free_port

PROBLEM = "What is 1+1?"




class Served:
    """``scale serve``'s server (``server_for``: its limits and shutdown order) running ``create_app``
    in a background thread."""

    def __init__(self, db, limits: ServeLimits | None = None, **kwargs) -> None:
        self.db = db
        self.port = free_port()
        self.server = server_for(create_app(db, **kwargs), "127.0.0.1", self.port, limits,
                                 log_level="warning", lifespan="on")
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


# ---- hostile clients (issue 20) ------------------------------------------------------------
def connect(server: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when it closed (inf: still open)."""
    began, received = time.monotonic(), b""
    sock.settimeout(0.1)
    while time.monotonic() - began < within:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received, time.monotonic() - began
        if not data:
            return received, time.monotonic() - began
        received += data
    return received, float("inf")


def test_a_chunked_body_is_refused_at_the_limit_while_it_arrives(served, fake_server):
    """A chunked body has no Content-Length: the limit must hold while it is read, not after."""
    sock = connect(served)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))  # 1 MiB of JSON whitespace per chunk
    sent, answer = 0, b""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < 64 * MAX_BODY_BYTES:  # never the closing chunk: a whole-body read never answers
            readable, _, _ = __import__("select").select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(chunk)
            sent += 1 << 20
    answer, closed = read_until_closed(sock, 10)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), (sent, answer[:300])
    assert b"larger than 4,194,304 bytes" in body and json.loads(body)["error"]["code"] == "body_too_large"
    assert b"connection: close" in head.lower() and closed < 10  # the rest of the body is never read
    assert sent < 16 * MAX_BODY_BYTES  # answered long before the client stopped sending
    assert fake_server.stats()["requests"] == 0


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"model": "scale", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
def test_deeply_nested_json_is_a_400(served, body):
    response = httpx.post(f"{served.url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "nested too deeply" in error["message"] and error["type"] == "invalid_request_error"


def test_a_nested_value_is_named_not_echoed(served):
    deep = json.loads("[" * 500 + "]" * 500)
    response = httpx.post(f"{served.url}/v1/chat/completions", json={
        "model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "scale": {"threshold": deep}})
    assert response.status_code == 400 and "scale.threshold must be a number, got a list" in response.text


def test_a_body_that_trickles_in_is_a_408(served, monkeypatch):
    from scale_graph.serve import checks

    monkeypatch.setattr(checks, "BODY_TIMEOUT_S", 1.0)
    sock = connect(served)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
    answer, closed = read_until_closed(sock, 10)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"body took longer than 1 s" in answer and closed < 5, answer


def test_slow_header_connections_are_closed_at_the_header_deadline(endpoint_env, tmp_path, caplog):
    with Served(tmp_path / "slow.db", ServeLimits(header_timeout_s=1.0)) as server:
        idle, slow = connect(server), connect(server)  # idle sends nothing; slow one byte every 0.2 s
        header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100
        began = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in header:
                slow.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - began > 5:
                    break
        slow_answer, _ = read_until_closed(slow, 5)
        idle_answer, _ = read_until_closed(idle, 5)
        closed = time.monotonic() - began
        for sock in (idle, slow):
            sock.close()
        for answer in (slow_answer, idle_answer):
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer, answer
        assert closed < 5, closed
        # the server goes on serving, and a keep-alive connection gets the deadline again after each answer
        sock = connect(server)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the next request's headers never end
        answer, closed_after = read_until_closed(sock, 5)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer and closed_after < 3, answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_connections_over_the_cap_are_refused_at_once(endpoint_env, tmp_path):
    with Served(tmp_path / "cap.db", ServeLimits(max_connections=8)) as server:
        socks = [connect(server) for _ in range(12)]
        time.sleep(0.3)
        refused = []
        for sock in socks:
            answer, closed = read_until_closed(sock, 0.3)
            if closed != float("inf"):
                refused.append(answer)
        assert len(refused) == 4, refused
        assert all(a.startswith(b"HTTP/1.1 503") and b"too many connections (at most 8)" in a for a in refused)
        for sock in socks:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # room again once they are gone


def test_headers_over_the_size_bound_are_refused(served):
    """Headers still incomplete past max_header_bytes are refused: a client cannot grow them without end."""
    sock = connect(served)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(64):  # 256 KiB of one header, in pieces
            sock.sendall(b"a" * 4096)
            time.sleep(0.005)
    answer, closed = read_until_closed(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and closed < 5, answer[:200]


@pytest.mark.timeout(60)  # an accepted empty key would start serving (open) and never return
def test_an_empty_api_key_is_refused_at_start(endpoint_env, tmp_path):
    import typer

    from scale_graph.settings import ConfigError

    for key in ("", "  "):
        with pytest.raises(ConfigError, match="API key is empty"):
            create_app(tmp_path / "e.db", api_key=key)
    app = typer.Typer()
    app.command()(serve_command)
    for args, env in ((["--api-key", ""], {}), ([], {"SCALE_SERVE_API_KEY": ""})):  # an empty secret is no "no key"
        result = CliRunner().invoke(app, ["--db", str(tmp_path / "s.db"), "--port", str(free_port()), *args], env=env)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [result.output.strip()] and "API key is empty" in result.output


def _post_in_thread(url: str, body: dict) -> tuple[threading.Thread, dict]:
    """POST in a background thread; the outcome lands in the returned dict (status, headers, text)."""
    outcome: dict = {}

    def post() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
            outcome["headers"] = response.headers
            outcome["lines"] = []
            for line in response.iter_lines():
                outcome["lines"].append(line)
            outcome["status"] = response.status_code
        outcome["text"] = "\n".join(outcome["lines"])

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(condition, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def check_stopped_answers(plain: dict, streamed: dict) -> tuple[str, str]:
    """The documented shutdown answers: a 503 JSON naming the thread, and an error event on the stream."""
    assert plain["status"] == 503, plain
    thread_id = plain["headers"][THREAD_HEADER]
    error = json.loads(plain["text"])["error"]
    assert error["thread_id"] == thread_id and error["code"] == "shutting_down"
    assert f"scale runs resume {thread_id}" in error["message"]
    assert streamed["status"] == 200
    stream_id = streamed["headers"][THREAD_HEADER]
    events = [line.removeprefix("data: ") for line in streamed["lines"] if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    last = json.loads(events[-2])["error"]
    assert last["thread_id"] == stream_id and last["code"] == "shutting_down", last
    return thread_id, stream_id


def test_shutdown_answers_runs_in_flight_after_the_grace_period(endpoint_env, tmp_path, fake_server):
    fake_server.configure(latency=0.2, hang_seconds=120)
    fake_server.inject("timeout", times=2, stage="decomposition")  # two runs that outlast the grace period
    body = {"model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "scale": {"candidates": 1}}
    server = Served(tmp_path / "stop.db", ServeLimits(shutdown_grace_s=4.0)).__enter__()
    try:
        plain_thread, plain = _post_in_thread(server.url, body)
        stream_thread, streamed = _post_in_thread(server.url, {**body, "stream": True})
        wait_for(lambda: fake_server.stats()["requests"] >= 2)
        quick_thread, quick = _post_in_thread(server.url, body)  # finishes within the grace period
        wait_for(lambda: httpx.get(f"{server.url}/health").json()["runs_in_flight"] == 3)
        began = time.monotonic()
        server.server.should_exit = True  # what SIGTERM sets
        for thread in (plain_thread, stream_thread, quick_thread):
            thread.join(30)
        stopped = time.monotonic() - began
    finally:
        server.__exit__()
    assert not server.thread.is_alive()
    assert quick["status"] == 200 and json.loads(quick["text"])["scale"]["answer"], quick
    assert 3.5 < stopped < 15, stopped
    for thread_id in check_stopped_answers(plain, streamed):
        assert show(server.db, thread_id)["status"] != "done"  # stopped at its last checkpoint, resumable
    fake_server.reset()
    result = CliRunner().invoke(cli_app, ["runs", "resume", plain["headers"][THREAD_HEADER], "--json",
                                          "--db", str(server.db)])
    assert result.exit_code == 0 and json.loads(result.stdout)["answer"], result.output


def test_sigterm_answers_runs_in_flight(endpoint_env, tmp_path, fake_server):
    """`scale serve`'s run_server under a real SIGTERM: every client in flight gets its answer."""
    fake_server.configure(hang_seconds=120)
    fake_server.inject("timeout", times=2, stage="decomposition")
    port, db = free_port(), tmp_path / "term.db"
    code = ("import sys; from scale_graph.serve import ServeLimits, create_app, run_server; "
            "run_server(create_app(sys.argv[1]), '127.0.0.1', int(sys.argv[2]), ServeLimits(shutdown_grace_s=1))")
    process = subprocess.Popen([sys.executable, "-c", code, str(db), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert process.poll() is None
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/health").status_code == 200
            return False

        wait_for(up, 60)
        body = {"model": "scale", "messages": [{"role": "user", "content": PROBLEM}], "scale": {"candidates": 1}}
        plain_thread, plain = _post_in_thread(url, body)
        stream_thread, streamed = _post_in_thread(url, {**body, "stream": True})
        wait_for(lambda: fake_server.stats()["requests"] >= 2)
        process.send_signal(signal.SIGTERM)
        plain_thread.join(30)
        stream_thread.join(30)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
    check_stopped_answers(plain, streamed)
    assert "Traceback" not in output and "Exception" not in output, output
    assert "stopped 2 run(s) still in flight after the 1 s grace period" in output, output


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_flood_neither_stops_the_server_nor_floods_the_log(endpoint_env, tmp_path, loop):
    """With 256 file descriptors, 600 connections at once: the cap (half the descriptors) refuses
    the excess with a 503, the log stays a few lines (before: 19 MB of accept() tracebacks in 5 s on
    asyncio's loop, which a plain `pip install scale-graph[serve]` runs), and the server serves on."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    port, log = free_port(), tmp_path / "flood.log"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
            "from scale_graph.serve import create_app, server_for; "
            "server_for(create_app(sys.argv[1]), '127.0.0.1', int(sys.argv[2]), loop=sys.argv[3], log_level='info').run()")
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "f.db"), str(port), loop],
                                   stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    socks = []
    try:
        def up() -> bool:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/health").status_code == 200
            return False

        wait_for(up, 60)
        for _ in range(600):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        time.sleep(3)
        refused = 0
        for sock in socks:
            with contextlib.suppress(OSError):
                refused += sock.recv(64).startswith(b"HTTP/1.1 503")
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503  # answered, even at the cap
        for sock in socks:
            sock.close()
        time.sleep(0.5)
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
    finally:
        for sock in socks:
            sock.close()
        process.terminate()
        process.wait(30)
    text = log.read_text()
    assert refused >= 600 - 128, refused
    assert text.count("Traceback") <= 1 and len(text) < 8192, text[-3000:]  # at most one per 10 s
    assert "connection(s) over the connection cap" in text


def test_a_websocket_upgrade_stays_plain_http(served):
    """No websocket routes: an upgrade request is answered as HTTP, under the same limits."""
    response = httpx.get(f"{served.url}/health", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                          "Sec-WebSocket-Version": "13"})
    assert response.status_code == 200 and response.json()["status"] == "ok"
