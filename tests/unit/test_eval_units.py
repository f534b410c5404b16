"""Evaluation building blocks without a server: datasets, grading, voting, metrics, report files."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from scale_graph.errors import InputError
from scale_graph.evaluation import datasets, grading
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.grading import grade
from scale_graph.evaluation.methods import Outcome, Setup, answer_of, thread_id, vote
from scale_graph.evaluation.metrics import compute, run_metrics
from scale_graph.evaluation.report import report
from scale_graph.evaluation.runner import plan
from scale_graph.evaluation.store import ResultsStore
from scale_graph.servers.chat import Choice
from scale_graph.settings import ConfigError
from tests.support.datasets import DATASETS, write_datasets

DATA = Path("data")  # written into each test's folder by the preset_files fixture


@pytest.fixture(autouse=True)
def preset_files(isolated):
    """The small preset files of ``tests.conftest.DATASETS`` in ``./data`` of the test's folder."""
    return write_datasets(isolated / "data")


# ---- datasets ------------------------------------------------------------------------------
def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_presets_from_a_data_dir_and_from_the_environment(monkeypatch):
    aime = datasets.load("aime24", DATA)
    assert aime.name == "aime24" and len(aime.problems) == len(DATASETS["aime24"])
    assert aime.problems[0].id == "aime24-1" and aime.problems[0].answer == "204"
    assert aime.problems[2].answer == "\\frac{1}{2}"
    monkeypatch.setenv("SCALE_DATA_DIR", str(DATA))
    assert len(datasets.load("amc23").problems) == len(DATASETS["amc23"])


def test_field_variants(tmp_path):
    path = write(tmp_path / "mixed.jsonl",
                 '{"idx": 7, "question": "Q1", "final_answer": "3"}',
                 '',
                 '{"unique_id": "test/x.json", "problem": "Q2", "solution": "so \\\\boxed{\\\\frac{1}{2}} done"}',
                 '{"problem": "Q3", "answer": 27.0}',
                 '{"Problem": "Q4", "Answer": "x+1", "solution": "ignored"}')
    loaded = datasets.load(str(path))
    assert loaded.name == "mixed"
    assert [(p.id, p.problem, p.answer) for p in loaded.problems] == [
        ("7", "Q1", "3"), ("test/x.json", "Q2", "\\frac{1}{2}"), ("3", "Q3", "27"), ("4", "Q4", "x+1")]


@pytest.mark.parametrize("lines, message", [
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": '], "line 2: not valid JSON"),
    (['{"answer": "1"}'], "line 1: no problem text"),
    (['{"problem": "a"}'], "line 1: no answer"),
    (['{"problem": "a", "answer": ""}'], "line 1: no answer"),
    (['[1, 2]'], "expected a JSON object"),
    (['{"id": 1, "problem": "a", "answer": "1"}', '{"id": "1", "problem": "b", "answer": "2"}'], "duplicate id '1'"),
    ([''], "has no problems"),
])
def test_malformed_files_give_one_line_errors(tmp_path, lines, message):
    path = write(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        datasets.load(str(path))
    assert "\n" not in str(caught.value)


def test_missing_file_missing_preset_file_and_no_hub(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="neither a preset"):
        datasets.load(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match=r"aime25\.jsonl does not exist"):
        datasets.load("aime25", tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(InputError, match="needs the Hugging Face `datasets` library.*--data-dir"):
        datasets.load("aime24")


def test_hub_offline_and_hub_rows(monkeypatch):
    def offline(name):
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(InputError, match="cannot load HuggingFaceH4/aime_2024 .*ConnectionError.*--data-dir"):
        datasets.load("aime24")
    rows = {"test": [{"question": "What?", "answer": 5.0}]}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda name: rows))
    assert datasets.load("amc23").problems == [Problem("1", "What?", "5")]


