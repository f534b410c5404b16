"""`scale serve` honours an OpenAI request's ``max_completion_tokens`` (the per-problem budget) and
``reasoning_effort`` (documented presets of τ and budget, scale_graph.efforts)."""

from __future__ import annotations

import openai
import pytest

from scale_graph.efforts import EFFORTS
from tests.system.test_serve import PROBLEM, THREAD_HEADER, Served, show


@pytest.fixture
def served(endpoint_env, tmp_path, fake_server):
    fake_server.configure(reasoning_bytes=40_000)  # thinking wants 10,000 tokens: far beyond the budget
    with Served(tmp_path / "serve.db") as server:
        yield server


def test_max_completion_tokens_bounds_the_usage_of_every_inner_call_together(served):
    raw = served.client().chat.completions.with_raw_response.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], max_completion_tokens=3000,
        extra_body={"scale": {"threshold": 0.0}})  # System 2 for every sub-problem: it would spend 30,000
    reply = raw.parse()
    assert 0 < reply.usage.completion_tokens <= 3000
    assert reply.usage.completion_tokens == reply.model_extra["scale"]["usage"]["total"]["completion_tokens"]
    assert reply.model_extra["scale"]["answer"] is not None
    shown = show(served.db, raw.headers[THREAD_HEADER])
    assert shown["params"]["budget"] == 3000
    assert sum(call["completion_tokens"] for call in shown["calls"]) <= 3000  # the journal: every reply the servers sent


def test_reasoning_effort_low_runs_with_its_preset(served):
    raw = served.client().chat.completions.with_raw_response.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], reasoning_effort="low")
    shown = show(served.db, raw.headers[THREAD_HEADER])
    assert {key: shown["params"][key] for key in EFFORTS["low"]} == EFFORTS["low"]
    assert raw.parse().usage.completion_tokens <= EFFORTS["low"]["budget"]


def test_reasoning_effort_none_solves_everything_on_system1(served, fake_server):
    raw = served.client().chat.completions.with_raw_response.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], reasoning_effort="none")
    shown = show(served.db, raw.headers[THREAD_HEADER])
    assert {row["system"] for row in shown["subproblems"]} == {1}


def test_an_unknown_effort_or_a_bad_budget_is_a_400(served):
    for extra in ({"reasoning_effort": "max"}, {"max_completion_tokens": 0}):
        with pytest.raises(openai.BadRequestError) as failed:
            served.client().chat.completions.create(model="scale", messages=[{"role": "user", "content": PROBLEM}],
                                                     extra_body=extra)
        assert next(iter(extra)) in str(failed.value)


def test_runs_show_tells_the_budget_and_the_sub_problems_it_routed(served):
    from typer.testing import CliRunner

    from scale_graph.cli import app

    raw = served.client().chat.completions.with_raw_response.create(
        model="scale", messages=[{"role": "user", "content": PROBLEM}], reasoning_effort="low",
        extra_body={"scale": {"threshold": 0.0, "budget": 1500}})  # System 2 wanted everywhere, no room for it
    result = CliRunner().invoke(app, ["runs", "show", raw.headers[THREAD_HEADER], "--db", str(served.db)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "budget: 1,500 tokens per problem (τ 0.0)" in result.output
    assert "routed by budget" in result.output
