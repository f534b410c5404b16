"""`scale eval` / `scale report` end to end against the fake OpenAI server (real HTTP, no model):
every method, known answers, sweeps, resume after failures and after an interruption, errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from scale_graph.evaluation import datasets
from scale_graph.cli.evaluate import eval_command, report_command
from scale_graph.evaluation.metrics import run_metrics
from scale_graph.evaluation.runner import evaluate, plan
from scale_graph.evaluation.store import ResultsStore
from scale_graph.prompts import COT
from tests.support.cli import scale
from tests.support.datasets import write_datasets
from tests.support.fake_openai import answer_for

DATA = "data"  # written into each test's folder by the preset_files fixture


@pytest.fixture(autouse=True)
def preset_files(isolated):
    """The small preset files of ``tests.conftest.DATASETS`` in ``./data`` of the test's folder."""
    return write_datasets(isolated / "data")


def evaluate_ok(*args: str):
    result = scale("eval", *args)
    assert result.exit_code == 0, result.output
    return result


def metrics(name: str):
    store = ResultsStore()
    try:
        return run_metrics(store.runs([name])[0]), store.runs([name])[0].results
    finally:
        store.close()


def cot_answer(problem: str) -> int:
    """What the fake server boxes for the CoT prompt of ``problem``."""
    return answer_for([{"role": "user", "content": COT.format(problem=problem)}])


@pytest.mark.parametrize("method, extra, requests_per_sample, iterations, samples", [
    ("cot", [], 1, 1, 4),
    ("majority", ["--votes", "3"], 1, 3, 2),  # one request with n=3; the paper's one vote per problem, whatever -n
    ("majority-repeated", ["--votes", "3"], 1, 3, 4),  # -n independent votes per problem
    # 3 cut iterations + 2 summaries + the forced answer after the last one
    ("inftythink", ["--system2-max-tokens", "20", "--max-iterations", "3"], 6, 3, 4),
    ("scale", ["--candidates", "2", "--concurrency", "1"], 8, 3, 4),  # decompose, select, 3 × (assess + solve)
])
def test_each_method_end_to_end(endpoint_env, fake_server, tmp_path, method, extra, requests_per_sample, iterations,
                                samples):
    result = evaluate_ok("--dataset", "aime24", "--data-dir", DATA, "--method", method, "--limit", "2", "--samples", "2",
                         *extra)
    assert "Runs" in result.stdout and "Comparison (paper Table 1)" in result.stdout
    assert fake_server.stats()["requests"] == samples * requests_per_sample
    shown, results = metrics(f"{method}-aime24")
    assert (shown.problems, shown.samples, shown.failed) == (2, samples, 0)
    assert {r.iterations for r in results} == {iterations}
    assert all(r.completion_tokens > 0 for r in results)
    assert all(r.answer is not None and r.grading_note.endswith("equivalent") for r in results)
    if method == "inftythink":  # every iteration was cut while thinking: the answer was forced at the cap
        assert all(r.tokens_by_stage["force_answer"]["calls"] == 1 for r in results)
    if method == "scale":
        assert {r.subproblems for r in results} == {3} and shown.hard is not None and shown.tok_overhead > 0
    else:
        assert shown.hard is None and shown.tok_overhead == 0

    report = scale("report", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "m.json"))
    assert report.exit_code == 0, report.output
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "report.md" in files and "accuracy_vs_tokens.png" in files and "accuracy_vs_budget.png" in files
    assert ("accuracy_vs_threshold.png" in files) == (method == "scale")
    assert all((tmp_path / "out" / name).stat().st_size > 0 for name in files)
    assert json.loads((tmp_path / "m.json").read_text())[0]["samples"] == samples


