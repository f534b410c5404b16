"""`scale calibrate` end to end against the fake server on a tiny evaluation (2 problems × 1 sample,
3 sub-problems): table, plot and JSONL written, a re-run makes no call; the statistics and the
best τ on hand-made labels; the work bounds (--sample, --max-tokens)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scale_graph.calibrate import Labelled, Side
from scale_graph.calibrate_report import report
from tests.support.cli import scale

#: By sub-problem number: with τ = 0.5 the evaluation routes 1, 2, 1.
DIFFICULTY = {1: 0.15, 2: 0.75, 3: 0.35}


def difficulty_of(body: dict[str, Any]) -> float:
    number = re.search(r"difficulty of sub-problem (\d+)", str(body["messages"][-1]["content"]))
    return DIFFICULTY.get(int(number.group(1)) if number else 1, 0.5)


@pytest.fixture
def evaluated(fake_server, endpoint_env, data_dir):
    """A finished SCALE evaluation `tiny` of aime25's 2 problems, 1 sample each."""
    fake_server.configure(difficulties=difficulty_of, subproblem_count=3)
    result = scale("eval", "--dataset", "aime25", "--data-dir", str(data_dir), "--samples", "1", "--threshold", "0.5",
                   "-k", "2", "--name", "tiny")
    assert result.exit_code == 0, result.output
    fake_server.reset()
    return fake_server


def test_calibrate_end_to_end_writes_table_plot_jsonl_and_resumes_without_calls(evaluated, tmp_path):
    result = scale("calibrate", "tiny", "--out", "cal", "--concurrency", "4")
    assert result.exit_code == 0, result.output
    assert "routing calibration of tiny" in result.stdout and "τ maximising accuracy" in result.stdout
    made = evaluated.stats()["log"]
    # 2 problems × 3 sub-problems, each forked to the other system; no decomposition or selection again
    assert {entry["stage"] for entry in made} <= {"difficulty", "solve"} and made
    folder = tmp_path / "cal"
    for name in ("calibration.md", "calibration.json", "calibration.png", "labels.jsonl"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2 and all(row["paired"] for row in rows)
    for row in rows:
        assert set(row) >= {"problem", "previous", "subproblem", "difficulty", "system", "correct", "subproblem_tokens",
                            "run_tokens", "thread_id"}
    by_subproblem: dict[tuple, set[int]] = {}
    for row in rows:
        by_subproblem.setdefault((row["problem_id"], row["index"]), set()).add(row["system"])
        assert row["difficulty"] == DIFFICULTY[row["index"] + 1]
        assert len(row["previous"]) == row["index"]
        assert all(earlier["solution"] and earlier["result"] in earlier["solution"] for earlier in row["previous"])
    assert all(systems == {1, 2} for systems in by_subproblem.values())
    shown = json.loads((folder / "calibration.json").read_text())
    assert shown["paired"] == 6 and shown["counts"]["made"] == 6
    assert {b["low"] for b in shown["bins"] if b["n"]} == {0.1, 0.3, 0.7}
    assert shown["best_tau_accuracy"] is not None and shown["best_tau_accuracy_per_token"] is not None

    evaluated.reset()
    again = scale("calibrate", "tiny", "--out", "cal", "--json")
    assert again.exit_code == 0, again.output
    assert evaluated.stats()["requests"] == 0  # every fork is found finished: no call
    repeated = json.loads(again.stdout)
    assert repeated["counts"]["reused"] == 6 and repeated["counts"]["made"] == 0
    assert repeated["bins"] == shown["bins"] and repeated["taus"] == shown["taus"]


def test_calibrate_bounds_the_work(evaluated):
    sampled = scale("calibrate", "tiny", "--out", "s", "--sample", "2", "--json")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout)["counts"] == {"forks": 2, "made": 2, "reused": 0, "skipped_budget": 0, "busy": 0,
                                                    "failed": 0, "not_finished": 0}
    budget = scale("calibrate", "tiny", "--out", "b", "--max-tokens", "1", "--concurrency", "1", "--json")
    assert budget.exit_code == 0, budget.output
    counts = json.loads(budget.stdout)["counts"]
    # the 2 forks of the sample are finished (they count against the budget): nothing new is started
    assert (counts["reused"], counts["made"], counts["skipped_budget"]) == (2, 0, 4)


