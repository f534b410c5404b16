"""Tests of the fake OpenAI-compatible server, driven by the real ``openai`` client and raw httpx."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from scale_graph import prompts
from tests.support.fake_openai import (
    FAULTS,
    FakeOpenAIConfig,
    FakeOpenAIServer,
    answer_for,
    detect_stage,
)
from tests.support.reliability import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

THINK = {"chat_template_kwargs": {"enable_thinking": True}}
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}


def schema(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": {"type": "object"}}}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# The planner prompts as SCALE sends them (the fake recognises them from these constants).
DECOMPOSE = user(prompts.PROBLEM.format(problem="what is 2+2?") + prompts.DECOMPOSE.format(max_subproblems=4))
SELECT = user(prompts.SELECT.format(count=3, candidates="Candidate 1: ...\nCandidate 2: ...\nCandidate 3: ..."))
ASSESS = user(prompts.ASSESS.format(number=1))
SOLVE = user("Solve: what is 2+2?")


@pytest.fixture
def server(fake_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The shared fake server (conftest), under the name these tests use."""
    return fake_server


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


def chat(client, messages, **kwargs):
    return client.chat.completions.create(model="scale-system1", messages=messages, **kwargs)


def field(message, name):
    return message.model_dump().get(name)


# --- stage detection ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "stage"),
    [
        ({"messages": user("anything"), "response_format": schema("decomposition")}, "decomposition"),
        ({"messages": user("difficulty"), "response_format": schema("selection")}, "selection"),
        ({"messages": user("x"), "response_format": schema("difficulty")}, "difficulty"),
        ({"messages": user('Decompose, then Respond with JSON only: {"difficulty": 0.5}'), "response_format": schema("other")}, "difficulty"),
        ({"messages": user('Compare the candidate decompositions.\nRespond with JSON only: {"choice": 1}')}, "selection"),
        ({"messages": user('Please decompose this.\nRESPOND WITH JSON ONLY: {"subproblems": []}')}, "decomposition"),
        ({"messages": [{"role": "user", "content": 'Respond with JSON only: {"subproblems"'}, {"role": "user", "content": "now solve"}]}, "solve"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 'Respond with JSON only: {"subproblems": []}'}]}]}, "decomposition"),
        ({"messages": user("What is 1+1?")}, "solve"),
    ],
)
def test_detect_stage(body, stage):
    assert detect_stage(body) == stage


# --- stages ---------------------------------------------------------------------------


def test_models_endpoint(client):
    assert [m.id for m in client.models.list()] == ["scale-system1", "scale-system2"]


def test_decomposition_json_schema_n_and_seed(server, client):
    resp = chat(client, DECOMPOSE, response_format=schema("decomposition"), n=3, seed=11)
    plans = [json.loads(c.message.content)["subproblems"] for c in resp.choices]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(len(p) == 3 for p in plans)
    assert len({tuple(p) for p in plans}) == 3
    again = chat(client, DECOMPOSE, response_format=schema("decomposition"), seed=11)
    other_seed = chat(client, DECOMPOSE, response_format=schema("decomposition"), seed=12)
    assert json.loads(again.choices[0].message.content)["subproblems"] == plans[0]
    assert json.loads(other_seed.choices[0].message.content)["subproblems"] == plans[1]  # seed 12 == seed 11 + index 1
    server.configure(subproblem_count=5)
    resp = chat(client, DECOMPOSE, response_format=schema("decomposition"))
    assert len(json.loads(resp.choices[0].message.content)["subproblems"]) == 5
    assert server.stats()["by_stage"]["decomposition"] == 4


def test_json_without_schema_is_fenced(client):
    content = chat(client, DECOMPOSE).choices[0].message.content
    match = re.fullmatch(r"```json\n(.*)\n```", content, re.S)
    assert match and len(json.loads(match.group(1))["subproblems"]) == 3


