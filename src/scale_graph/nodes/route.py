"""Eq. 4: d_i ≤ τ → System 1, d_i > τ → System 2."""

from __future__ import annotations

from typing import Literal

from scale_graph.journal import run_context
from scale_graph.state import State


def system_for(difficulty: float, threshold: float) -> Literal[1, 2]:
    """Eq. 4: m_i = System 2 if d_i > τ else System 1."""
    # τ = 0 is the "System 2 for everything" setting; Eq. 4 alone would still send d_i = 0 to System 1.
    return 2 if difficulty > threshold or threshold == 0.0 else 1


def route(state: State) -> Literal["solve_system1", "solve_system2"]:
    """Eq. 4, unless the step's system was forced (a fork, :mod:`scale_graph.forks`) or the run's
    token budget cannot afford System 2 (``routed_by_budget``, set by the assessment)."""
    step = state["steps"][state.get("solved", 0)]
    forced = step.get("forced_system")
    if forced in (1, 2):
        system = forced
    elif step.get("routed_by_budget"):
        system = 1
    else:
        system = system_for(step["difficulty"], run_context().threshold)
    return "solve_system2" if system == 2 else "solve_system1"


def next_subproblem(state: State) -> Literal["assess", "finalize"]:
    """Eq. 5 loop: assess s_{i+1} with C_{i+1}, or finish after s_n — or as soon as the run's
    token budget is reached (its answer is then the last one it has)."""
    if state.get("budget_reached"):
        return "finalize"
    return "assess" if state.get("solved", 0) < len(state["subproblems"]) else "finalize"
