"""The paper's metrics of a run, from its stored results.

- **Acc**: pass@1 over **every attempted sample** — per problem the fraction of correct
  samples, averaged over problems (%), with its standard error over problems. A failed sample
  (endpoint error, timeout) and an ungraded one (the grader could not decide) count in the
  denominator and are never correct; both are counted beside Acc (``failed``, ``ungraded``).
  Majority voting (the paper's protocol) has one sample per problem, its vote: Acc is then the
  fraction of problems whose vote is correct.
- **Tok**: mean total response (completion) tokens per completed (not failed) problem sample,
  split into solving and SCALE's overhead (decompose, select, assess); forced-answer
  follow-ups count.
- **Tpi**: response tokens per iteration — per sub-problem solved (SCALE), per iteration
  (InftyThink, summaries included, as the official model writes them in the same generation),
  per sample (majority voting: Tok / k; CoT: Tok).
- **Hard**: % of solved sub-problems routed to System 2 (SCALE only).
- **Iterations**: mean iterations per completed sample (InftyThink: reasoning rounds per problem).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Protocol

OVERHEAD_STAGES = ("decompose", "select", "assess")


class ResultLike(Protocol):
    problem_id: str
    correct: bool
    completion_tokens: int
    tokens_by_stage: dict[str, dict[str, int]]
    iterations: int
    hard: int | None
    error: str | None
    ungraded: bool | None
    degraded: list[str] | None


@dataclass
class Metrics:
    problems: int  # problems with at least one attempted sample
    samples: int  # attempted samples: Acc's denominator
    failed: int  # samples that ended in an error (re-run the evaluation to retry them)
    ungraded: int  # samples whose answer the grader could not decide (never counted correct)
    degraded: int  # samples that ran with a feature the server refused
    iterations: float | None  # mean iterations per completed sample
    accuracy: float | None  # %
    accuracy_se: float | None  # percentage points
    tpi: float | None
    tok: float | None
    tok_solve: float | None
    tok_overhead: float | None
    hard: float | None  # %


@dataclass
class RunMetrics(Metrics):
    """A run's metrics with what identifies it in tables and plots."""

    name: str = ""
    method: str = ""
    dataset: str = ""
    model: str = ""
    threshold: float | None = None
    budget: int | None = None  # the per-call thinking budget (InftyThink: per iteration)
    force_answer: bool | None = None  # the forced-answer policy (None: a run from before it was recorded)
    thinking: str = ""  # the thinking_flag the samples ran with: "on", "off", "mixed" or "" (not recorded)
    token_budget: int | None = None  # the per-problem token budget every sample kept (None: off)
    budget_reached: float | None = None  # % of completed samples cut short by that budget

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute(results: Iterable[ResultLike]) -> Metrics:
    """Acc, Tpi, Tok and Hard of a set of results (see the module docstring)."""
    results = list(results)
    graded = [r for r in results if r.error is None]  # completed: what Tok, Tpi and Hard describe
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        by_problem[result.problem_id].append(result.error is None and bool(result.correct) and not result.ungraded)
    per_problem = [sum(marks) / len(marks) for marks in by_problem.values()]
    overhead = [sum((r.tokens_by_stage or {}).get(stage, {}).get("completion_tokens", 0) for stage in OVERHEAD_STAGES)
                for r in graded]
    solve_tokens = sum(r.completion_tokens for r in graded) - sum(overhead)
    iterations = sum(r.iterations for r in graded)
    routed = [r for r in graded if r.hard is not None]
    routed_iterations = sum(r.iterations for r in routed)
    return Metrics(
        problems=len(by_problem), samples=len(results), failed=len(results) - len(graded),
        ungraded=sum(bool(r.ungraded) for r in graded), degraded=sum(bool(r.degraded) for r in results),
        iterations=iterations / len(graded) if graded else None,
        accuracy=100 * statistics.fmean(per_problem) if per_problem else None,
        accuracy_se=100 * statistics.stdev(per_problem) / math.sqrt(len(per_problem)) if len(per_problem) > 1 else None,
        tpi=solve_tokens / iterations if iterations else None,
        tok=statistics.fmean(r.completion_tokens for r in graded) if graded else None,
        tok_solve=solve_tokens / len(graded) if graded else None,
        tok_overhead=statistics.fmean(overhead) if graded else None,
        hard=100 * sum(r.hard for r in routed) / routed_iterations if routed_iterations else None,
    )


def run_metrics(run: Any) -> RunMetrics:
    """Metrics of a stored run (``store.Run``), labelled with its method, dataset and parameters."""
    config = run.config or {}
    budget = config.get("inftythink_max_tokens" if run.method == "inftythink" else "system2_max_tokens")
    flags = {r.thinking_flag for r in run.results if getattr(r, "thinking_flag", None) is not None}
    thinking = "mixed" if len(flags) > 1 else {True: "on", False: "off"}.get(next(iter(flags), None), "")
    completed = [r for r in run.results if r.error is None]
    reached = (100 * sum(bool(getattr(r, "budget_reached", False)) for r in completed) / len(completed)
               if completed and config.get("budget") else None)
    return RunMetrics(**asdict(compute(run.results)), name=run.name, method=run.method, dataset=run.dataset,
                      model=config.get("system2_model", ""), threshold=config.get("threshold"), budget=budget,
                      force_answer=config.get("force_answer"), thinking=thinking,
                      token_budget=config.get("budget") or None, budget_reached=reached)