def test_selection_choice(server, client):
    assert json.loads(chat(client, SELECT, response_format=schema("selection")).choices[0].message.content) == {"choice": 1}
    server.configure(choice=3)
    assert '{"choice": 3}' in chat(client, SELECT).choices[0].message.content


def test_difficulty_cycles_and_callable(server, client):
    def difficulty(c):
        return json.loads(c.choices[0].message.content)["difficulty"]

    values = [difficulty(chat(client, ASSESS, response_format=schema("difficulty"))) for _ in range(3)]
    assert values == [0.1, 0.8, 0.1]
    server.configure(difficulties=[0.3])
    assert difficulty(chat(client, ASSESS, response_format=schema("difficulty"))) == 0.3
    server.configure(difficulties=lambda body: 0.5 if "hard" in body["messages"][-1]["content"] else 0.0)
    assert difficulty(chat(client, user("difficulty of a hard step"), response_format=schema("difficulty"))) == 0.5
    assert difficulty(chat(client, user("difficulty of an easy step"), response_format=schema("difficulty"))) == 0.0


def test_solve_without_thinking(server, client):
    for extra in ({}, NO_THINK):
        resp = chat(client, SOLVE, extra_body=extra)
        message = resp.choices[0].message
        assert message.content.endswith(f"The result is \\boxed{{{answer_for(SOLVE)}}}.")
        assert len(message.content) == 64 + 1 + len(f"The result is \\boxed{{{answer_for(SOLVE)}}}.")
        assert field(message, "reasoning") is None
        assert resp.usage.completion_tokens_details is None
    server.configure(content_bytes=0)
    assert chat(client, SOLVE).choices[0].message.content == f"The result is \\boxed{{{answer_for(SOLVE)}}}."
    assert answer_for(SOLVE) != answer_for(user("Solve: what is 3+3?"))


@pytest.mark.parametrize("reasoning_field", ["reasoning", "reasoning_content", "inline", "none"])
def test_solve_with_thinking_reasoning_fields(server, client, reasoning_field):
    server.configure(reasoning_field=reasoning_field, reasoning_bytes=1000)
    resp = chat(client, SOLVE, extra_body=THINK)
    message, final = resp.choices[0].message, f"The result is \\boxed{{{answer_for(SOLVE)}}}."
    if reasoning_field in ("reasoning", "reasoning_content"):
        assert message.content == final
        assert len(field(message, reasoning_field)) == 1000
        visible = len(final) + 1000
    elif reasoning_field == "inline":
        assert re.fullmatch(r"<think>(.{1000})</think>\n\n" + re.escape(final), message.content, re.S)
        visible = len(message.content)
    else:
        assert message.content == final and field(message, "reasoning") is None
        visible = len(final) + 1000  # hidden reasoning is still billed
    assert resp.usage.completion_tokens == visible // 4
    assert resp.usage.completion_tokens_details.reasoning_tokens == 250


