"""Eq. 1: sample k candidate decompositions D_1..D_k of the problem."""

from __future__ import annotations

from typing import Any, Generator

from langgraph.types import Overwrite

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.history import messages
from scale_graph.journal import Request, derive_seed, emit
from scale_graph.parsing import parse_decomposition
from scale_graph.servers.chat import ChatCall
from scale_graph.state import State, add_counts


def decomposition_schema(max_subproblems: int) -> dict[str, Any]:
    return {"name": "decomposition", "schema": {
        "type": "object",
        "properties": {"subproblems": {"type": "array", "items": {"type": "string"},
                                       "minItems": 1, "maxItems": max_subproblems}},
        "required": ["subproblems"], "additionalProperties": False}}


def planner_call(key: str, user: str, context: Context, *, seed_parts: tuple, n: int = 1,
                 schema: dict[str, Any] | None = None) -> ChatCall:
    """A non-thinking call of the decompose/select/assess stages."""
    return ChatCall(key=key, system=context.planner_system, messages=messages(user, context.system_message), thinking=False,
                    max_tokens=context.planner_max_tokens, temperature=context.planner_temperature,
                    top_p=context.system1_top_p if context.planner_system == 1 else context.system2_top_p,
                    seed=derive_seed(context.seed, *seed_parts), n=n, schema=schema)


def decompose(state: State, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 1: k candidate decompositions D_j = [s_1..s_n], sampled together (n=k)."""
    problem = state["problem"]
    user = prompts.PROBLEM.format(problem=problem) + prompts.DECOMPOSE.format(max_subproblems=context.max_subproblems)
    usage: dict[str, int] = {}
    warnings: list[str] = []
    valid: list[list[str]] = []
    for attempt in range(context.parse_retries + 1):
        reply = yield planner_call(f"decompose/{attempt}", user, context, seed_parts=("decompose", attempt),
                                   n=context.candidates, schema=decomposition_schema(context.max_subproblems))
        usage = add_counts(usage, reply.usage)
        warnings += reply.warnings
        parsed = [parse_decomposition(choice.content or choice.reasoning) for choice in reply.choices]
        too_long = sum(1 for p in parsed if p and len(p) > context.max_subproblems)
        valid = [p for p in parsed if p and len(p) <= context.max_subproblems]
        if len(valid) < len(parsed):
            warnings.append(f"decompose: {len(parsed) - len(valid)} of {len(parsed)} candidates unusable"
                            + (f" ({too_long} longer than {context.max_subproblems} sub-problems)" if too_long else "")
                            + f" (attempt {attempt + 1})")
        if valid:
            break
    else:
        warnings.append("decompose: no usable decomposition; solving the problem as one sub-problem")
        valid = [[problem]]
    emit("decomposed", candidates=len(valid), sizes=[len(c) for c in valid])
    # Decomposing starts a run, so whatever an earlier run on this thread left is replaced, not
    # added to (Overwrite bypasses the accumulating reducers): new input on a finished thread is a clean new run.
    return {"run_id": state["run_id"], "candidates": valid, "selection": {}, "subproblems": [], "solved": 0, "finished": False,
            "steps": Overwrite([]), "answer": None, "usage": Overwrite({"decompose": usage}),
            "warnings": Overwrite(warnings)}
