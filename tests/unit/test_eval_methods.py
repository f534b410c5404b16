"""The baselines' call logic with a scripted chat layer: what each sends, and what it makes of the replies."""

from __future__ import annotations

import asyncio

import pytest

from scale_graph import prompts
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.methods import Setup, solve
from scale_graph.servers.chat import ChatReply, Choice
from tests.support.run_context import context

PROBLEM = Problem("p1", "Find x.", "42")


def reply(*choices: tuple[str, str, str], tokens: int = 10) -> ChatReply:
    return ChatReply(choices=[Choice(*c) for c in choices], prompt_tokens=5, completion_tokens=tokens * len(choices))


def run(method: str, **options):
    params = {"system2_max_tokens": 512, "inftythink_max_tokens": 300, **options}
    return asyncio.run(solve(method, PROBLEM, 0, Setup("r", context(**params))))


COT_PROMPT = "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_cot_sends_the_paper_prompt_with_thinking_and_reads_cut_reasoning(scripted_endpoints):
    fake = scripted_endpoints(lambda call: reply(("", "… so x = \\boxed{42} and then", "length"), tokens=512))
    outcome = run("cot", force_answer=False)
    (call,) = fake.calls
    assert call.messages == [("user", "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}.")]
    assert (call.system, call.thinking, call.max_tokens, call.temperature, call.top_p) == (2, True, 512, 0.6, 0.95)
    assert outcome.answer == "42" and outcome.iterations == 1 and outcome.error is None
    assert outcome.usage == {"solve_system2": {"calls": 1, "prompt_tokens": 5, "completion_tokens": 512,
                                               "reasoning_tokens": 0}}


def test_majority_votes_over_equivalent_forms_in_one_n_request(scripted_endpoints):
    fake = scripted_endpoints(lambda call: reply(("\\boxed{3}", "", "stop"), ("\\boxed{\\frac{1}{2}}", "", "stop"),
                                       ("no answer", "", "stop"), ("\\boxed{0.5}", "", "stop"),
                                       ("\\boxed{1/2}", "", "stop"), ("\\boxed{3}", "", "stop")))
    outcome = run("majority", votes=6)
    assert [call.n for call in fake.calls] == [6]
    assert outcome.answer == "\\frac{1}{2}"  # 3 equivalent votes beat 2 for 3; the empty one is skipped
    assert outcome.iterations == 6 and outcome.usage["solve_system2"]["completion_tokens"] == 60


def test_samples_get_their_own_seeds(scripted_endpoints):
    fake = scripted_endpoints(lambda call: reply(("\\boxed{1}", "", "stop")))
    setup = Setup("r", context())
    asyncio.run(solve("cot", PROBLEM, 0, setup))
    asyncio.run(solve("cot", PROBLEM, 1, setup))
    assert fake.calls[0].seed != fake.calls[1].seed


def inftythink_script(cut_iterations: int):
    """Reasoning cut ``cut_iterations`` times (the first stop without a box), then a boxed answer."""

    def respond(call):
        kind, _, number = call.key.partition("/")
        if kind == "summary":
            return reply((f"- step {number}: x is even", "", "stop"))
        if int(number) <= cut_iterations:
            if int(number) == 1:
                return reply(("I give up", "thinking", "stop"))  # finished without a boxed answer: go on
            return reply(("", f"partial {number} \\boxed{{{number}}}", "length"))
        return reply(("x = \\boxed{42}", "done", "stop"))

    return respond


