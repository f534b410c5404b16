"""Eq. 3: difficulty d_i of sub-problem s_i given its context C_i."""

from __future__ import annotations

from typing import Any, Generator

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.history import prompt_prefix
from scale_graph.journal import Request, emit
from scale_graph.nodes.decompose import planner_call
from scale_graph.state import plus
from scale_graph.parsing import parse_difficulty

DIFFICULTY_SCHEMA = {"name": "difficulty", "schema": {
    "type": "object", "properties": {"difficulty": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["difficulty"], "additionalProperties": False}}


def assess(state: dict, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 3: d_i = A(s_i, C_i) ∈ [0, 1], with C_i holding the previous solutions."""
    index = len(state.get("steps", []))
    prefix = yield from prompt_prefix(state, context, index)
    user = prefix + prompts.ASSESS.format(number=index + 1)
    warnings: list[str] = []
    usage: dict[str, int] = {}
    difficulty: float | None = None
    for attempt in range(context.parse_retries + 1):
        reply = yield planner_call(f"assess/{index}/{attempt}", user, context, seed_parts=("assess", index, attempt),
                                   schema=DIFFICULTY_SCHEMA)
        usage = plus(usage, reply.usage)
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
    emit("assessed", index=index, difficulty=difficulty)
    step = {"index": index, "text": state["subproblems"][index], "difficulty": difficulty,
            "assess_tokens": usage.get("completion_tokens", 0), "warnings": list(warnings)}
    return {"steps": [step], "usage": {"assess": usage}, "warnings": warnings}