def test_usage_arithmetic(server, client):
    server.configure(reasoning_bytes=30_001, content_bytes=0)
    messages = [{"role": "system", "content": "s" * 10}, {"role": "user", "content": "Solve this " + "q" * 29}]
    resp = chat(client, messages, extra_body=THINK, n=2)
    final = f"The result is \\boxed{{{answer_for(messages)}}}."
    per_choice = (len(final) + 30_001) // 4
    assert resp.usage.prompt_tokens == (10 + 40) // 4
    assert resp.usage.completion_tokens == 2 * per_choice
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.completion_tokens_details.reasoning_tokens == 2 * (30_001 // 4)
    assert chat(client, user("hi")).usage.prompt_tokens == 1  # at least one
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion" and resp.created > 0
    assert resp.model == "scale-system1" and [c.finish_reason for c in resp.choices] == ["stop", "stop"]


@pytest.mark.parametrize("budget_param", ["max_tokens", "max_completion_tokens"])
def test_thinking_budget_runs_out(server, client, budget_param):
    server.configure(reasoning_bytes=1000)
    resp = chat(client, SOLVE, extra_body=THINK, **{budget_param: 50})
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and choice.message.content == ""
    assert len(field(choice.message, "reasoning")) == 200
    assert resp.usage.completion_tokens == 50
    roomy = chat(client, SOLVE, extra_body=THINK, **{budget_param: 1000})
    assert roomy.choices[0].finish_reason == "stop" and "\\boxed" in roomy.choices[0].message.content


def test_inline_budget_leaves_unclosed_think(server, client):
    server.configure(reasoning_field="inline", reasoning_bytes=1000)
    content = chat(client, SOLVE, extra_body=THINK, max_tokens=10).choices[0].message.content
    assert content.startswith("<think>") and "</think>" not in content and len(content) == len("<think>") + 40


# --- streaming ------------------------------------------------------------------------


def test_streaming_with_usage(server, client):
    server.configure(reasoning_bytes=1000)
    stream = chat(client, SOLVE, extra_body=THINK, n=2, stream=True, stream_options={"include_usage": True})
    content, reasoning, finish, usage = ["", ""], ["", ""], [None, None], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            content[c.index] += c.delta.content or ""
            reasoning[c.index] += field(c.delta, "reasoning") or ""
            finish[c.index] = c.finish_reason or finish[c.index]
    final = f"The result is \\boxed{{{answer_for(SOLVE)}}}."
    assert content == [final, final] and [len(r) for r in reasoning] == [1000, 1000] and finish == ["stop", "stop"]
    assert usage.completion_tokens == 2 * ((len(final) + 1000) // 4)


def test_streaming_raw_sse(server):
    body = {"model": "m", "messages": SOLVE, "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- capabilities and auth ------------------------------------------------------------


def test_unsupported_features_are_400(server, client):
    server.configure(supports_json_schema=False, supports_n=False, supports_thinking_flag=False)
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, DECOMPOSE, response_format=schema("decomposition"))
    assert err.value.body["message"] == "response_format not supported"
    with pytest.raises(openai.BadRequestError):
        chat(client, DECOMPOSE, n=2)
    with pytest.raises(openai.BadRequestError):
        chat(client, SOLVE, extra_body=NO_THINK)
    assert chat(client, DECOMPOSE, n=1).choices[0].message.content.startswith("```json")
    assert [e["status"] for e in server.stats()["log"]] == [400, 400, 400, 200]


def test_api_key(server):
    server.configure(api_key="sekret")
    wrong = openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0)
    right = openai.OpenAI(base_url=server.base_url, api_key="sekret", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        chat(wrong, SOLVE)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.post(server.base_url + "/chat/completions", json={"model": "m", "messages": SOLVE}).status_code == 401
    assert "\\boxed" in chat(right, SOLVE).choices[0].message.content


def test_bad_requests(server):
    url = server.base_url + "/chat/completions"
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, json={"model": "m", "messages": []}).status_code == 400
    assert httpx.post(url, json={"model": "m", "messages": SOLVE, "n": 0}).status_code == 400
    assert httpx.get(url).status_code == 405
    assert httpx.get(server.base_url + "/nowhere").status_code == 404
    assert server.stats()["requests"] == 1  # only the parsed request with n=0 is counted


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", openai.InternalServerError),
        ("502", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("429", openai.RateLimitError),
        ("400", openai.BadRequestError),
        ("refuse", openai.APIConnectionError),
        ("drop", openai.APIConnectionError),
    ],
)
def test_transport_and_http_faults(server, client, fault, error):
    server.inject(fault)
    with pytest.raises(error) as err:
        chat(client, SOLVE)
    if isinstance(err.value, openai.APIStatusError):
        assert err.value.status_code == int(fault)
    assert "\\boxed" in chat(client, SOLVE).choices[0].message.content  # one-shot
    stats = server.stats()
    assert stats["faults_served"] == 1 and stats["pending_faults"] == []
    assert stats["log"][0]["fault"] == fault
    assert stats["log"][0]["status"] == {"refuse": None, "drop": 200}.get(fault, int(fault) if fault.isdigit() else None)


