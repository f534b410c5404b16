"""The context C_i of Eq. 5: the problem plus every earlier sub-problem and its solution.

Each previous solution is carried whole as long as the prompt fits the model's context window
with the call's own output budget reserved. Only when it does not fit do the oldest solutions
shrink to their boxed result, and the run records a warning saying how much was cut. Prompt
sizes are estimated from characters (:data:`CHARS_PER_TOKEN`), erring on the large side; when a
server still refuses a prompt as too long, :func:`shrunk_window` gives the window to retry with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from scale_graph import prompts
from scale_graph.context import DEFAULT_CONTEXT_WINDOW, Context
from scale_graph.journal import LoadReplies, Request
from scale_graph.servers.chat import ChatCall, ChatReply, ContextLengthError
from scale_graph.state import Step

#: Characters per token assumed when estimating a prompt's size. Qwen-style tokenizers average
#: about 3.5–4 characters per token on English and LaTeX; 3 over-estimates, so a prompt judged
#: to fit does fit in all but unusual texts (those are caught by the server's context-length error).
CHARS_PER_TOKEN = 3
#: Tokens the chat template adds around the messages (role markers, thinking switch).
TEMPLATE_TOKENS = 64


def estimate_tokens(*texts: str) -> int:
    """A conservative token count of ``texts`` together."""
    return math.ceil(sum(map(len, texts)) / CHARS_PER_TOKEN)


def context_window(context: Context) -> int:
    """The model's context length in tokens for this run."""
    return context.context_window or DEFAULT_CONTEXT_WINDOW


def prompt_budget(window: int, max_tokens: int) -> int:
    """Tokens the messages of a call may take: the window minus the call's output and the template."""
    return max(0, window - max_tokens - TEMPLATE_TOKENS)


def shrunk_window(window: int, error: ContextLengthError) -> int:
    """The (estimated) window to retry with after the server refused a prompt as too long.

    The server's own limit caps it; when it says how far over the request was, twice that is
    taken off as well, because the estimate that judged the prompt to fit was off by at least that.
    """
    limit = min(window, error.limit) if error.limit else window
    if error.requested and error.limit and error.requested > error.limit:
        return max(0, limit - 2 * (error.requested - error.limit))
    return limit * 3 // 4 if limit == window else limit


def solution_texts(replies: list[ChatReply]) -> tuple[str, str]:
    """(solution, reasoning) of a sub-problem from its solve calls, in call order.

    The solution is the last non-empty visible text; if every call's text is empty (some
    servers put a non-thinking answer in the reasoning field) the last reasoning stands in.
    """
    contents = [r.choices[0].content.strip() for r in replies if r.choices]
    reasonings = [r.choices[0].reasoning.strip() for r in replies if r.choices]
    solution = next((c for c in reversed(contents) if c), "")
    if not solution:
        solution = next((r for r in reversed(reasonings) if r), "")
        reasonings = [r for r in reasonings if r != solution]
    return solution, "\n\n".join(r for r in reasonings if r)


def keep_tail(text: str, max_chars: int) -> str:
    """``text``, or when longer than ``max_chars`` its last part (the conclusive one) marked as cut."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars - len(prompts.TRUNCATED))
    return prompts.TRUNCATED + text[len(text) - keep :] if keep else ""


@dataclass
class Carried:
    """A solved sub-problem as it goes forward: its text, whole solution and boxed result."""

    text: str
    solution: str
    result: str | None


@dataclass
class Prompt:
    """A sub-problem's user message: ``prefix`` (C_i and s_i) then the instruction."""

    prefix: str
    user: str
    warnings: list[str] = field(default_factory=list)


def carried(step: Step, replies: dict[str, ChatReply], context: Context) -> Carried:
    """What of a solved sub-problem goes forward: its final text (and reasoning if asked), whole."""
    solution, reasoning = solution_texts([replies[k] for k in step.get("call_keys", []) if k in replies])
    if context.carry == "reasoning" and reasoning:
        solution = f"<think>\n{reasoning}\n</think>\n{solution}"
    return Carried(step["text"], solution, step.get("result"))


def previous_solutions(state: dict, context: Context, index: int) -> Generator[LoadReplies, Any, list[Carried]]:
    """The solved sub-problems before ``index``, read from the journal."""
    previous: list[Step] = state.get("steps", [])[:index]
    replies = yield LoadReplies([key for step in previous for key in step.get("call_keys", [])])
    return [carried(step, replies, context) for step in previous]


def fit_prompt(problem: str, subproblems: list[str], history: list[Carried], index: int, instruction: str, *,
               window: int, max_tokens: int, stage: str) -> Prompt:
    """The user message for sub-problem ``index``: every previous solution whole if the call fits
    ``window`` with ``max_tokens`` reserved for its output, else the oldest shrunk to their result."""
    solutions = [item.solution for item in history]
    budget = prompt_budget(window, max_tokens)

    def build() -> Prompt:
        parts = [prompts.PROBLEM.format(problem=problem)]
        for j, (item, solution) in enumerate(zip(history, solutions)):
            parts.append(prompts.SUBPROBLEM_HEADER.format(number=j + 1, total=len(subproblems), text=item.text))
            parts.append(prompts.SOLUTION.format(solution=solution))
        parts.append(prompts.SUBPROBLEM_HEADER.format(number=index + 1, total=len(subproblems), text=subproblems[index]))
        prefix = "".join(parts)
        return Prompt(prefix, prefix + instruction)

    prompt, shrunk = build(), 0
    while estimate_tokens(prompts.SYSTEM, prompt.user) > budget and shrunk < len(history):
        solutions[shrunk] = prompts.RESULT_ONLY.format(result=history[shrunk].result or "?")
        shrunk += 1
        prompt = build()
    if shrunk:
        cut = sum(len(item.solution) for item in history[:shrunk]) - sum(map(len, solutions[:shrunk]))
        fits = estimate_tokens(prompts.SYSTEM, prompt.user) <= budget
        which = "the solution of sub-problem 1 was" if shrunk == 1 else f"the solutions of sub-problems 1–{shrunk} were"
        prompt.warnings.append(
            f"{stage}: the context of sub-problem {index + 1} did not fit the {window:,}-token window with "
            f"{max_tokens:,} tokens reserved for the answer; {which} shortened to the boxed result "
            f"({cut:,} characters cut)" + ("" if fits else "; still too long"))
    return prompt


def fitted_call(build: Callable[[int], tuple[ChatCall, list[str]]], context: Context, what: str
                ) -> Generator[Request, Any, tuple[ChatCall, ChatReply, list[str]]]:
    """Make the call ``build(window)`` for the run's context window; if the server refuses it as
    too long, once more with the window :func:`shrunk_window` gives. Returns the call made, its
    reply and the warnings of fitting it; a second refusal propagates."""
    window = context_window(context)
    call, warnings = build(window)
    try:
        reply = yield call
    except ContextLengthError as refused:
        window = shrunk_window(window, refused)
        call, warnings = build(window)
        limit = f"{refused.limit:,}-token" if refused.limit else "context"
        warnings = [f"{what}: the server refused the prompt as longer than its {limit} limit; "
                    f"retried once with the context fitted to {window:,} tokens", *warnings]
        reply = yield call
    return call, reply, warnings


def messages(user: str, system_message: str = "") -> list[tuple[str, str]]:
    """The chat messages of a call: the run's system message (the same for every method; none by
    default, as in the paper), then the user text."""
    return [("system", system_message), ("user", user)] if system_message else [("user", user)]
