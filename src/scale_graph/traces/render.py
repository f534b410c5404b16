"""One SCALE run rendered as one assistant response, and that response as a training record.

The paper's Setting 2 fine-tunes non-reasoning models on SCALE-generated traces, so that they
learn SCALE's way of working: break the problem into sub-problems, think hard only where it is
needed, carry each result forward, answer. The assistant turn therefore shows the whole process
as one coherent response, following this template (``{…}`` are filled in, ``[…]`` repeat)::

    Let me break this problem into {n} sub-problems:
    1. {sub-problem 1}
    2. {sub-problem 2}
    […]

    ### Sub-problem 1: {sub-problem 1}
    {solution 1}

    ### Sub-problem 2: {sub-problem 2}
    <think>
    {System 2 reasoning of sub-problem 2}
    </think>

    {solution 2}
    […]

    Therefore, the final answer is \\boxed{answer}.      (or: No final answer was reached.)

- The plan lists the chosen decomposition D* (Eq. 2) in order; each sub-problem then appears
  with its solution S(s_i) verbatim (in full, not the capped copy carried forward as context),
  which ends with its own ``\\boxed{}`` result.
- A ``<think>…</think>`` block appears only with ``include_reasoning`` and only before the
  solution of a sub-problem solved by System 2 (difficulty above τ) whose reasoning was
  captured: the student learns to think at length where SCALE did and to answer directly
  elsewhere. Without ``include_reasoning`` the response has no thinking at all.
- The last line restates the run's final answer (the last ``\\boxed{}`` of S(s_n)), so the last
  ``\\boxed{}`` of the response is always the answer that was graded. A run whose last solution
  has no ``\\boxed{}`` ends with "No final answer was reached." instead (such traces are never
  correct, so ``--correct-only`` leaves them out).
- Difficulty scores, system numbers and token counts are not written into the response; they
  stay in the run (``scale runs show``) and in the export statistics.

Records (one JSON object per line) in three formats:

- ``messages`` — TRL ``SFTTrainer`` conversational format:
  ``{"messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": response}]}``
- ``sharegpt`` — LLaMA-Factory ShareGPT format:
  ``{"conversations": [{"from": "human", "value": problem}, {"from": "gpt", "value": response}]}``
- ``alpaca`` — ``{"instruction": problem, "input": "", "output": response}``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMATS = ("messages", "sharegpt", "alpaca")

PLAN = "Let me break this problem into {count} sub-problem{plural}:"
PLAN_ITEM = "{number}. {text}"
HEADER = "### Sub-problem {number}: {text}"
THINK = "<think>\n{reasoning}\n</think>\n"
NO_SOLUTION = "(no solution text)"
FINAL = "Therefore, the final answer is \\boxed{{{answer}}}."
NO_FINAL = "No final answer was reached."


@dataclass(frozen=True)
class SubproblemTrace:
    """One solved sub-problem s_i: its text, system, solution S(s_i) and (System 2) reasoning."""

    text: str
    system: int | None  # 1 or 2; None when never solved
    solution: str = ""
    reasoning: str = ""
    result: str | None = None
    difficulty: float | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class Trace:
    """One SCALE run of one problem sample, with what the export needs to filter and render it."""

    problem_id: str
    sample: int
    problem: str
    answer: str | None
    gold: str
    correct: bool
    subproblems: list[SubproblemTrace] = field(default_factory=list)
    completion_tokens: int = 0  # every stage of the run, as the results store counts them
    thread_id: str = ""
    ungraded: bool = False  # the grader could not decide whether the answer is right

    @property
    def complete(self) -> bool:
        """The run got through its plan: at least one sub-problem, every one solved."""
        return bool(self.subproblems) and all(s.system for s in self.subproblems)

    @property
    def answered(self) -> bool:
        return bool(self.answer and self.answer.strip())

    @property
    def solve_tokens(self) -> int:
        """Completion tokens of the sub-problem solutions (what the response is made of)."""
        return sum(s.completion_tokens for s in self.subproblems)

    @property
    def hard(self) -> int:
        return sum(s.system == 2 for s in self.subproblems)


def trace_from_shown(shown: dict[str, Any], *, problem_id: str, sample: int, gold: str, correct: bool,
                     completion_tokens: int = 0, ungraded: bool = False) -> Trace:
    """A Trace from :func:`scale_graph.runs.show_run` output (with texts) and the stored result."""
    rows = [SubproblemTrace(text=(row.get("text") or "").strip(), system=row.get("system"),
                            solution=(row.get("solution") or "").strip(), reasoning=(row.get("reasoning") or "").strip(),
                            result=row.get("result"), difficulty=row.get("difficulty"),
                            completion_tokens=row.get("completion_tokens") or 0)
            for row in shown.get("subproblems", [])]
    return Trace(problem_id=problem_id, sample=sample, problem=(shown.get("problem") or "").strip(),
                 answer=shown.get("answer"), gold=gold, correct=correct, subproblems=rows,
                 completion_tokens=completion_tokens, thread_id=shown.get("thread_id", ""), ungraded=ungraded)


def render(trace: Trace, *, include_reasoning: bool = False) -> str:
    """The assistant response of ``trace`` following the module's template."""
    rows = trace.subproblems
    parts = [PLAN.format(count=len(rows), plural="" if len(rows) == 1 else "s")]
    parts += [PLAN_ITEM.format(number=number, text=_one_line(row.text)) for number, row in enumerate(rows, 1)]
    parts.append("")
    for number, row in enumerate(rows, 1):
        parts.append(HEADER.format(number=number, text=_one_line(row.text)))
        if include_reasoning and row.system == 2 and row.reasoning:
            parts.append(THINK.format(reasoning=row.reasoning))
        parts += [row.solution or NO_SOLUTION, ""]
    parts.append(FINAL.format(answer=trace.answer.strip()) if trace.answered else NO_FINAL)
    return "\n".join(parts)


def record(problem: str, response: str, fmt: str) -> dict[str, Any]:
    """One training record (a JSON object) of ``fmt``: the problem as the user turn, the response as the assistant's."""
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": response}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": problem}, {"from": "gpt", "value": response}]}
    if fmt == "alpaca":
        return {"instruction": problem, "input": "", "output": response}
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def normalised(text: str) -> str:
    """Whitespace-insensitive form of a response, for duplicate detection."""
    return " ".join(text.split())


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(empty sub-problem)"