def test_429_retry_after_and_client_retries(server):
    server.inject("429")
    resp = httpx.post(server.base_url + "/chat/completions", json={"model": "m", "messages": SOLVE})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "0"
    assert resp.json()["error"]["message"]
    server.inject("503", times=2)
    retrying = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2)
    assert "\\boxed" in chat(retrying, SOLVE).choices[0].message.content
    assert [e["status"] for e in server.stats()["log"][1:]] == [503, 503, 200]


def test_drop_raw(server):
    server.inject("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(server.base_url + "/chat/completions", json={"model": "m", "messages": SOLVE})
    server.inject("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", server.base_url + "/chat/completions", json={"model": "m", "messages": SOLVE, "stream": True}) as r:
            list(r.iter_lines())


def test_timeout_fault(server):
    server.configure(hang_seconds=10)
    server.inject("timeout")
    impatient = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(impatient, SOLVE)
    assert time.monotonic() - start < 5  # the client gave up long before the server closed
    assert server.stats()["log"][0]["status"] is None
    server.configure(hang_seconds=0.5)
    server.inject("timeout")
    patient = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIConnectionError):  # closed after hang_seconds without an answer
        chat(patient, SOLVE)


def test_hanging_request_does_not_block_shutdown():
    srv = FakeOpenAIServer()
    srv.start()
    srv.inject("timeout")
    client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        chat(client, SOLVE)
    start = time.monotonic()
    srv.close()
    assert time.monotonic() - start < 5


def test_content_faults(server, client):
    final = f"The result is \\boxed{{{answer_for(SOLVE)}}}."

    server.inject("empty")
    resp = chat(client, SOLVE, extra_body=THINK)
    assert resp.choices[0].message.content == "" and field(resp.choices[0].message, "reasoning") is None
    assert resp.choices[0].finish_reason == "stop"

    server.inject("reasoning_only")
    message = chat(client, SOLVE, extra_body=NO_THINK).choices[0].message
    assert message.content == "" and field(message, "reasoning").endswith(final)

    server.inject("reasoning_only")
    message = chat(client, SOLVE, extra_body=THINK).choices[0].message
    assert message.content == "" and len(field(message, "reasoning")) == 200 + 1 + len(final)

    server.inject("length")
    choice = chat(client, SOLVE, extra_body=THINK).choices[0]
    assert choice.finish_reason == "length" and choice.message.content == "" and len(field(choice.message, "reasoning")) == 200

    server.inject("no_boxed")
    content = chat(client, SOLVE).choices[0].message.content
    assert "\\boxed" not in content and content.endswith(f"The result is {answer_for(SOLVE)}.")

    server.inject("malformed_json")
    content = chat(client, DECOMPOSE, response_format=schema("decomposition")).choices[0].message.content
    assert content.startswith('{"subproblems": [')
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)

    server.inject("zero_subproblems")
    assert json.loads(chat(client, DECOMPOSE, response_format=schema("decomposition")).choices[0].message.content) == {"subproblems": []}

    server.inject("many_subproblems")
    plan = json.loads(chat(client, DECOMPOSE, response_format=schema("decomposition")).choices[0].message.content)
    assert len(plan["subproblems"]) == 200

    server.inject("difficulty_out_of_range")
    assert json.loads(chat(client, ASSESS, response_format=schema("difficulty")).choices[0].message.content) == {"difficulty": 7.5}

    server.inject("no_difficulty")
    assert chat(client, ASSESS).choices[0].message.content == "I cannot tell."

    stats = server.stats()
    assert stats["faults_served"] == 10 and stats["pending_faults"] == []