def test_inftythink_summarises_cut_iterations_and_stops_on_a_boxed_answer(scripted_endpoints):
    fake = scripted_endpoints(inftythink_script(cut_iterations=2))
    outcome = run("inftythink")
    assert [c.key for c in fake.calls] == ["reason/1", "summary/1", "reason/2", "summary/2", "reason/3"]
    reason, summary = fake.calls[2], fake.calls[3]
    assert (reason.system, reason.thinking, reason.max_tokens) == (2, True, 300)  # its own per-iteration budget
    assert "- step 1: x is even" in reason.messages[0][1] and "Find x." in reason.messages[0][1]
    # written by the reasoning model itself, after an empty closed think block (issue 19: not System 1)
    assert (summary.system, summary.thinking, summary.max_tokens, summary.temperature) == (2, False, 1024, 0.5)
    assert summary.continue_final and summary.messages[-1] == ("assistant", "<think>\n\n</think>\n\n")
    assert summary.fallback.system == 1 and summary.fallback.messages == summary.messages[:-1]
    prompt = summary.messages[0][1]
    assert "- step 1: x is even" in prompt and "partial 2" in prompt and "Do not give a final answer" in prompt
    assert "- step 2: x is even" in fake.calls[4].messages[0][1] and "step 1:" not in fake.calls[4].messages[0][1]
    assert outcome.answer == "42" and outcome.iterations == 3
    assert outcome.usage["solve_system2"]["calls"] == 3 and outcome.usage["summarize"]["calls"] == 2


def test_inftythink_stops_at_the_cap_with_the_last_reasoning_answer(scripted_endpoints):
    fake = scripted_endpoints(inftythink_script(cut_iterations=99))
    outcome = run("inftythink", inftythink_max_iterations=4, force_answer=False)
    assert len(fake.calls) == 7 and fake.calls[-1].key == "reason/4"  # no summary after the last iteration
    assert outcome.answer == "4" and outcome.iterations == 4


def test_inftythink_defaults_are_the_official_ones(scripted_endpoints):
    fake = scripted_endpoints(inftythink_script(cut_iterations=60))
    outcome = asyncio.run(solve("inftythink", PROBLEM, 0, Setup("r", context(force_answer=False))))
    reasons = [c for c in fake.calls if c.key.startswith("reason/")]
    assert len(reasons) == 50 and {c.max_tokens for c in reasons} == {8192} and outcome.iterations == 50


def forced_script(cut: str = "length"):
    """Every thinking call is cut with no answer text; the non-thinking follow-up boxes 42."""

    def respond(call):
        if call.key.startswith("force/"):
            return reply(("So x = \\boxed{42}.", "", "stop"), tokens=7)
        if call.key.startswith("summary/"):
            return reply(("- x is even", "", "stop"))
        return reply(*[("", "x is 41 or 42, \\boxed{41} maybe", cut)] * call.n, tokens=512)

    return respond


@pytest.mark.parametrize("method, options, forced_calls", [
    ("cot", {}, 1),
    ("majority", {"votes": 3}, 3),  # each sample that needs it
    ("inftythink", {"inftythink_max_iterations": 2}, 1),  # the last iteration only
])
def test_every_method_forces_an_answer_when_thinking_ends_without_one(scripted_endpoints, method, options, forced_calls):
    """Only SCALE got the forced-answer follow-up: the baselines read a stray box from cut reasoning."""
    fake = scripted_endpoints(forced_script())
    outcome = run(method, **options)
    forced = fake.stage_calls("force/")
    assert len(forced) == forced_calls and outcome.answer == "42"
    for call in forced:
        # the method's own reasoning model continues its own reply (issue 19: not System 1)
        assert (call.system, call.thinking, call.max_tokens, call.continue_final) == (2, False, 1024, True)
        (role, text), (prefill_role, prefill) = call.messages  # the method's own prompt, no system message
        assert role == "user" and text.startswith("Find x.") and "Please reason step by step" in text
        assert prefill_role == "assistant" and "x is 41 or 42" in prefill and prefill.endswith("</think>\n\n")
        (role, text), = call.fallback.messages  # System 1 only where the endpoint cannot continue
        assert call.fallback.system == 1 and "x is 41 or 42" in text and text.endswith(prompts.FORCE_FINAL)
    assert outcome.usage["force_answer"] == {"calls": forced_calls, "prompt_tokens": 5 * forced_calls,
                                             "completion_tokens": 7 * forced_calls, "reasoning_tokens": 0}
    if method == "inftythink":
        assert forced[0].messages[0][1].startswith("Find x.\n\nHere is a summary of your reasoning")


