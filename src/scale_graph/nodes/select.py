"""Eq. 2: the model compares the candidate decompositions and picks D*."""

from __future__ import annotations

from typing import Any, Generator

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.journal import Request, emit
from scale_graph.nodes.decompose import planner_call
from scale_graph.parsing import parse_choice
from scale_graph.state import State, add_counts


def selection_schema(count: int) -> dict[str, Any]:
    return {"name": "selection", "schema": {
        "type": "object", "properties": {"choice": {"type": "integer", "minimum": 1, "maximum": count}},
        "required": ["choice"], "additionalProperties": False}}


def select(state: State, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 2: D* = argmax_j Q(D_j, P), judged by the model; first candidate if it cannot say."""
    candidates: list[list[str]] = state["candidates"]
    warnings: list[str] = []
    usage: dict[str, int] = {}
    keys: list[str] = []
    chosen, method = 0, "single"
    if len(candidates) > 1:
        listing = "\n".join(
            prompts.CANDIDATE.format(number=j + 1, steps="\n".join(f"  {i + 1}. {s}" for i, s in enumerate(c)))
            for j, c in enumerate(candidates))
        user = prompts.PROBLEM.format(problem=state["problem"]) + prompts.SELECT.format(count=len(candidates), candidates=listing)
        method = "fallback"
        for attempt in range(context.parse_retries + 1):
            call = planner_call(f"select/{attempt}", user, context, seed_parts=("select", attempt),
                                schema=selection_schema(len(candidates)))
            reply = yield call
            keys.append(call.journal_key)
            usage = add_counts(usage, reply.usage)
            warnings += reply.warnings
            choice = parse_choice(reply.choices[0].content or reply.choices[0].reasoning, len(candidates))
            if choice is not None:
                chosen, method = choice, "model"
                break
        else:
            warnings.append(f"select: no valid choice after {context.parse_retries + 1} attempts; using candidate 1")
    emit("selected", chosen=chosen, method=method, subproblems=candidates[chosen])
    return {"selection": {"chosen": chosen, "method": method, "call_keys": keys},
            "subproblems": candidates[chosen], "usage": {"select": usage} if usage else {}, "warnings": warnings}
