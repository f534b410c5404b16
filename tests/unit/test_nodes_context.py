"""Full context propagation (Eq. 5) through the graph: whole solutions, fitted to the window,
one retry when the server refuses a prompt as too long; difficulties that are not numbers."""

import pytest

from scale_graph import build_graph
from scale_graph.servers.chat import ChatReply, Choice, ContextLengthError
from tests.support.chat import ScriptedSystems, default_respond
from tests.support.run_context import context

BIG = 20_000  # characters per solution: five times the old 4,000-character cap


def run(chat: ScriptedSystems, ctx):
    return build_graph(chat=chat).invoke({"problem": "What is a+b?"}, context=ctx)


def long_solutions(call):
    if call.key.startswith("solve"):
        index = int(call.key.split("/")[1])
        return f"step {index} " + str(index) * BIG + f" \\boxed{{{(index + 1) * 11}}}"
    return default_respond(call)


def test_long_solutions_are_carried_whole_when_the_window_allows(scripted):
    fake = scripted(long_solutions)
    out = run(fake, context(context_window=131_072))
    for stage in ("assess/2", "solve/2"):
        prompt = fake.stage_calls(stage)[0].messages[-1][1]
        assert "0" * BIG in prompt and "1" * BIG in prompt
    assert out["warnings"] == [] and out["answer"] == "33"


def test_oldest_solutions_shrink_first_with_a_warning_when_they_do_not_fit(scripted):
    fake = scripted(long_solutions)
    # System 2's 16,384-token budget leaves room for about one solution and a half
    out = run(fake, context(context_window=16_384 + 64 + 12_000, system2_max_tokens=16_384))
    prompt = fake.stage_calls("solve/2")[0].messages[-1][1]
    assert "0" * BIG not in prompt and "Result: \\boxed{11}" in prompt
    assert "1" * BIG in prompt  # the newer solution is still whole
    warning = next(w for w in out["steps"][2]["warnings"] if w.startswith("solve:"))
    assert "solution of sub-problem 1 was shortened" in warning and "characters cut" in warning
    assert warning in out["warnings"]


def refusing(stage, times=1):
    """A responder that refuses the first ``times`` calls of ``stage`` as too long for a 20,000-token window."""
    refused = []

    def respond(call):
        if call.key.startswith(stage) and len(refused) < times:
            refused.append(call)
            return ContextLengthError("prompt too long", limit=20_000, requested=24_000)
        return long_solutions(call)

    return respond, refused


@pytest.mark.parametrize("stage", ["solve/2/0", "assess/2/0"])
def test_a_context_length_refusal_is_retried_once_with_a_shorter_prompt(scripted, stage):
    respond, refused = refusing(stage)
    fake = scripted(respond)
    out = run(fake, context(context_window=131_072))
    retry = [c for c in fake.stage_calls(stage)]
    assert len(retry) == 2 and retry[0] is refused[0]
    assert len(retry[1].messages[-1][1]) < len(retry[0].messages[-1][1])
    assert out["answer"] == "33"
    assert any("refused the prompt as longer than its 20,000-token limit" in w for w in out["steps"][2]["warnings"])


def test_a_second_refusal_is_not_retried_again(scripted):
    respond, _ = refusing("solve/2/0", times=5)
    fake = scripted(respond)
    with pytest.raises(ContextLengthError):
        run(fake, context(context_window=131_072))
    assert len(fake.stage_calls("solve/2/0")) == 2


def test_the_forced_answer_sees_the_whole_cut_off_reasoning_when_it_fits(scripted):
    reasoning = "thinking " * 3_000  # 27,000 characters; the old follow-up kept 4,000

    def respond(call):
        if call.key.startswith("solve"):
            return ChatReply(choices=[Choice("", reasoning, "length")])
        if call.key.startswith("force"):
            return "\\boxed{9}"
        return default_respond(call)

    fake = scripted(respond)
    run(fake, context(threshold=0.0))
    assert reasoning.strip() in fake.stage_calls("force/0")[0].messages[-1][1]


@pytest.mark.parametrize("answer", ['{"difficulty": NaN}', "nan", '{"difficulty": Infinity}', '{"difficulty": -Infinity}'])
def test_a_difficulty_that_is_not_a_number_is_retried_then_hard(scripted, answer):
    fake = scripted(lambda c: answer if c.key.startswith("assess") else default_respond(c))
    out = run(fake, context(parse_retries=1, threshold=0.5))
    assert len(fake.stage_calls("assess/0")) == 2
    step = out["steps"][0]
    assert step["difficulty"] == 1.0 and step["system"] == 2
    assert any("treated as hard" in w for w in step["warnings"])


def test_difficulty_naming_its_sub_problem_number(scripted):
    fake = scripted(lambda c: "The difficulty of sub-problem 3 is 0.4" if c.key.startswith("assess") else default_respond(c))
    out = run(fake, context(threshold=0.5))
    assert [s["difficulty"] for s in out["steps"]] == [0.4, 0.4, 0.4]
    assert {s["system"] for s in out["steps"]} == {1}


def test_a_context_length_refusal_is_retried_under_ainvoke_too(scripted):
    import asyncio

    respond, refused = refusing("solve/1/0")
    fake = scripted(respond)
    out = asyncio.run(build_graph(chat=fake).ainvoke({"problem": "What is a+b?"}, context=context(context_window=131_072)))
    assert len(fake.stage_calls("solve/1/0")) == 2 and out["answer"] == "33"