# ---- grading and voting ---------------------------------------------------------------------
@pytest.mark.parametrize("gold, answer, correct, note", [
    ("\\frac{1}{2}", "0.5", True, "equivalent"),
    ("0.5", "1/2", True, "equivalent"),
    ("\\frac{1}{2}", "\\dfrac12", True, "equivalent"),
    ("025", "25", True, "equivalent"),
    ("25", "025", True, "equivalent"),
    ("27", "27.0", True, "equivalent"),
    ("204", "$204$", True, "equivalent"),
    ("x^2+1", "1+x^2", True, "equivalent"),
    ("3", "4", False, "not equivalent"),
    ("3", None, False, "no answer"),
    ("3", "  ", False, "no answer"),
])
def test_grading(gold, answer, correct, note):
    assert grade(gold, answer) == grading.Grade(correct, note)


def test_grading_is_safe_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(grade("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join()
    assert results == [grading.Grade(True, "equivalent")]


def test_grading_time_is_bounded_and_a_timeout_is_ungraded_not_wrong(monkeypatch):
    monkeypatch.setattr(grading, "_compare", lambda gold, answer: time.sleep(5))
    started = time.perf_counter()
    verdict = grade("1", "1", timeout=0.2)
    assert verdict == grading.Grade(False, "ungraded: grading timed out after 0.2 s and 0.6 s", ungraded=True)
    assert not verdict.decided and time.perf_counter() - started < 2

    def broken(gold, answer):
        raise RecursionError("deep")

    monkeypatch.setattr(grading, "_compare", broken)
    assert grade("1", "1") == grading.Grade(False, "grading failed: RecursionError: deep")


def test_a_timed_out_comparison_is_retried_once_with_a_longer_limit(monkeypatch):
    """A cold grader (slow first call, as math-verify's under load) still grades correctly."""
    real, calls = grading._compare, []

    def cold_then_warm(gold, answer):
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(0.5)
        return real(gold, answer)

    monkeypatch.setattr(grading, "_compare", cold_then_warm)
    assert grade("\\frac{1}{2}", "0.5", timeout=0.2) == grading.Grade(True, "equivalent")
    assert len(calls) == 2


def test_warm_up_pays_the_first_call_once_in_the_background(monkeypatch):
    started, released = threading.Event(), threading.Event()
    calls = []

    def slow(gold, answer):
        calls.append((gold, answer))
        started.set()
        released.wait(5)

    monkeypatch.setattr(grading, "_compare", slow)
    monkeypatch.setattr(grading, "_warm_started", False)
    before = time.perf_counter()
    grading.warm_up()
    grading.warm_up()
    assert time.perf_counter() - before < 0.5  # returns at once
    assert started.wait(5)
    released.set()
    assert len(calls) == 1


def test_vote_groups_equivalent_answers_skips_empty_and_breaks_ties_by_first_seen():
    assert vote(["3", "\\frac{1}{2}", None, "0.5", "", "1/2", "3"]) == "\\frac{1}{2}"
    assert vote(["4", "3", "3", "4"]) == "4"
    assert vote(["7"]) == "7"
    assert vote([None, " ", ""]) is None


def test_answer_taken_from_reasoning_only_when_the_answer_text_is_empty():
    assert answer_of(Choice("so \\boxed{5}", "maybe \\boxed{4}", "stop")) == "5"
    assert answer_of(Choice("", "cut off ... \\boxed{4} and then", "length")) == "4"
    assert answer_of(Choice("no box here", "\\boxed{4}", "stop")) is None


def test_thread_ids_are_stable_distinct_and_store_safe():
    first = thread_id("scale-aime24-t0.2", "a.b", 1)
    assert first == thread_id("scale-aime24-t0.2", "a.b", 1)
    assert "." not in first and first.startswith("eval/scale-aime24-t0_2/a_b/1#")
    assert first != thread_id("scale-aime24-t0_2", "a_b", 1)


@pytest.mark.parametrize("run, problem_id", [
    ("my eval", "p 1"), ("my\teval", "p\n1"), ("r", "x" * 300), ("n" * 300, "p 1"), ("n" * 300, "é" * 300),
])
def test_thread_ids_from_any_name_and_id_are_valid(run, problem_id):
    """Spaces, whitespace and long ids gave thread ids the runner refuses, failing every SCALE sample."""
    from scale_graph.runner import validate_thread_id

    made = thread_id(run, problem_id, 3)
    assert validate_thread_id(made) == made and len(made) <= 200
    assert made != thread_id(run, problem_id + " ", 3) and made != thread_id(run, problem_id, 4)


# ---- planning -------------------------------------------------------------------------------
def test_sweeps_expand_to_one_run_per_value():
    aime, amc = datasets.Dataset("aime24", []), datasets.Dataset("amc23", [])
    names = [p.name for p in plan([aime], ["scale", "cot"], params={}, thresholds=[0.2, 0.3], budgets=[4096, 8192])]
    assert names == ["scale-aime24-t0.2-b4096", "scale-aime24-t0.3-b4096", "scale-aime24-t0.2-b8192",
                     "scale-aime24-t0.3-b8192", "cot-aime24-b4096", "cot-aime24-b8192"]
    runs = plan([aime, amc], ["cot"], params={}, name="mine")
    assert [p.name for p in runs] == ["mine-aime24", "mine-amc23"]
    single = plan([aime], ["scale"], params={"candidates": 3}, thresholds=[0.4], name="mine")[0]
    assert single.name == "mine" and single.setup.context.threshold == 0.4 and single.setup.context.candidates == 3
    with pytest.raises(InputError, match="unknown method 'best'"):
        plan([aime], ["scale", "best"], params={})
    with pytest.raises(ConfigError, match="threshold must be within"):
        plan([aime], ["scale"], params={}, thresholds=[1.5])
    with pytest.raises(ConfigError, match="votes must be at least 1"):
        plan([aime], ["majority"], params={"votes": 0})


def test_a_budget_sweep_sets_every_methods_per_call_budget():
    """InftyThink's per-iteration budget is its own parameter; a budget sweep must move it too."""
    runs = plan([datasets.Dataset("d", [])], ["cot", "majority", "inftythink", "scale"], params={}, budgets=[1024, 2048])
    budgets = {run.name: (run.setup.context.system2_max_tokens, run.setup.context.inftythink_max_tokens) for run in runs}
    assert budgets["inftythink-d-b1024"] == (1024, 1024) and budgets["inftythink-d-b2048"] == (2048, 2048)
    assert {budgets[f"{m}-d-b2048"][0] for m in ("cot", "majority", "scale")} == {2048}
    shown = [run_metrics(SimpleNamespace(name=r.name, method=r.method, dataset="d", config=r.setup.config(r.method),
                                         results=[])).budget for r in runs]
    assert shown == [1024, 2048] * 4


def test_baseline_configs_hold_only_what_the_baseline_uses_and_the_policy():
    context = plan([datasets.Dataset("d", [])], ["cot"], params={"votes": 5})[0].setup.context
    setup = Setup("r", context)
    assert "threshold" not in setup.config("cot") and setup.config("majority")["votes"] == 5
    assert setup.config("scale")["threshold"] == 0.2 and "request_timeout" not in setup.config("scale")
    assert "votes" not in setup.config("scale") and "votes" not in setup.config("cot")
    infty = setup.config("inftythink")
    assert (infty["inftythink_max_tokens"], infty["inftythink_max_iterations"]) == (8192, 50)
    assert "system2_max_tokens" not in infty
    assert all(setup.config(m)["force_answer"] is True for m in ("scale", "cot", "majority", "inftythink"))


# ---- metrics --------------------------------------------------------------------------------
def result(problem, correct, tokens, iterations, hard=None, error=None, stages=None, ungraded=False, degraded=None):
    return SimpleNamespace(problem_id=problem, correct=correct, completion_tokens=tokens, iterations=iterations,
                           hard=hard, error=error, tokens_by_stage=stages or {"solve_system2": {"completion_tokens": tokens}},
                           ungraded=ungraded, degraded=degraded)


def test_scale_metrics_split_overhead_and_count_hard_subproblems():
    results = [
        result("a", True, 100, 3, hard=2, stages={"decompose": {"completion_tokens": 10}, "assess": {"completion_tokens": 5},
                                                   "solve_system2": {"completion_tokens": 85}}),
        result("a", False, 50, 2, hard=0, stages={"select": {"completion_tokens": 5}, "solve_system1": {"completion_tokens": 45}}),
        result("b", True, 60, 1, hard=1),
        result("b", False, 0, 0, error="EndpointError: down"),
    ]
    m = compute(results)
    assert (m.problems, m.samples, m.failed) == (2, 4, 1)
    assert m.accuracy == pytest.approx(50.0)  # problem a: 1/2, problem b: 1/2 (the failure is wrong)
    assert m.accuracy_se == pytest.approx(0.0)
    assert m.tok == pytest.approx(70.0) and m.tok_overhead == pytest.approx(20 / 3)
    assert m.tok_solve == pytest.approx(70.0 - 20 / 3)
    assert m.tpi == pytest.approx(190 / 6)  # solving tokens per sub-problem solved
    assert m.hard == pytest.approx(50.0)  # 3 of 6 sub-problems on System 2


def test_baseline_metrics_tpi_is_tok_per_iteration():
    cot = compute([result("a", True, 700, 1), result("b", False, 900, 1)])
    assert cot.tpi == cot.tok == 800 and cot.hard is None and cot.tok_overhead == 0
    majority = compute([result("a", True, 8000, 8), result("b", True, 8800, 8)])
    assert majority.tok == 8400 and majority.tpi == 8400 / 8 and majority.accuracy == 100
    infty = compute([result("a", True, 6000, 6, stages={"solve_system2": {"completion_tokens": 5000},
                                                         "summarize": {"completion_tokens": 1000}})])
    assert infty.tpi == 1000 and infty.tok_overhead == 0 and infty.accuracy_se is None


def test_metrics_of_nothing_graded():
    m = compute([result("a", False, 0, 0, error="boom")])
    assert (m.samples, m.failed, m.accuracy, m.tok, m.tpi, m.hard) == (1, 1, 0.0, None, None, None)


def test_acc_counts_every_sample_failed_and_ungraded_ones_as_not_correct():
    """A failed sample used to vanish from Acc: a method that fails on hard problems looked better."""
    m = compute([result("a", True, 10, 1), result("a", False, 0, 0, error="EndpointError: down"),
                 result("b", True, 10, 1), result("b", False, 10, 1, ungraded=True, degraded=["degraded: x"])])
    assert (m.samples, m.failed, m.ungraded, m.degraded) == (4, 1, 1, 1)
    assert m.accuracy == pytest.approx(50.0) and m.tok == pytest.approx(10.0) and m.iterations == 1.0
    # an ungraded result is never correct, even if a stale flag says so
    assert compute([result("a", True, 10, 1, ungraded=True)]).accuracy == 0.0


# ---- store and report -----------------------------------------------------------------------
def stored_runs(tmp_path):
    store = ResultsStore(str(tmp_path / "results.db"))
    specs = [("scale-t0.2", "scale", {"threshold": 0.2, "system2_max_tokens": 4096}, [True, True], 2),
             ("scale-t0.5", "scale", {"threshold": 0.5, "system2_max_tokens": 4096}, [True, False], 0),
             ("cot", "cot", {"system2_max_tokens": 4096}, [False, True], None)]
    for name, method, config, marks, hard in specs:
        run_id = store.open_run(name, method, "aime24", config)
        for index, correct in enumerate(marks):
            outcome = Outcome(answer="1", usage={"solve_system2": {"calls": 1, "prompt_tokens": 5, "completion_tokens": 100,
                                                                  "reasoning_tokens": 90}},
                              iterations=2 if method == "scale" else 1, subproblems=2, hard=hard)
            store.save(run_id, Problem(f"p{index}", "?", "1"), 0, outcome, grading.Grade(correct, "x"))
    return store


def test_report_tables_plots_and_exports(tmp_path):
    store = stored_runs(tmp_path)
    console = Console(record=True, width=200)
    written = report(store.runs(), console=console, out_dir=tmp_path / "out", markdown=True,
                     csv_path=tmp_path / "m.csv", json_path=tmp_path / "m.json")
    names = {p.name for p in written}
    assert names == {"report.md", "accuracy_vs_threshold.png", "accuracy_vs_budget.png", "accuracy_vs_tokens.png",
                     "m.csv", "m.json"}
    assert all(p.stat().st_size > 0 for p in written)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written if p.suffix == ".png")
    text = console.export_text()
    assert "Comparison (paper Table 1)" in text and "| scale (τ=0.2) | 100.00 ± 0.00 | 50 | 100 |" in text
    assert "| 0.5 | 50.00 ± 50.00 | 100 | 0.00 |" in text  # Table 2: τ, Acc, Tok, Hard
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["name"] for r in rows] == ["scale-t0.2", "scale-t0.5", "cot"] and rows[2]["accuracy"] == "50.0"
    assert json.loads((tmp_path / "m.json").read_text())[0]["hard"] == 100.0