@pytest.mark.parametrize("method, options", [("cot", {}), ("majority", {"votes": 3}),
                                             ("inftythink", {"inftythink_max_iterations": 2})])
def test_the_policy_switch_turns_forcing_off_for_every_method(scripted_endpoints, method, options):
    fake = scripted_endpoints(forced_script())
    outcome = run(method, force_answer=False, **options)
    assert not fake.stage_calls("force/") and "force_answer" not in outcome.usage and outcome.answer == "41"


def test_majority_forces_only_the_samples_that_need_it(scripted_endpoints):
    def respond(call):
        if call.key.startswith("force/"):
            return reply(("\\boxed{7}", "", "stop"))
        return reply(("\\boxed{7}", "done", "stop"), ("", "cut", "length"), ("\\boxed{8}", "done", "stop"))

    fake = scripted_endpoints(respond)
    outcome = run("majority", votes=3)
    assert [c.key for c in fake.stage_calls("force/")] == ["force/majority/1"] and outcome.answer == "7"


def test_forced_follow_up_sees_the_tail_of_the_reasoning_that_fits(scripted_endpoints):
    long_reasoning = "early " * 20000 + "LATEST RESULT"

    def respond(call):
        if call.key.startswith("force/"):
            return reply(("\\boxed{42}", "", "stop"))
        return ChatReply(choices=[Choice("", long_reasoning, "length")], prompt_tokens=100, completion_tokens=512)

    fake = scripted_endpoints(respond)
    run("cot", context_window=4096)
    (forced,) = fake.stage_calls("force/")
    for call in (forced, forced.fallback):
        text = call.messages[-1][1]
        assert "LATEST RESULT" in text and len(text) < (4096 - 100 - 1024) * 3 + 500


def test_degradations_from_the_chat_layer_are_kept_once(scripted_endpoints):
    def respond(call):
        return ChatReply(choices=[Choice("\\boxed{42}", "", "stop")], prompt_tokens=5, completion_tokens=5,
                         warnings=["degraded: sent without response_format", "System 2 endpoint: something else"])

    scripted_endpoints(respond)
    assert run("cot").degraded == ["degraded: sent without response_format"]


def test_a_failing_call_becomes_the_outcome_error(scripted_endpoints):
    from scale_graph.servers.chat import EndpointError

    scripted_endpoints(lambda call: EndpointError("System 2 endpoint http://x is unreachable after 3 retries"))
    outcome = run("cot")
    assert outcome.error == "EndpointError: System 2 endpoint http://x is unreachable after 3 retries"
    assert outcome.answer is None and outcome.latency_s >= 0


def test_a_sample_another_worker_started_meanwhile_is_resumed_not_failed(scripted_endpoints, monkeypatch):
    """Found by bench/scaleout.py: between this worker's resume (no run yet) and its start, another
    worker of a shared evaluation started and finished the sample; the start then failed with
    "already exists" and the sample was counted as failed."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.store.memory import InMemoryStore

    from scale_graph import runner
    from scale_graph.evaluation import methods
    from scale_graph.graph import build_graph

    scripted_endpoints()
    store = InMemoryStore()
    graph = build_graph(InMemorySaver(), store)
    setup = Setup("team", context(), graph, store)
    thread = methods.thread_id("team", PROBLEM.id, 0)
    finished = asyncio.run(runner.start(graph, store, PROBLEM.problem, methods.sample_context(setup.context, 0), thread))
    real_resume, calls = runner.resume, []

    async def resume_before_the_other_worker_started(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise runner.UnknownRun("not yet")
        return await real_resume(*args, **kwargs)

    monkeypatch.setattr(runner, "resume", resume_before_the_other_worker_started)
    outcome = asyncio.run(solve("scale", PROBLEM, 0, setup))
    assert outcome.error is None and outcome.answer == finished["answer"]
