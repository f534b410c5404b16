"""Equal-compute comparisons: the methods at the same per-problem token budget.

For the runs made with a budget (``scale eval --budget 4096,8192,…``, :mod:`scale_graph.budget`):

- the **equal-budget table**: per budget and method, Acc, the mean completion tokens a sample
  actually used (Tok) and the share of samples that hit the budget (``budget_reached``);
- the **frontier plot** (``accuracy_vs_tokens_frontier.png``): accuracy against the tokens
  actually used, one series per method, each with its Pareto frontier (the points no cheaper
  run of that method beats), and the budgets marked.

The rule every method keeps is stated under the table (:data:`RULE`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scale_graph.evaluation.metrics import run_metrics

FRONTIER_PLOT = "accuracy_vs_tokens_frontier.png"

#: The one rule of the comparison, printed with the table.
RULE = ("Equal budget: every call of every method is clamped to what is left of the per-problem budget "
        "(all completion tokens, forced answers and SCALE's planning included); a thinking call keeps a short "
        "reserve for its forced answer. CoT's one call gets the whole budget, majority's votes share it (fewer "
        "votes when each could not think 1,024 tokens), InftyThink stops iterating when the next iteration would "
        "cross it, SCALE plans it over its sub-problems by difficulty.")


@dataclass
class BudgetPoint:
    """One run with a budget: what it scored and what it spent."""

    label: str  # the method (SCALE with its τ when runs of several τ are shown)
    dataset: str
    budget: int
    accuracy: float | None  # %
    tokens: float | None  # mean completion tokens per completed sample
    reached: float | None  # % of completed samples that hit the budget
    samples: int


def budget_points(runs: Iterable[Any]) -> list[BudgetPoint]:
    """The runs made with a per-problem budget, as points (runs without one are left out)."""
    budgeted = [run for run in runs if (run.config or {}).get("budget")]
    thresholds = {run.config.get("threshold") for run in budgeted if run.method == "scale"}
    points = []
    for run in budgeted:
        metrics = run_metrics(run)
        label = run.method + (f" τ={run.config.get('threshold'):g}" if run.method == "scale" and len(thresholds) > 1 else "")
        points.append(BudgetPoint(label, run.dataset, int(run.config["budget"]), metrics.accuracy, metrics.tok,
                                  metrics.budget_reached, metrics.samples))
    return points


def equal_budget_rows(points: Sequence[BudgetPoint]) -> tuple[str, list[str], list[list[str]]]:
    """Title, headers and rows of the equal-budget table: by dataset and budget, best Acc first."""
    ordered = sorted(points, key=lambda p: (p.dataset, p.budget, -(p.accuracy or 0.0), p.label))
    rows = [[f"{p.budget:,}", p.label, p.dataset, _num(p.accuracy, "{:.1f}"), _num(p.tokens), _num(p.reached, "{:.0f}"),
             str(p.samples)] for p in ordered]
    return ("Equal budget: accuracy at the same per-problem token budget",
            ["budget", "method", "dataset", "Acc (%)", "Tok used", "hit budget (%)", "samples"], rows)


def frontier(points: Sequence[BudgetPoint]) -> list[BudgetPoint]:
    """The Pareto frontier of ``points``: by tokens used, each more accurate than every cheaper one."""
    best, kept = float("-inf"), []
    for point in sorted((p for p in points if p.tokens is not None and p.accuracy is not None),
                        key=lambda p: (p.tokens, -p.accuracy)):
        if point.accuracy > best:
            kept.append(point)
            best = point.accuracy
    return kept


def frontier_plot(points: Sequence[BudgetPoint], out_dir: Path) -> list[Path]:
    """``accuracy_vs_tokens_frontier.png`` in ``out_dir`` (nothing when no run had a budget)."""
    drawn = [p for p in points if p.tokens is not None and p.accuracy is not None]
    if not drawn:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[BudgetPoint]] = defaultdict(list)
    datasets = {p.dataset for p in drawn}
    for point in drawn:
        series[point.label, point.dataset].append(point)
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for (label, dataset), members in series.items():
        name = label + (f" · {dataset}" if len(datasets) > 1 else "")
        dots = axis.scatter([p.tokens for p in members], [p.accuracy for p in members], label=name, alpha=0.7)
        edge = frontier(members)
        axis.step([p.tokens for p in edge], [p.accuracy for p in edge], where="post", color=dots.get_facecolor()[0])
        for p in members:
            axis.annotate(f"{p.budget:,}", (p.tokens, p.accuracy), fontsize="x-small", xytext=(3, 3),
                          textcoords="offset points")
    axis.set_xscale("log", base=2)
    axis.set(xlabel="tokens actually used per problem (mean completion tokens)", ylabel="Acc (%)", ylim=(0, 100),
             title="Accuracy vs tokens at equal budgets (labels: budget), with each method's frontier")
    axis.legend(fontsize="small")
    figure.tight_layout()
    path = out_dir / FRONTIER_PLOT
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


__all__ = ["FRONTIER_PLOT", "RULE", "BudgetPoint", "budget_points", "equal_budget_rows", "frontier", "frontier_plot"]
