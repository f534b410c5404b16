"""The context C_i of Eq. 5: the problem plus every earlier sub-problem and its solution.

What is carried is bounded, so prompts stay inside the model's context however many
sub-problems there are: each solution is capped (head and tail kept), and when the whole is
still too long the oldest solutions shrink to their boxed result.
"""

from __future__ import annotations

from typing import Any, Generator

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.journal import Load
from scale_graph.servers.chat import ChatReply
from scale_graph.state import Step


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


def clip(text: str, limit: int) -> str:
    """At most about ``limit`` characters: the head and the (usually conclusive) tail."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + prompts.TRUNCATED + text[len(text) - (limit - head) :]


def carried(step: Step, replies: dict[str, ChatReply], context: Context) -> str:
    """What of a solved sub-problem goes forward: its final text (and reasoning if asked)."""
    solution, reasoning = solution_texts([replies[k] for k in step.get("call_keys", []) if k in replies])
    if context.carry == "reasoning" and reasoning:
        solution = f"<think>\n{reasoning}\n</think>\n{solution}"
    return clip(solution, context.carry_max_chars)


def prompt_prefix(state: dict, context: Context, index: int) -> Generator[Load, Any, str]:
    """User-message prefix for sub-problem ``index``: C_i followed by the sub-problem itself."""
    subproblems: list[str] = state["subproblems"]
    previous: list[Step] = state.get("steps", [])[:index]
    replies = yield Load([key for step in previous for key in step.get("call_keys", [])])
    solutions = [carried(step, replies, context) for step in previous]
    total = sum(map(len, solutions))
    for j, step in enumerate(previous):  # oldest first, shrink to the result until it fits
        if total <= context.context_max_chars:
            break
        short = prompts.RESULT_ONLY.format(result=step.get("result") or "?")
        total -= len(solutions[j]) - len(short)
        solutions[j] = short
    parts = [prompts.PROBLEM.format(problem=state["problem"])]
    for j, (step, solution) in enumerate(zip(previous, solutions)):
        parts.append(prompts.SUBPROBLEM_HEADER.format(number=j + 1, total=len(subproblems), text=step["text"]))
        parts.append(prompts.SOLUTION.format(solution=solution))
    parts.append(prompts.SUBPROBLEM_HEADER.format(number=index + 1, total=len(subproblems), text=subproblems[index]))
    return "".join(parts)


def messages(user: str) -> list[tuple[str, str]]:
    """The chat messages of every SCALE call: the shared system prompt, then the user text."""
    return [("system", prompts.SYSTEM), ("user", user)]
