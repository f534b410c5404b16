"""Eq. 4: d_i ≤ τ → System 1, d_i > τ → System 2."""

from __future__ import annotations

from typing import Literal

from scale_graph.journal import run_context


def route(state: dict) -> Literal["solve_system1", "solve_system2"]:
    """Eq. 4: m_i = System 2 if d_i > τ else System 1."""
    difficulty, threshold = state["steps"][state.get("solved", 0)]["difficulty"], run_context().threshold
    # τ = 0 is the "System 2 for everything" setting; Eq. 4 alone would still send d_i = 0 to System 1.
    return "solve_system2" if difficulty > threshold or threshold == 0.0 else "solve_system1"


def next_subproblem(state: dict) -> Literal["assess", "finalize"]:
    """Eq. 5 loop: assess s_{i+1} with C_{i+1}, or finish after s_n."""
    return "assess" if state.get("solved", 0) < len(state["subproblems"]) else "finalize"
