"""Optional human review of the chosen decomposition D* before any sub-problem is solved."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.types import interrupt

from scale_graph.context import Context
from scale_graph.journal import emit, run_context
from scale_graph.state import State

ACCEPT = ("accept", "yes", "ok", "")


def review(state: State, context: Context) -> dict:
    """Pause after Eq. 2 with interrupt(); resume with "accept" or an edited list of sub-problems."""
    question: dict[str, Any] = {"subproblems": state["subproblems"], "candidates": state.get("candidates", []),
                                "resume_with": "'accept', or a list of sub-problem strings replacing D*"}
    while True:
        decision = interrupt(question)
        try:
            edited = reviewed_subproblems(decision, context)
            break
        except ValueError as exc:
            # asked again rather than failed: LangGraph keeps each resume value, and this node
            # replays them in order, so a raised error would recur on every later resume
            question = {**question, "error": str(exc)}
    emit("reviewed", accepted=edited is None, subproblems=edited or state["subproblems"])
    if edited is None:
        return {}
    return {"subproblems": edited, "selection": {**state.get("selection", {}), "method": "human"}}


def reviewed_subproblems(decision: Any, context: Context) -> list[str] | None:
    """None to accept D*, else the edited sub-problems; ValueError for anything else."""
    if decision is None or decision is True or (isinstance(decision, str) and decision.strip().lower() in ACCEPT):
        return None
    if isinstance(decision, dict):
        if decision.get("accept"):
            return None
        decision = decision.get("subproblems")
    steps: list[str] = []
    if isinstance(decision, list):
        steps = [str(s).strip() for s in decision if str(s).strip()]
        if steps and len(steps) <= context.max_subproblems:
            return steps
    got = f"{len(steps)} sub-problems" if isinstance(decision, list) else repr(decision)[:100]
    raise ValueError(f"review: resume with 'accept' or 1 to {context.max_subproblems} sub-problem strings, got {got}")


def after_select(state: State) -> Literal["review", "assess"]:
    """Human review of D* when the run asks for it, else straight to Eq. 3."""
    return "review" if run_context().review else "assess"
