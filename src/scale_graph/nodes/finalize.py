"""The final answer: the last \\boxed{} of S(s_n)."""

from __future__ import annotations

from scale_graph import budget
from scale_graph.context import Context
from scale_graph.journal import emit
from scale_graph.state import State


def finalize(state: State, context: Context) -> dict:
    """Answer = last \\boxed{} of S(s_n) (Eq. 6 for i = n); null with a warning when absent."""
    steps = state.get("steps", [])
    answer = steps[-1].get("result") if steps else None
    warnings = [] if answer else ["finalize: the last sub-problem's solution has no \\boxed{} answer"]
    if state.get("budget_reached"):  # the best answer it has: the last \boxed{} it produced
        answer = answer or next((step["result"] for step in reversed(steps) if step.get("result")), None)
        planned = len(state.get("subproblems") or [])
        warnings.append(f"{budget.REACHED}: the run stopped after {state.get('solved', 0)} of {planned} sub-problems; "
                        f"answer {answer!r} is the last \\boxed{{}} it produced")
    emit("finalized", answer=answer)
    # `finished` is how a run is known to have reached its end: an empty `next` is not enough,
    # since LangGraph leaves out of `next` a task whose writes were saved before a crash.
    return {"answer": answer, "warnings": warnings, "finished": True}
