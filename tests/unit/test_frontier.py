"""The equal-budget table and each method's frontier (scale_graph.evaluation.frontier), from stored-run stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

from scale_graph.evaluation.frontier import (
    BudgetPoint,
    budget_points,
    equal_budget_rows,
    frontier,
    frontier_plot,
)


def result(problem: str, correct: bool, tokens: int, reached: bool) -> SimpleNamespace:
    return SimpleNamespace(problem_id=problem, correct=correct, completion_tokens=tokens, tokens_by_stage={},
                           iterations=1, hard=None, error=None, ungraded=False, degraded=None, thinking_flag=True,
                           budget_reached=reached)


def run(name: str, method: str, budget: int | None, results: list) -> SimpleNamespace:
    config = {"threshold": 0.2, "system2_model": "m", **({"budget": budget} if budget else {})}
    return SimpleNamespace(name=name, method=method, dataset="d", config=config, results=results)


def test_points_rows_and_the_rule_of_the_table():
    runs = [run("cot-2k", "cot", 2000, [result("a", True, 1900, True), result("b", False, 2000, True)]),
            run("scale-2k", "scale", 2000, [result("a", True, 900, False), result("b", True, 1500, True)]),
            run("cot-free", "cot", None, [result("a", True, 9000, False)])]
    points = budget_points(runs)
    assert [(p.label, p.budget, p.accuracy, p.tokens, p.reached) for p in points] == [
        ("cot", 2000, 50.0, 1950.0, 100.0), ("scale", 2000, 100.0, 1200.0, 50.0)]  # the run without a budget is left out
    title, headers, rows = equal_budget_rows(points)
    assert "Equal budget" in title
    assert headers[:6] == ["budget", "method", "dataset", "Acc (%)", "Tok used", "hit budget (%)"]
    assert [row[1] for row in rows] == ["scale", "cot"]  # best Acc first at each budget
    assert rows[0][:6] == ["2,000", "scale", "d", "100.0", "1,200", "50"]


def test_the_frontier_keeps_the_points_no_cheaper_one_beats():
    def point(tokens: float, accuracy: float) -> BudgetPoint:
        return BudgetPoint("m", "d", int(tokens), accuracy, tokens, 0.0, 1)

    edge = frontier([point(4000, 50), point(1000, 20), point(2000, 10), point(8000, 45), point(3000, 30)])
    assert [(p.tokens, p.accuracy) for p in edge] == [(1000, 20), (3000, 30), (4000, 50)]


def test_the_plot_is_written_only_when_a_run_had_a_budget(tmp_path):
    assert frontier_plot([], tmp_path) == []
    (path,) = frontier_plot([BudgetPoint("cot", "d", 2000, 50.0, 1900.0, 100.0, 2)], tmp_path)
    assert path.stat().st_size > 0