def test_accuracy_with_known_answers_and_majority_tokens(endpoint_env, fake_server, tmp_path):
    problems = ["What is 6 times 7?", "Count the primes below 30.", "Find the area of a unit square."]
    golds = [f"0{cot_answer(problems[0])}",  # a leading zero: still equal
             f"{cot_answer(problems[1])}.0",  # written as a decimal: still equal
             str(cot_answer(problems[2]) + 1)]  # wrong
    path = tmp_path / "known.jsonl"
    path.write_text("".join(json.dumps({"question": q, "final_answer": g}) + "\n" for q, g in zip(problems, golds)))
    evaluate_ok("--dataset", str(path), "--method", "cot,majority", "--votes", "4", "--samples", "2")
    cot, cot_results = metrics("cot-known")
    majority, _ = metrics("majority-known")
    assert cot.accuracy == pytest.approx(200 / 3) and majority.accuracy == pytest.approx(200 / 3)
    assert sorted((r.problem_id, r.correct, r.grading_note) for r in cot_results) == [
        ("1", True, "equivalent"), ("1", True, "equivalent"), ("2", True, "equivalent"), ("2", True, "equivalent"),
        ("3", False, "not equivalent"), ("3", False, "not equivalent")]
    assert majority.tok == pytest.approx(4 * cot.tok) and majority.tpi == pytest.approx(cot.tpi) == pytest.approx(cot.tok)


def test_threshold_sweep_routes_and_reports(endpoint_env, fake_server, tmp_path):
    fake_server.configure(difficulties=[0.3])
    evaluate_ok("--dataset", "amc23", "--data-dir", DATA, "--threshold", "0.2,0.5", "-k", "2", "--limit", "1",
                "--samples", "1", "--concurrency", "1")
    assert metrics("scale-amc23-t0.2")[0].hard == 100.0  # 0.3 > 0.2: every sub-problem on System 2
    assert metrics("scale-amc23-t0.5")[0].hard == 0.0
    report = scale("report", "scale-amc23-*", "--markdown", "--out", str(tmp_path / "out"))
    assert report.exit_code == 0, report.output
    assert "| 0.2 |" in report.stdout and "| 0.5 |" in report.stdout and "100.00" in report.stdout
    assert (tmp_path / "out" / "accuracy_vs_threshold.png").stat().st_size > 0


def test_failed_samples_are_recorded_and_only_they_are_redone(endpoint_env, fake_server, monkeypatch):
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    fake_server.inject("500", times=1)
    args = ("--dataset", "aime24", "--data-dir", DATA, "--method", "cot", "--limit", "2", "--samples", "2",
            "--concurrency", "1")
    first = scale("eval", *args)
    assert first.exit_code == 1 and "1 problem sample(s) failed" in first.stderr and "HTTP 500" in first.stderr
    assert "re-run the same command" in first.stderr and "Traceback" not in first.output
    assert metrics("cot-aime24")[0].failed == 1 and fake_server.stats()["requests"] == 4
    fake_server.reset()
    evaluate_ok(*args)
    assert fake_server.stats()["requests"] == 1  # only the failed sample
    shown, _ = metrics("cot-aime24")
    assert (shown.samples, shown.failed) == (4, 0)
    fake_server.reset()
    evaluate_ok(*args)
    assert fake_server.stats()["requests"] == 0


def test_scale_problem_resumes_from_its_checkpoints(endpoint_env, fake_server, monkeypatch):
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    fake_server.inject("500", times=1, stage="solve")
    args = ("--dataset", "aime24", "--data-dir", DATA, "--limit", "1", "--samples", "1", "-k", "2")
    assert scale("eval", *args).exit_code == 1
    assert fake_server.stats()["by_stage"]["decomposition"] == 1
    fake_server.reset()
    evaluate_ok(*args)
    stages = fake_server.stats()["by_stage"]
    assert stages["decomposition"] == 0 and stages["selection"] == 0 and stages["solve"] == 3
    shown, results = metrics("scale-aime24")
    assert shown.failed == 0 and results[0].iterations == 3 and results[0].answer