def test_fault_fifo_and_stage_matching(server, client):
    server.inject("500", stage="difficulty")
    server.inject("no_boxed")  # applies only to solve requests
    server.inject("502", times=2)
    with pytest.raises(openai.InternalServerError) as err:
        chat(client, DECOMPOSE)  # the 500 is reserved for difficulty, no_boxed for solve: the 502 matches
    assert err.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as err:
        chat(client, ASSESS)  # oldest matching entry wins
    assert err.value.status_code == 500
    assert "\\boxed" not in chat(client, SOLVE).choices[0].message.content
    with pytest.raises(openai.InternalServerError):
        chat(client, SELECT)
    assert chat(client, SELECT).choices[0].message.content
    assert server.stats()["faults_served"] == 4


def test_inject_validation(server):
    with pytest.raises(ValueError):
        server.inject("explode")
    with pytest.raises(ValueError):
        server.inject("500", times=0)
    with pytest.raises(ValueError):
        server.inject("no_boxed", stage="decomposition")
    with pytest.raises(ValueError):
        server.inject("500", stage="planning")
    assert set(FAULTS) >= {"refuse", "timeout", "drop", "empty", "reasoning_only", "malformed_json", "length"}


def test_reset_and_config_validation(server, client):
    chat(client, ASSESS)
    server.inject("500")
    server.reset()
    assert server.stats() == {
        "requests": 0,
        "by_stage": {"decomposition": 0, "selection": 0, "difficulty": 0, "solve": 0},
        "faults_served": 0,
        "max_in_flight": 0,
        "pending_faults": [],
        "log": [],
    }
    assert json.loads(chat(client, ASSESS, response_format=schema("difficulty")).choices[0].message.content) == {"difficulty": 0.1}
    entry = server.stats()["log"][0]
    assert entry["stage"] == "difficulty" and entry["model"] == "scale-system1" and entry["status"] == 200
    assert entry["body"]["response_format"]["json_schema"]["name"] == "difficulty"
    with pytest.raises(ValueError):
        server.configure(reasoning_field="thoughts")
    with pytest.raises(ValueError):
        server.configure(temperature=0.5)
    with pytest.raises(ValueError):
        FakeOpenAIConfig(difficulties=[])


# --- lifecycle, HTTP, concurrency ------------------------------------------------------


def test_stop_and_start_on_same_port(server, client):
    port = server.port
    assert chat(client, SOLVE).choices[0].message.content
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with pytest.raises(openai.APIConnectionError):
        chat(client, SOLVE)
    server.start()
    assert server.running and server.port == port
    assert chat(client, SOLVE).choices[0].message.content
    assert server.stats()["requests"] == 2


def test_keep_alive_serves_several_requests_on_one_connection(server):
    body = json.dumps({"model": "m", "messages": SOLVE}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(request)
            assert reader.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert headers["connection"] == "keep-alive"
            assert "\\boxed" in json.loads(reader.read(int(headers["content-length"])))["choices"][0]["message"]["content"]
    assert server.stats()["requests"] == 3


def test_unparseable_http_is_answered_400_and_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        response = sock.makefile("rb").read()
    assert response.startswith(b"HTTP/1.1 400") and b"Content-Length" in response


def test_128_concurrent_requests_share_the_latency(server):
    server.configure(latency=0.2)

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=10)
        async with client:
            return await asyncio.gather(
                *(client.chat.completions.create(model="m", messages=user(f"Solve {i}")) for i in range(128))
            )

    start = time.monotonic()
    responses = asyncio.run(run())
    elapsed = time.monotonic() - start
    assert len(responses) == 128 and all("\\boxed" in r.choices[0].message.content for r in responses)
    assert elapsed < 3, elapsed
    assert server.stats()["requests"] == 128


# --- subprocess mode ------------------------------------------------------------------


