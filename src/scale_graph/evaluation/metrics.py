"""The paper's metrics of a run, from its stored results (failed samples are left out and counted).

- **Acc**: pass@1 — per problem the fraction of correct samples, averaged over problems (%),
  with its standard error over problems.
- **Tok**: mean total response (completion) tokens per problem sample, split into solving and
  SCALE's overhead (decompose, select, assess).
- **Tpi**: solving tokens per iteration — per sub-problem solved (SCALE), per iteration
  (InftyThink, summaries included), per sample (majority voting: Tok / k; CoT: Tok).
- **Hard**: % of solved sub-problems routed to System 2 (SCALE only).
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


@dataclass
class Metrics:
    problems: int  # problems with at least one graded sample
    samples: int  # graded samples
    failed: int  # samples that ended in an error (re-run the evaluation to retry them)
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
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute(results: Iterable[ResultLike]) -> Metrics:
    """Acc, Tpi, Tok and Hard of a set of results (see the module docstring)."""
    results = list(results)
    graded = [r for r in results if r.error is None]
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for result in graded:
        by_problem[result.problem_id].append(bool(result.correct))
    per_problem = [sum(marks) / len(marks) for marks in by_problem.values()]
    overhead = [sum((r.tokens_by_stage or {}).get(stage, {}).get("completion_tokens", 0) for stage in OVERHEAD_STAGES)
                for r in graded]
    solve_tokens = sum(r.completion_tokens for r in graded) - sum(overhead)
    iterations = sum(r.iterations for r in graded)
    routed = [r for r in graded if r.hard is not None]
    routed_iterations = sum(r.iterations for r in routed)
    return Metrics(
        problems=len(by_problem), samples=len(graded), failed=len(results) - len(graded),
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
    return RunMetrics(**asdict(compute(run.results)), name=run.name, method=run.method, dataset=run.dataset,
                      model=config.get("system2_model", ""), threshold=config.get("threshold"),
                      budget=config.get("system2_max_tokens"))