def test_interrupted_evaluation_recomputes_no_finished_result(endpoint_env, fake_server):
    fake_server.configure(latency=0.05)
    small = datasets.Dataset("aime24", datasets.load("aime24", DATA).problems[:2])

    async def run(stop_after: int | None) -> int:
        """Evaluate 2 problems × 4 samples, cancelled once ``stop_after`` results are stored; results stored."""
        runs = plan([small], ["cot"], params={})
        store = ResultsStore()
        run_id = store.open_run(runs[0].name, "cot", "aime24", runs[0].setup.config("cot"))
        work = asyncio.ensure_future(evaluate(runs, store, samples=4, checkpoint_db=Path("scale.db"), concurrency=2))
        if stop_after is not None:
            while not work.done() and len(store.finished(run_id)) < stop_after:
                await asyncio.sleep(0.01)
            work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        stored = len(store.finished(run_id))
        store.close()
        return stored

    finished = asyncio.run(run(stop_after=3))
    assert 3 <= finished < 8
    time.sleep(0.3)  # requests cancelled client-side still finish (and count) at the server
    fake_server.reset()
    assert asyncio.run(run(stop_after=None)) == 8
    # nothing finished is recomputed; a sample whose outcome was kept for other workers
    # (evaluation/claims.py) but not yet stored when the stop came (at most the 2 in flight) needs no call either
    assert 8 - finished - 2 <= fake_server.stats()["requests"] <= 8 - finished


def test_concurrent_scale_problems(endpoint_env, fake_server):
    evaluate_ok("--dataset", "aime24", "--data-dir", DATA, "--limit", "2", "--samples", "2", "-k", "2",
                "--concurrency", "4")
    assert metrics("scale-aime24")[0].failed == 0