def test_subprocess_mode_and_control_endpoints(tmp_path):
    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--port-file", str(port_file),
        "--latency", "0.01", "--difficulties", "0.3,0.9", "--no-supports-n", "--reasoning-field", "inline",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) as proc:
        _drive_subprocess(proc, port_file)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def _drive_subprocess(proc: subprocess.Popen, port_file) -> None:
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"READY (http://127\.0\.0\.1:(\d+)/v1)\n", line)
        assert match, line
        base_url, port = match.group(1), match.group(2)
        assert port_file.read_text().strip() == port
        root = base_url.removesuffix("/v1")
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)

        config = httpx.get(root + "/_config").json()
        assert config["difficulties"] == [0.3, 0.9] and config["supports_n"] is False and config["latency"] == 0.01
        with pytest.raises(openai.BadRequestError):
            chat(client, DECOMPOSE, n=2)
        assert "<think>" in chat(client, SOLVE, extra_body=THINK).choices[0].message.content

        assert httpx.post(root + "/_inject", json={"fault": "503", "times": 1, "stage": "selection"}).json() == {
            "pending_faults": [{"fault": "503", "times": 1, "stage": "selection"}]
        }
        assert httpx.post(root + "/_inject", json={"fault": "nope"}).status_code == 400
        assert chat(client, SOLVE).choices[0].message.content
        with pytest.raises(openai.InternalServerError):
            chat(client, SELECT)

        assert httpx.post(root + "/_config", json={"subproblem_count": 2}).json()["subproblem_count"] == 2
        assert httpx.post(root + "/_config", json={"subproblem_count": "two"}).status_code == 400
        assert httpx.post(root + "/_config", json={"colour": "red"}).status_code == 400
        plan = json.loads(chat(client, DECOMPOSE, response_format=schema("decomposition")).choices[0].message.content)
        assert len(plan["subproblems"]) == 2

        stats = httpx.get(root + "/_stats").json()
        assert stats["requests"] == 5 and stats["faults_served"] == 1
        assert stats["by_stage"] == {"decomposition": 2, "selection": 1, "difficulty": 0, "solve": 2}
        assert stats["log"][0]["body"]["n"] == 2 and stats["log"][0]["status"] == 400

        assert httpx.post(root + "/_reset").json() == {"ok": True}
        assert httpx.get(root + "/_stats").json()["requests"] == 0
    except BaseException:
        proc.kill()
        raise


def test_context_length_and_echo_faults(server):
    server.inject("context_length")
    server.inject("echo_auth_500")
    url = f"{server.base_url}/chat/completions"
    body = {"model": "m", "messages": SOLVE, "max_tokens": 10}
    first = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-abc-123456"})
    assert first.status_code == 400
    assert first.json()["error"]["message"].startswith("This model's maximum context length is 8192 tokens. "
                                                       "However, you requested 9202 tokens")
    second = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-abc-123456"})
    assert second.status_code == 500 and "Authorization: Bearer sk-abc-123456" in second.json()["error"]["message"]


def test_malformed_200_faults(server):
    url = f"{server.base_url}/chat/completions"
    body = {"model": "m", "messages": SOLVE}
    server.inject("no_choices")
    assert httpx.post(url, json=body).json()["choices"] == []
    server.inject("no_message")
    assert all("message" not in c for c in httpx.post(url, json=body).json()["choices"])
    server.inject("not_json")
    reply = httpx.post(url, json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "text/html"
    with pytest.raises(ValueError):
        reply.json()
    assert [e["fault"] for e in server.stats()["log"]] == ["no_choices", "no_message", "not_json"]


def test_max_in_flight_statistic(server):
    server.configure(latency=0.2)

    async def five() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            await asyncio.gather(*(http.post(f"{server.base_url}/chat/completions",
                                             json={"model": "m", "messages": SOLVE}) for _ in range(5)))

    asyncio.run(five())
    assert server.stats()["max_in_flight"] == 5
    server.reset()
    assert server.stats()["max_in_flight"] == 0
