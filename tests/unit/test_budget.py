"""The per-problem token budget (scale_graph.budget): the clamp, SCALE's plan, the baselines' rule,
"budget reached", and that a run without a budget sends exactly what it sent before."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from scale_graph import budget, build_graph, efforts
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.methods import Setup, solve
from scale_graph.nodes.route import route
from scale_graph.progress import progress_line
from scale_graph.servers.chat import ChatCall, ChatReply, Choice
from tests.support.chat import ScriptedSystems, default_respond
from tests.support.run_context import context

PROBLEM = Problem("p1", "Find x.", "33")


def modelled(thinking_tokens: int = 3000, answer_tokens: int = 40):
    """A model that wants ``thinking_tokens`` of reasoning (thinking calls) and ``answer_tokens`` of
    text per choice, honouring max_tokens as a server does: cut there, finish_reason "length"."""

    def respond(call: ChatCall) -> ChatReply:
        wanted = answer_tokens + (thinking_tokens if call.thinking else 0)
        text = default_respond(call) if not call.key.startswith(("cot", "majority", "reason", "force")) else "\\boxed{33}"
        if call.key.startswith("summary"):
            text = "- summary so far"
        cut = wanted > call.max_tokens
        choice = Choice("" if cut else text, "thinking " * 10 if call.thinking else "", "length" if cut else "stop")
        return ChatReply(choices=[choice] * call.n, prompt_tokens=10, completion_tokens=min(wanted, call.max_tokens) * call.n)

    return respond


def completion_tokens(fake) -> int:
    return sum(modelled_tokens(call) for call in fake.calls)


def modelled_tokens(call: ChatCall, thinking_tokens: int = 3000, answer_tokens: int = 40) -> int:
    return min(answer_tokens + (thinking_tokens if call.thinking else 0), call.max_tokens) * call.n


def run_scale(chat: ScriptedSystems, **options):
    return build_graph(chat=chat).invoke({"problem": "What is a+b?"}, context=context(**options))


# ---- the clamp -------------------------------------------------------------------------------
def call(**fields) -> ChatCall:
    base = {"key": "k", "system": 2, "messages": [("user", "x")], "thinking": True, "max_tokens": 16384,
            "temperature": 0.6}
    return ChatCall(**{**base, **fields})


def test_a_thinking_call_gets_what_is_left_minus_the_answer_reserve():
    meter = budget.Meter(2000, budget.ANSWER_RESERVE, spent=500)
    admitted = meter.admit(call())
    assert admitted.max_tokens == 1500 - budget.ANSWER_RESERVE
    assert meter.left() == 2000 - 500 - admitted.max_tokens  # held while in flight


def test_a_call_below_what_is_left_is_sent_unchanged():
    meter = budget.Meter(100_000, budget.ANSWER_RESERVE)
    assert meter.admit(call(max_tokens=4096)) == call(max_tokens=4096)


def test_choices_share_the_room_and_are_fewer_when_each_could_not_get_its_minimum():
    meter = budget.Meter(6000, budget.ANSWER_RESERVE)
    admitted = meter.admit(call(n=8, max_tokens=6000))
    assert admitted.n == 4  # 6000 // (1024 + 256)
    assert admitted.max_tokens == 6000 // 4 - budget.ANSWER_RESERVE
    assert admitted.max_tokens * admitted.n + admitted.n * budget.ANSWER_RESERVE <= 6000
    assert any("asked 8 choices, 4 fit" in note for note in meter.notes)


def test_concurrent_calls_never_hold_more_than_is_left():
    meter = budget.Meter(1000, 0)
    first = meter.admit(call(thinking=False, max_tokens=800))
    second = meter.admit(call(thinking=False, max_tokens=800))
    assert first.max_tokens + second.max_tokens <= 1000
    meter.settle(first, ChatReply([Choice("a", "", "stop")], completion_tokens=100))
    assert meter.left() == 1000 - 100 - second.max_tokens


def test_nothing_left_means_no_request_and_the_budget_reached():
    meter = budget.Meter(1000, budget.ANSWER_RESERVE, spent=1000)
    sent, reply = budget.serve(meter, call())
    assert sent is None and reply.choices[0].finish_reason == "length" and reply.completion_tokens == 0
    assert meter.reached and any(note.startswith(budget.REACHED) for note in meter.notes)


def test_a_native_thinking_budget_shrinks_with_max_tokens_and_keeps_the_answers_room():
    wide = dataclasses.replace(call(), max_tokens=32_768, thinking_budget=31_744)  # 1,024 kept for the answer
    admitted = budget.Meter(2000, 0).admit(wide)
    assert admitted.max_tokens == 2000
    assert admitted.thinking_budget == 1000  # the answer's room, at most half the call, still follows the thinking


def test_without_a_budget_the_requests_are_the_ones_made_before(scripted):
    fake = scripted()
    run_scale(fake)
    # what every call asks without a budget: planner 1024 × k=3, System 2's own 32,768 per sub-problem
    assert [(c.key, c.max_tokens, c.n) for c in fake.calls] == [
        ("decompose/0", 1024, 3), ("select/0", 1024, 1), ("assess/0/0", 1024, 1), ("solve/0/0", 32768, 1),
        ("assess/1/0", 1024, 1), ("solve/1/0", 32768, 1), ("assess/2/0", 1024, 1), ("solve/2/0", 32768, 1)]


def test_a_sub_problem_that_cannot_afford_system2_goes_to_system1_routed_by_budget(scripted):
    fake = scripted(modelled())
    out = run_scale(fake, budget=2000)
    *earlier, last = out["steps"]
    assert all(step.get("routed_by_budget") and step["system"] == 1 for step in earlier)  # d=0.5 > τ, no room to think
    assert [c.system for c in fake.stage_calls("solve")] == [1, 1, 2]  # the last one gets all that is left
    assert not last.get("routed_by_budget") and last["allowance"] >= budget.SYSTEM2_MINIMUM + budget.ANSWER_RESERVE
    assert any("routed to System 1 by the budget" in w for step in out["steps"] for w in step["warnings"])


def test_allowances_follow_difficulty_and_the_last_keeps_what_is_left(scripted):
    difficulties = iter([0.9, 0.1, 0.5])

    def respond(call):
        if call.key.startswith("assess"):
            return f'{{"difficulty": {next(difficulties)}}}'
        return modelled()(call)

    fake = scripted(respond)
    out = run_scale(fake, budget=20000)
    first, second, last = out["steps"]
    assert first["allowance"] > second["allowance"]  # harder sub-problem, larger share
    assert last["allowance"] == last["budget_left"]  # nothing held back after the last one
    assert first["system"] == 2 and not first.get("routed_by_budget")


def test_route_reads_the_budget_decision_from_the_state():
    state = {"solved": 0, "steps": [{"index": 0, "difficulty": 0.9, "routed_by_budget": True}]}
    assert route(state) == "solve_system1"


def test_a_run_that_reaches_its_budget_ends_with_its_last_boxed_answer_marked(scripted):
    def respond(call):
        if call.key.startswith("solve/0"):
            return ChatReply([Choice("step one \\boxed{11}", "", "stop")], completion_tokens=400)
        if call.key.startswith("solve"):  # the rest overruns whatever it is given
            return ChatReply([Choice("", "thinking", "length")], completion_tokens=call.max_tokens)
        if call.key.startswith("force"):
            return ChatReply([Choice("", "", "length")], completion_tokens=call.max_tokens)
        return default_respond(call)

    fake = scripted(respond)
    out = run_scale(fake, budget=2500, threshold=1.0)  # System 1 everywhere: a long answer runs into the total
    assert out["budget_reached"] is True
    assert out["answer"] == "11"
    assert any(w.startswith(budget.REACHED) for w in out["warnings"])


# ---- the baselines ---------------------------------------------------------------------------
def run_method(method: str, **options):
    return asyncio.run(solve(method, PROBLEM, 0, Setup("r", context(**options))))


@pytest.mark.parametrize("method", ["cot", "majority", "inftythink"])
@pytest.mark.parametrize("total", [2000, 6000])
def test_every_baseline_stays_within_the_budget_and_answers(scripted_endpoints, method, total):
    fake = scripted_endpoints(modelled(thinking_tokens=50_000))
    outcome = run_method(method, budget=total)
    assert outcome.error is None
    assert completion_tokens(fake) <= total
    assert outcome.answer == "33"
    assert outcome.budget_reached


def test_cot_gets_the_whole_budget_and_majority_votes_share_it(scripted_endpoints):
    fake = scripted_endpoints(modelled(thinking_tokens=50_000))
    run_method("cot", budget=6000, system2_max_tokens=1000)
    assert fake.calls[0].max_tokens == 6000 - budget.ANSWER_RESERVE
    fake.calls.clear()
    run_method("majority", budget=6000, votes=8)
    assert (fake.calls[0].n, fake.calls[0].max_tokens) == (4, 1500 - budget.ANSWER_RESERVE)


def test_inftythink_stops_iterating_before_the_next_iteration_would_cross_the_budget(scripted_endpoints):
    fake = scripted_endpoints(modelled(thinking_tokens=50_000))
    outcome = run_method("inftythink", budget=6000, inftythink_max_tokens=1500)
    reasoning = [c for c in fake.calls if c.key.startswith("reason")]
    assert 1 < len(reasoning) < 50 and outcome.iterations == len(reasoning)
    assert completion_tokens(fake) <= 6000


def test_without_a_budget_baselines_send_what_they_sent_before(scripted_endpoints):
    fake = scripted_endpoints(modelled(thinking_tokens=10))
    run_method("majority", votes=8)
    assert [(c.n, c.max_tokens) for c in fake.calls] == [(8, 32768)]


# ---- reasoning_effort and max_completion_tokens ------------------------------------------------
def bad(message: str, param: str) -> ValueError:
    return ValueError(f"{param}: {message}")


def test_reasoning_effort_presets_and_max_completion_tokens_become_run_parameters():
    assert efforts.scale_params({}, 0, bad) is None
    assert efforts.scale_params({"reasoning_effort": "low"}, 0, bad) == {"threshold": 0.7, "budget": 4096}
    assert efforts.scale_params({"reasoning_effort": "none"}, 0, bad) == {"threshold": 1.0}
    assert efforts.scale_params({"max_completion_tokens": 3000}, 0, bad) == {"budget": 3000}
    assert efforts.scale_params({"reasoning_effort": "high", "max_completion_tokens": 3000}, 0, bad)["budget"] == 3000
    assert efforts.scale_params({"reasoning_effort": "low", "scale": {"threshold": 0.3}}, 0, bad)["threshold"] == 0.3
    assert efforts.scale_params({"max_completion_tokens": 90_000}, 8000, bad) == {"budget": 8000}
    assert efforts.scale_params({}, 8000, bad) == {"budget": 8000}
    with pytest.raises(ValueError, match="reasoning_effort"):
        efforts.scale_params({"reasoning_effort": "max"}, 0, bad)
    with pytest.raises(ValueError, match="max_completion_tokens"):
        efforts.scale_params({"max_completion_tokens": 0}, 0, bad)


def test_progress_events_say_what_is_left_after_each_sub_problem(scripted):
    fake = scripted(modelled())
    events = [chunk for chunk in build_graph(chat=fake).stream({"problem": "What is a+b?"}, context=context(budget=20000),
                                                       stream_mode="custom") if chunk.get("event") == "budget"]
    assert [event["index"] for event in events] == [0, 1, 2]
    lefts = [event["left"] for event in events]
    assert lefts == sorted(lefts, reverse=True) and lefts[0] < 20000 and all(e["budget"] == 20000 for e in events)
    assert progress_line(events[0]) == f"Budget: {lefts[0]:,} of 20,000 tokens left after sub-problem 1.\n"


def test_the_budget_is_a_documented_bounded_run_parameter_studio_shows():
    shown = build_graph().get_context_jsonschema()["properties"]["budget"]
    assert shown["default"] == 0 and "0 = off" in shown["description"]
    with pytest.raises(Exception, match="budget must be within"):
        context(budget=-1)


@pytest.mark.parametrize("total", [1, 100, 700])
def test_a_tiny_budget_is_never_an_error_nor_overspent(scripted_endpoints, total):
    fake = scripted_endpoints(modelled())
    out = run_scale(fake, budget=total)
    assert completion_tokens(fake) <= total and "answer" in out
    for method in ("cot", "majority", "inftythink"):
        fake.calls.clear()
        outcome = run_method(method, budget=total)
        assert outcome.error is None and completion_tokens(fake) <= total


def test_a_budget_larger_than_the_context_window_asks_only_what_the_window_leaves(scripted_endpoints):
    fake = scripted_endpoints(modelled(thinking_tokens=10))
    run_method("cot", budget=100_000, context_window=32_768)
    (sent,) = fake.calls
    assert 16384 < sent.max_tokens < 32_768 - 20  # the budget asks what the window leaves after the prompt, no more


def test_every_cut_vote_gets_its_answer_reserve_for_the_forced_answer(scripted_endpoints):
    fake = scripted_endpoints(modelled(thinking_tokens=50_000, answer_tokens=2000))  # forced answers would run long
    outcome = run_method("majority", budget=6000, votes=8)
    forced = [c for c in fake.calls if c.key.startswith("force")]
    assert len(forced) == 4 and all(c.max_tokens >= budget.ANSWER_RESERVE for c in forced)
    assert completion_tokens_of(fake, answer_tokens=2000) <= 6000 and outcome.error is None


def completion_tokens_of(fake, **model) -> int:
    return sum(modelled_tokens(call, thinking_tokens=50_000, **model) for call in fake.calls)


def test_a_run_resumed_after_a_failure_mid_node_makes_the_calls_it_would_have_made(scripted):
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.store.memory import InMemoryStore

    from scale_graph.servers.chat import EndpointError

    def respond(fail: bool):
        def answer(call):
            if fail and call.key.startswith("force/2"):  # the last sub-problem's thinking was made and journalled
                return EndpointError("System 1 unreachable")
            return modelled()(call)
        return answer

    fake = scripted(respond(False))
    run_scale(fake, budget=6000, threshold=0.0)
    uninterrupted = [(c.key, c.max_tokens, c.n) for c in fake.calls]

    fake = scripted(respond(True))
    graph, config = build_graph(InMemorySaver(), InMemoryStore(), chat=fake), {"configurable": {"thread_id": "t"}}
    with pytest.raises(EndpointError):
        graph.invoke({"problem": "What is a+b?"}, config, context=context(budget=6000, threshold=0.0))
    assert fake.calls[-1].key.startswith("force/2")
    before = fake.calls[:-1]  # every call but the one that failed
    fake.calls.clear()
    fake.respond = respond(False)
    out = graph.invoke(None, config, context=context(budget=6000, threshold=0.0))
    assert [(c.key, c.max_tokens, c.n) for c in before + fake.calls] == uninterrupted  # the journalled thinking call counted: the forced answer clamped the same
    assert sum(u["completion_tokens"] for u in out["usage"].values()) <= 6000
