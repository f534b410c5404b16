"""The paper's protocol by default, the same rules for every method (issue 19, item 2)."""

from __future__ import annotations

import asyncio

import pytest

from scale_graph import build_graph, prompts
from scale_graph.context import Context
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.methods import METHODS, Setup, solve
from scale_graph.servers.chat import ChatReply, Choice
from tests.support.chat import default_respond
from tests.support.run_context import context

PROBLEM = Problem("p1", "Find x.", "42")


def run_scale(ctx: Context) -> dict:
    return build_graph().invoke({"problem": "What is a+b?"}, context=ctx)


def run_baseline(method: str, ctx: Context):
    return asyncio.run(solve(method, PROBLEM, 0, Setup("r", ctx)))


def test_the_documented_defaults_are_the_papers():
    ctx = Context()
    assert ctx.system_message == ""  # no method carries a system message
    assert ctx.system2_max_tokens == 32_768  # the authors' budget for System 2, CoT and each majority sample
    assert (ctx.system1_temperature, ctx.system1_top_p) == (0.6, 0.95) == (ctx.system2_temperature, ctx.system2_top_p)
    assert ctx.votes == 8 and ctx.sampling == "paper"


def test_the_authors_sampling_is_one_switch_and_an_explicit_value_still_wins():
    assert (Context(sampling="authors").system1_temperature, Context(sampling="authors").system1_top_p) == (0.7, 0.8)
    assert Context(sampling="authors", system1_temperature=0.3).system1_temperature == 0.3
    assert Context(sampling="authors").system2_temperature == 0.6  # thinking sampling: the same in both sources


@pytest.mark.parametrize("system_message", ["", "Be brief."])
def test_every_method_sends_the_same_system_message(scripted_endpoints, system_message):
    """SCALE sent prompts.SYSTEM on every call, the baselines none."""
    fake = scripted_endpoints(lambda call: default_respond(call) if call.key.split("/")[0] in ("decompose", "select", "assess", "solve")
                    else ChatReply(choices=[Choice("\\boxed{42}", "", "stop")] * call.n))
    run_scale(context(system_message=system_message))
    for method in ("cot", "majority", "inftythink"):
        run_baseline(method, context(system_message=system_message, votes=2))
    systems = {tuple(text for role, text in call.messages if role == "system") for call in fake.calls}
    assert systems == ({()} if not system_message else {(system_message,)})
    assert prompts.SYSTEM not in str([call.messages for call in fake.calls])


def test_a_cut_system1_solve_gets_the_same_forced_answer_as_system2(scripted_endpoints):
    """A System 1 call cut at its budget got no forced answer."""
    def respond(call):
        if call.key.startswith("assess"):
            return '{"difficulty": 0.0}'  # every sub-problem to System 1
        if call.key.startswith("solve"):
            return ChatReply(choices=[Choice("We compute a and then b and", "", "length")], completion_tokens=64)
        if call.key.startswith("force"):
            return ChatReply(choices=[Choice("so the result is \\boxed{7}.", "", "stop")], completion_tokens=8)
        return default_respond(call)

    fake = scripted_endpoints(respond)
    out = run_scale(context())
    forced = fake.stage_calls("force/")
    assert len(forced) == 3 and all(call.system == 1 and call.continue_final for call in forced)
    assert "We compute a and then b and" in forced[0].messages[-1][1]
    assert out["answer"] == "7" and all(step["forced_answer"] and step["ended_by"] == "forced_answer"
                                        for step in out["steps"])
    assert any("System 1 was cut before its boxed result on sub-problem 1" in w for w in out["warnings"])


def test_without_forcing_a_cut_system2_solve_is_labelled_system2(scripted_endpoints):
    """With --no-force-answer a cut System 2 solve was labelled 'System 1 answered … only in the reasoning field'."""
    def respond(call):
        if call.key.startswith("solve"):
            return ChatReply(choices=[Choice("", "thinking \\boxed{5} so far", "length")], completion_tokens=64)
        return default_respond(call)

    scripted_endpoints(respond)
    out = run_scale(context(force_answer=False))
    messages = [w for w in out["warnings"] if "only in the reasoning field" in w]
    assert messages and all(w.startswith("solve: System 2 answered") for w in messages)


def empty_first(times: int):
    """Every thinking call returns nothing at all ``times`` times for each key, then an answer."""
    seen: dict[str, int] = {}

    def respond(call):
        if call.key.split("/")[0] in ("decompose", "select", "assess"):
            return default_respond(call)
        stem = call.key.rsplit("/", 1)[0] if call.key.startswith("solve") else call.key
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] <= times:
            return ChatReply(choices=[Choice("", "", "stop")] * call.n)
        return ChatReply(choices=[Choice("\\boxed{42}", "", "stop")] * call.n)

    return respond


@pytest.mark.parametrize("empty, calls", [(1, 2), (5, 3)])
def test_an_empty_reply_is_retried_the_same_number_of_times_by_every_method(scripted_endpoints, empty, calls):
    """SCALE's solve retried an empty reply up to 3 calls; the baselines made one."""
    fake = scripted_endpoints(empty_first(empty))
    run_scale(context())
    scale_calls = len([c for c in fake.calls if c.key.startswith("solve/0/")])
    fake.calls.clear()
    run_baseline("cot", context())
    cot_calls = len(fake.calls)
    fake.calls.clear()
    run_baseline("inftythink", context(inftythink_max_iterations=1))
    infty_calls = len(fake.calls)
    assert scale_calls == cot_calls == infty_calls == calls


def test_majority_remakes_only_the_samples_that_came_back_empty(scripted_endpoints):
    def respond(call):
        if call.n > 1:
            return ChatReply(choices=[Choice("\\boxed{1}", "", "stop"), Choice("", "", "stop"), Choice("\\boxed{2}", "", "stop")])
        return ChatReply(choices=[Choice("\\boxed{2}", "", "stop")])

    fake = scripted_endpoints(respond)
    outcome = run_baseline("majority", context(votes=3))
    assert [c.key for c in fake.calls] == ["majority", "majority/1"] and outcome.answer == "2"


def test_majority_is_one_vote_per_problem_and_the_repeated_variant_keeps_its_name():
    """-m majority -n 8 made 8 votes of 8 samples (64 generations per problem)."""
    from scale_graph.evaluation.methods import problem_samples

    assert problem_samples("majority", 8) == 1
    assert problem_samples("majority-repeated", 8) == 8 and problem_samples("cot", 8) == 8
    assert METHODS["majority-repeated"] is METHODS["majority"]


def test_thinking_calls_carry_the_native_budget_minus_the_answer_reserve(scripted_endpoints):
    fake = scripted_endpoints(lambda call: ChatReply(choices=[Choice("\\boxed{42}", "", "stop")] * call.n))
    run_baseline("cot", context())
    run_baseline("cot", context(system2_max_tokens=192))  # the local profile's budget: half kept for the answer
    run_baseline("cot", context(thinking_budget=False))
    assert [(c.max_tokens, c.thinking_budget) for c in fake.calls] == [(32_768, 31_744), (192, 96), (32_768, None)]