@pytest.mark.parametrize("args, message", [
    (["nothing"], "no run named 'nothing'"),
    (["tiny", "--sample", "0"], "--sample must be at least 1"),
    (["tiny", "--bin-width", "0"], "--bin-width must be within"),
])
def test_calibrate_refuses_bad_input_in_one_line(evaluated, args, message):
    result = scale("calibrate", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def _label(difficulty: float, correct1: bool, correct2: bool, tokens1: int = 100, tokens2: int = 1000) -> Labelled:
    label = Labelled("p", 0, 0, "problem", "sub", [], difficulty)
    label.sides[1] = Side(1, "a", None, correct1, False, tokens1 // 2, tokens1)
    label.sides[2] = Side(2, "b", None, correct2, False, tokens2 // 2, tokens2)
    return label


def test_report_bins_and_best_thresholds():
    # easy sub-problems: System 1 as good; hard ones (≥ 0.6): only System 2 gets them right
    labels = [_label(0.05, True, True), _label(0.15, True, True), _label(0.65, False, True), _label(0.85, False, True),
              _label(0.45, True, False)]
    unpaired = Labelled("p", 0, 1, "problem", "sub", [], 0.5)
    unpaired.sides[1] = Side(1, "a", None, True, False, 1, 1)
    shown = report([*labels, unpaired], 0.1)
    assert shown["paired"] == 5 and shown["labelled"] == 6 and len(shown["bins"]) == 10
    hard = shown["bins"][6]
    assert (hard["n"], hard["p_correct_s1"], hard["p_correct_s2"], hard["gain_s2"]) == (1, 0.0, 1.0, 1.0)
    assert shown["bins"][4]["gain_s2"] == -1.0 and shown["bins"][2]["n"] == 0 and shown["bins"][2]["gain_s2"] is None
    # τ in [0.5, 0.6] routes exactly the hard ones to System 2: all 5 right; the cheapest of those wins
    assert shown["best_tau_accuracy"] == 0.6
    by_tau = {t["tau"]: t for t in shown["taus"]}
    assert by_tau[0.5]["accuracy"] == by_tau[0.6]["accuracy"] == 1.0 and by_tau[1.0]["accuracy"] == 0.6
    assert by_tau[0.0]["system2_share"] == 1.0
    assert shown["best_tau_accuracy_per_token"] == 1.0  # System 1 everywhere: 60 % at a tenth of the tokens


def test_a_failed_fork_exits_non_zero_and_a_re_run_completes_it(evaluated):
    evaluated.inject("400", times=1, stage="solve")
    failed = scale("calibrate", "tiny", "--out", "f", "--concurrency", "1", "--json")
    assert failed.exit_code == 1 and "1 fork(s) failed" in failed.output and "Traceback" not in failed.output
    first = json.loads(failed.stdout)
    assert first["counts"]["failed"] == 1 and first["counts"]["made"] == 5 and first["paired"] == 5
    retried = scale("calibrate", "tiny", "--out", "f", "--json")
    assert retried.exit_code == 0, retried.output
    counts = json.loads(retried.stdout)["counts"]
    assert (counts["made"], counts["reused"], counts["failed"]) == (1, 5, 0)


def test_calibrate_against_another_run_database_is_refused_and_keeps_earlier_outputs(evaluated, tmp_path):
    first = scale("calibrate", "tiny", "--out", "cal", "--sample", "1")
    assert first.exit_code == 0, first.output
    folder = tmp_path / "cal"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    other = scale("solve", "What is 1+1?", "-k", "2", "--db", "other.db", "--thread-id", "unrelated")
    assert other.exit_code == 0, other.output
    evaluated.reset()
    result = scale("calibrate", "tiny", "--out", "cal", "--db", "other.db")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint database other.db holds none of the 2 runs "
                                                   "of evaluation 'tiny'"), lines
    assert evaluated.stats()["requests"] == 0
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