@pytest.mark.parametrize("args, message", [
    (["eval", "--dataset", "nope.jsonl"], "neither a preset"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "-m", "cot,best"], "unknown method 'best'"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "-t", "abc"], "--threshold: 'abc' is not a number"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "-t", "0.2,,0.3"], "--threshold: empty item"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "-t", "1.5"], "threshold must be within [0, 1]"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "--system2-max-tokens", "4k"], "'4k' is not an integer"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "--limit", "0"], "--limit must be at least 1"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "--samples", "0"], "samples must be at least 1"),
    (["eval", "-d", "aime24", "--data-dir", DATA, "--results-db", "bogus:://"], "not a valid SQLAlchemy URL"),
    (["eval", "-d", "aime24", "--data-dir", "/nonexistent"], "aime24.jsonl does not exist"),
    (["report"], "does not exist"),
])
def test_bad_input_one_red_line(endpoint_env, args, message):
    result = scale(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_unknown_run_and_missing_endpoints():
    no_endpoints = scale("eval", "-d", "aime24", "--data-dir", DATA, "-m", "cot")
    assert no_endpoints.exit_code == 2 and "scale servers up" in no_endpoints.stderr
    ResultsStore().close()  # an empty results database
    unknown = scale("report", "nope")
    assert unknown.exit_code == 2 and "no run named 'nope'" in unknown.stderr


def test_names_and_ids_with_spaces_or_over_200_characters_complete(endpoint_env, fake_server, tmp_path):
    """A space in the evaluation name or a problem id, or a long id, made every SCALE sample fail."""
    path = tmp_path / "odd ids.jsonl"
    rows = [{"id": "p 1", "problem": "What is 6 times 7?", "answer": "42"},
            {"id": "q" * 300, "problem": "What is 5 squared?", "answer": "25"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluate_ok("--dataset", str(path), "--name", "my eval", "--limit", "2", "--samples", "1", "-k", "2",
                "--concurrency", "1")
    shown, results = metrics("my eval")
    assert (shown.samples, shown.failed) == (2, 0) and all(r.answer for r in results)


def test_failed_samples_count_in_acc_and_are_retried_first(endpoint_env, fake_server, monkeypatch, tmp_path):
    """A failed sample was left out of Acc: two problems, one failed, one right, showed 100 %."""
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    problems = ["What is 6 times 7?", "Count the primes below 30."]
    path = tmp_path / "known.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "problem": q, "answer": str(cot_answer(q))}) + "\n"
                            for i, q in enumerate(problems)))
    args = ("--dataset", str(path), "--method", "cot", "--concurrency", "1")
    fake_server.inject("500", times=1)  # the first sample computed fails (each invocation has an order of its own)
    first = scale("eval", *args, "--samples", "1")
    assert first.exit_code == 1 and "50.00 ± 50.00 (1 failed)" in first.stdout  # failures beside Acc
    shown, results = metrics("cot-known")
    assert (shown.samples, shown.failed, shown.accuracy) == (2, 1, 50.0)
    failed = problems[int(next(result.problem_id for result in results if result.error is not None))]
    # a longer run of the same problems: the failed sample goes before the new ones
    fake_server.reset()
    again = evaluate_ok(*args, "--samples", "2")
    assert "1 retried after an earlier failure" in again.stderr
    first_prompt = fake_server.stats()["log"][0]["body"]["messages"][-1]["content"]
    assert first_prompt == COT.format(problem=failed)
    assert metrics("cot-known")[0].accuracy == 100.0


def test_policy_switch_and_inftythink_budget_reach_the_server_and_the_report(endpoint_env, fake_server, tmp_path):
    evaluate_ok("--dataset", "aime24", "--data-dir", DATA, "--method", "cot,inftythink", "--limit", "1",
                "--samples", "1", "--system2-max-tokens", "20", "--max-iterations", "2", "--no-force-answer")
    log = fake_server.stats()["log"]
    thinking = [entry["body"] for entry in log if entry["body"].get("chat_template_kwargs", {}).get("enable_thinking")]
    assert {body.get("max_tokens") or body.get("max_completion_tokens") for body in thinking} == {20}
    assert len(log) == 1 + 3  # CoT; InftyThink: 2 iterations and a summary, and no forced answers
    report = scale("report", "--markdown", "--out", str(tmp_path / "out"))
    assert "forced-answer policy: off for every run shown" in report.stdout
    assert "| inftythink-aime24 |" in report.stdout
    store = ResultsStore()
    try:
        configs = {run.name: run.config for run in store.runs()}
    finally:
        store.close()
    assert configs["cot-aime24"]["force_answer"] is False
    assert (configs["inftythink-aime24"]["inftythink_max_tokens"], configs["inftythink-aime24"]["inftythink_max_iterations"]) == (20, 2)
    both = scale("eval", "-d", "aime24", "--data-dir", DATA, "-m", "inftythink", "--system2-max-tokens", "20",
                 "--inftythink-max-tokens", "30")
    assert both.exit_code == 2 and "not both" in both.stderr


def test_a_slow_grader_leaves_samples_ungraded_never_wrong(endpoint_env, fake_server, monkeypatch):
    """Under load math-verify's first call took >10 s and the timeout was graded "not equivalent"."""
    from scale_graph.evaluation import grading

    monkeypatch.setattr(grading, "GRADE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(grading, "_compare", lambda gold, answer: time.sleep(2))
    result = evaluate_ok("--dataset", "aime24", "--data-dir", DATA, "--method", "cot", "--limit", "2", "--samples", "1")
    assert "2 ungraded (the grader could not decide)" in result.stderr
    shown, results = metrics("cot-aime24")
    assert (shown.samples, shown.ungraded, shown.accuracy) == (2, 2, 0.0)
    assert all(r.ungraded and r.grading_note.startswith("ungraded: ") for r in results)
    assert "ungraded 2" in result.stdout


def test_progress_lines_at_intervals_when_stderr_is_not_a_terminal(endpoint_env, fake_server, monkeypatch):
    """Issue 15.5: `scale eval` with stderr not a terminal printed nothing for minutes."""
    from scale_graph.evaluation import runner as evaluation_runner

    monkeypatch.setattr(evaluation_runner, "PROGRESS_LINE_INTERVAL_S", 0.1)
    fake_server.configure(latency=0.1)
    result = evaluate_ok("--dataset", "aime24", "--data-dir", "data", "--method", "cot", "--samples", "2",
                         "--concurrency", "1")
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress cot-aime24:")]
    assert len(lines) >= 2 and "samples" in lines[-1] and "tok/s" in lines[-1]