def test_store_refuses_other_settings_under_one_name_and_unknown_runs(tmp_path):
    store = stored_runs(tmp_path)
    assert store.open_run("cot", "cot", "aime24", {"system2_max_tokens": 4096, "system2_base_url": "elsewhere"})
    with pytest.raises(InputError, match="evaluation 'cot' was run with system2_max_tokens=4096, not 8192: use a new "
                                         "--name, or --replace"):
        store.open_run("cot", "cot", "aime24", {"system2_max_tokens": 8192})
    with pytest.raises(InputError, match="no run named 'nope'"):
        store.runs(["nope"])
    assert [r.name for r in store.runs(["scale-*"])] == ["scale-t0.2", "scale-t0.5"]


def test_report_states_the_policy_failures_ungraded_and_unequal_denominators(tmp_path):
    store = ResultsStore(str(tmp_path / "results.db"))
    plain = Outcome(answer="1", usage={"solve_system2": {"calls": 1, "prompt_tokens": 5, "completion_tokens": 100,
                                                         "reasoning_tokens": 0}}, iterations=1)
    cot = store.open_run("cot", "cot", "aime24", {"force_answer": True})
    majority = store.open_run("majority", "majority", "aime24", {"force_answer": False})
    for index in range(2):
        store.save(cot, Problem(f"p{index}", "?", "1"), 0, plain, grading.Grade(True, "equivalent"), thinking_flag=True)
    store.save(cot, Problem("p2", "?", "1"), 0, Outcome(error="EndpointError: down"), grading.Grade(False, "failed"))
    store.save(majority, Problem("p0", "?", "1"), 0, Outcome(answer="1", degraded=["degraded: no n"]),
               grading.Grade(False, "ungraded: timed out", ungraded=True), thinking_flag=False)
    console = Console(record=True, width=300)
    report(store.runs(), console=console, markdown=True)
    text = console.export_text()
    assert "| cot | 3 | 3 | 1 | 0 | 66.67 ± 33.33 |" in text  # the failed sample is in the denominator
    assert "66.67 ± 33.33 (1 failed)" in text and "0.00 (1 ungraded)" in text
    assert "runs differ in forced-answer policy (off: majority; on: cot)" in text
    assert "on aime24 the runs have different denominators (cot: 3 samples of 3 problems, majority: 1 samples" in text
    assert "failed 1, ungraded 1" in text and "degraded samples (a feature the server refused) in majority" in text
    assert "thinking_flag off) for some samples: majority" in text


def test_report_says_one_policy_when_all_runs_share_it(tmp_path):
    console = Console(record=True, width=300)
    store = stored_runs(tmp_path)  # configs from before the policy was recorded
    report(store.runs(), console=console, markdown=True)
    assert "forced-answer policy: not recorded for every run shown" in console.export_text()


def test_an_older_results_database_gets_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    store = ResultsStore(str(path))
    run_id = store.open_run("cot", "cot", "aime24", {})
    store.save(run_id, Problem("p0", "?", "1"), 0, Outcome(answer="1"), grading.Grade(True, "equivalent"))
    store.close()
    with sqlite3.connect(path) as connection:  # as a database written before these columns existed
        for column in ("ungraded", "thinking_flag", "degraded"):
            connection.execute(f"ALTER TABLE eval_results DROP COLUMN {column}")
    reopened = ResultsStore(str(path))
    (run,) = reopened.runs()
    assert [(r.correct, r.ungraded, r.thinking_flag, r.degraded) for r in run.results] == [(True, False, None, None)]
    assert reopened.finished(run_id) == {("p0", 0): grading.Grade(True, "equivalent")}
    reopened.close()

