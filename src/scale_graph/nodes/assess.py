"""Eq. 3: difficulty d_i of sub-problem s_i given its context C_i."""

from __future__ import annotations

from typing import Any, Generator

from scale_graph import budget, prompts
from scale_graph.context import Context
from scale_graph.history import fit_prompt, fitted_call, previous_solutions
from scale_graph.journal import Request, emit
from scale_graph.nodes.decompose import planner_call
from scale_graph.nodes.route import system_for
from scale_graph.parsing import parse_difficulty
from scale_graph.servers.chat import ChatCall
from scale_graph.state import State, Step, add_counts

DIFFICULTY_SCHEMA = {"name": "difficulty", "schema": {
    "type": "object", "properties": {"difficulty": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["difficulty"], "additionalProperties": False}}


def assess(state: State, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 3: d_i = A(s_i, C_i) ∈ [0, 1], with C_i holding the previous solutions."""
    index: int = state.get("solved", 0)
    history = yield from previous_solutions(state, context, index)
    warnings: list[str] = []
    usage: dict[str, int] = {}
    difficulty: float | None = None
    for attempt in range(context.parse_retries + 1):
        def build(window: int, attempt: int = attempt) -> tuple[ChatCall, list[str]]:
            prompt = fit_prompt(state["problem"], state["subproblems"], history, index,
                                prompts.ASSESS.format(number=index + 1), window=window,
                                max_tokens=context.planner_max_tokens, stage="assess")
            return planner_call(f"assess/{index}/{attempt}", prompt.user, context, seed_parts=("assess", index, attempt),
                                schema=DIFFICULTY_SCHEMA), prompt.warnings

        _, reply, fitting = yield from fitted_call(build, context, "assess")
        warnings += [w for w in fitting if w not in warnings]
        usage = add_counts(usage, reply.usage)
        warnings += reply.warnings
        difficulty = parse_difficulty(reply.choices[0].content or reply.choices[0].reasoning)
        if difficulty is not None:
            break
    if difficulty is None:
        difficulty = 1.0
        warnings.append(f"assess: no difficulty for sub-problem {index + 1} after {context.parse_retries + 1} attempts; treated as hard")
    elif not 0.0 <= difficulty <= 1.0:
        clamped = min(1.0, max(0.0, difficulty))
        warnings.append(f"assess: difficulty {difficulty:g} of sub-problem {index + 1} outside [0, 1]; clamped to {clamped:g}")
        difficulty = clamped
    planned = budget.plan_step(state, context, index, difficulty, system_for(difficulty, context.threshold),
                               usage.get("completion_tokens", 0))
    warnings += planned.pop("warnings", [])
    emit("assessed", index=index, difficulty=difficulty)
    step: Step = {"index": index, "text": state["subproblems"][index], "difficulty": difficulty,
                  "assess_tokens": usage.get("completion_tokens", 0), **planned, "warnings": list(warnings)}
    return {"steps": [step], "usage": {"assess": usage}, "warnings": warnings}
