"""The context C_i (Eq. 5) fitted to the model's window, and the forced answer's share of reasoning."""

import pytest

from scale_graph import prompts
from scale_graph.forcing import forced_answer_call
from scale_graph.history import (
    CHARS_PER_TOKEN,
    DEFAULT_CONTEXT_WINDOW,
    Carried,
    context_window,
    estimate_tokens,
    fit_prompt,
    prompt_budget,
    shrunk_window,
)
from scale_graph.servers.chat import Choice, ContextLengthError
from tests.support.run_context import context

SUBPROBLEMS = ["find a", "find b", "find c", "find a+b+c"]


def history(size: int) -> list[Carried]:
    return [Carried(text, f"{chr(65 + j)}" * size + f" \\boxed{{{j}}}", str(j)) for j, text in enumerate(SUBPROBLEMS[:3])]


def test_long_history_is_carried_whole_when_the_window_allows():
    carried = history(30_000)  # 90,000 characters of solutions: over the old 24,000-character cap
    prompt = fit_prompt("P", SUBPROBLEMS, carried, 3, "\nSolve.", window=131_072, max_tokens=16_384, stage="solve")
    assert all(item.solution in prompt.user for item in carried)
    assert prompt.warnings == []
    assert prompt.user == prompt.prefix + "\nSolve."


def test_oldest_solutions_shrink_first_with_a_warning_when_the_window_is_too_small():
    carried = history(30_000)
    # room for about two whole solutions after the output budget is reserved
    window = 4_096 + 64 + estimate_tokens("x" * 63_000)
    prompt = fit_prompt("P", SUBPROBLEMS, carried, 3, "\nSolve.", window=window, max_tokens=4_096, stage="solve")
    assert carried[0].solution not in prompt.user and "Result: \\boxed{0}" in prompt.user
    assert carried[1].solution in prompt.user and carried[2].solution in prompt.user
    assert estimate_tokens(prompts.SYSTEM, prompt.user) <= prompt_budget(window, 4_096)
    (warning,) = prompt.warnings
    cut = len(carried[0].solution) - len("Result: \\boxed{0}")
    assert "solution of sub-problem 1 was shortened" in warning and f"({cut:,} characters cut)" in warning
    assert f"{window:,}-token window with 4,096 tokens reserved" in warning


def test_the_output_budget_is_reserved():
    carried = history(30_000)
    roomy = fit_prompt("P", SUBPROBLEMS, carried, 3, "", window=40_000, max_tokens=1_000, stage="solve")
    tight = fit_prompt("P", SUBPROBLEMS, carried, 3, "", window=40_000, max_tokens=30_000, stage="solve")
    assert roomy.warnings == [] and len(tight.warnings) == 1 and len(tight.user) < len(roomy.user)


def test_unknown_window_is_the_documented_default():
    # room for the authors' 32,768-token budget: Qwen3's and QwQ's max_position_embeddings
    assert context_window(context()) == DEFAULT_CONTEXT_WINDOW == 40_960
    assert context_window(context(context_window=8_192)) == 8_192


@pytest.mark.parametrize("window, limit, requested, expected", [
    (32_768, 16_384, None, 16_384),            # the server's window is smaller than the configured one
    (32_768, 32_768, 33_000, 32_768 - 464),    # over by 232 tokens: twice that comes off
    (32_768, None, None, 24_576),              # nothing known: a quarter off
])
def test_shrunk_window(window, limit, requested, expected):
    assert shrunk_window(window, ContextLengthError("too long", limit=limit, requested=requested)) == expected


ASKED = [("user", "Problem: P\n")]


def cut(reasoning: str) -> Choice:
    return Choice(content="", reasoning=reasoning, finish_reason="length")


@pytest.mark.parametrize("system", [1, 2])
def test_forced_answer_sees_all_reasoning_that_fits(system):
    reasoning = "r" * 20_000  # the old follow-up kept 4,000 characters
    call = forced_answer_call("force/0/0", ASKED, cut(reasoning), context(), system=system, instruction="box it.")
    assert reasoning in call.messages[-1][1]
    assert reasoning in call.fallback.messages[-1][1]


def test_the_forced_answer_continues_the_same_models_reply_after_a_closed_think_block():
    call = forced_answer_call("force/0/0", ASKED, cut("so far x = 3"), context(), system=2, instruction="box it.")
    assert call.system == 2 and call.continue_final and call.messages[:-1] == ASKED
    role, prefill = call.messages[-1]
    assert role == "assistant" and prefill.startswith("<think>\nso far x = 3") and prefill.endswith("\n</think>\n\n")
    assert prompts.FORCE_END.strip() in prefill
    # where the endpoint cannot continue a message: System 1 with the work pasted into a prompt
    assert call.fallback.system == 1 and not call.fallback.continue_final
    assert call.fallback.messages[-1][1].endswith("box it.")


def test_forced_answer_keeps_the_tail_when_the_reasoning_does_not_fit():
    reasoning = "HEAD" + "m" * 200_000 + "TAIL"
    ctx = context(context_window=16_384, force_answer_max_tokens=1_024)
    call = forced_answer_call("force/0/0", ASKED, cut(reasoning), ctx, system=2, instruction="box it.").fallback
    user = call.messages[-1][1]
    assert "TAIL" in user and "HEAD" not in user and prompts.TRUNCATED in user
    assert estimate_tokens(*(text for _, text in call.messages)) <= prompt_budget(16_384, 1_024)
    # nearly all the room is used: within a few hundred characters of the budget
    assert len(user) > (prompt_budget(16_384, 1_024) - 200) * CHARS_PER_TOKEN
