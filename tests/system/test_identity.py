"""A run is bound to what made it (issue 19, item 1): an evaluation, its SCALE threads and the
reuse cache carry the run's identity — its parameters and each endpoint's real model (vLLM's
``root``) — so a reused name never returns another τ's or another model's results, against the
fake OpenAI server (real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scale_graph.evaluation.metrics import run_metrics
from scale_graph.evaluation.store import ResultsStore
from tests.support.cli import scale
from tests.support.datasets import write_datasets

#: One problem, one sample, two candidates: a SCALE run of 8 requests (3 sub-problems).
SMALL = ["--dataset", "amc23", "--data-dir", "data", "--limit", "1", "--samples", "1", "-k", "2"]


def error_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def server(fake_server, endpoint_env, tmp_path):
    """Every sub-problem assessed 0.5: τ 0.2 routes all to System 2, τ 0.9 none."""
    fake_server.configure(difficulties=[0.5], model_root="/m/qwq")
    write_datasets(tmp_path / "data")
    return fake_server


def hard(name: str, results_db: str | None = None) -> float | None:
    with ResultsStore(results_db) as store:
        return run_metrics(store.runs([name])[0]).hard


def test_a_reused_name_with_another_threshold_is_refused_even_with_another_results_db(server):
    first = scale("eval", *SMALL, "--name", "tA", "-t", "0.2")
    assert first.exit_code == 0, first.output
    assert hard("tA") == 100.0
    server.reset()

    # the threads in the run database carry the identity: a fresh results database does not hide them
    refused = scale("eval", *SMALL, "--name", "tA", "-t", "0.9", "--results-db", "other.db")
    assert refused.exit_code == 2, refused.output
    assert error_lines(refused) == ["error: evaluation 'tA' was run with threshold=0.2, not 0.9: use a new --name, "
                                    "or --replace to discard its results and threads"]
    assert "Traceback" not in refused.output and server.stats()["requests"] == 0
    same_results = scale("eval", *SMALL, "--name", "tA", "-t", "0.9")
    assert same_results.exit_code == 2 and "threshold=0.2, not 0.9" in same_results.stderr

    # an identical re-run resumes as before: nothing recomputed
    again = scale("eval", *SMALL, "--name", "tA", "-t", "0.2")
    assert again.exit_code == 0 and "0 problem sample(s) evaluated now, 1 already stored" in again.stderr
    assert server.stats()["requests"] == 0

    replaced = scale("eval", *SMALL, "--name", "tA", "-t", "0.9", "--results-db", "other.db", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert server.stats()["requests"] > 0 and hard("tA", "other.db") == 0.0
    # replaced, it resumes as τ 0.9
    assert scale("eval", *SMALL, "--name", "tA", "-t", "0.9", "--results-db", "other.db").exit_code == 0


def test_another_budget_under_a_reused_name_is_refused_for_traces_too(server):
    assert scale("traces", "generate", *SMALL, "--out", "tr").exit_code == 0
    refused = scale("traces", "generate", *SMALL, "--out", "tr", "-t", "0.9", "--results-db", "other.db")
    assert refused.exit_code == 2, refused.output
    assert "evaluation 'tr' was run with threshold=0.2, not 0.9" in refused.stderr and "--replace" in refused.stderr
    replaced = scale("traces", "generate", *SMALL, "--out", "tr", "-t", "0.9", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert hard("tr") == 0.0


def test_a_model_swapped_behind_the_served_name_gets_no_old_replies_and_its_old_runs_are_not_reopened(server):
    cot = ["--dataset", "amc23", "--data-dir", "data", "--samples", "1", "-m", "cot"]
    assert scale("eval", *cot, "--name", "one", "--reuse-group", "common").exit_code == 0
    assert scale("eval", *cot, "--name", "solo").exit_code == 0  # the default group: eval/solo
    made = server.stats()["requests"]
    assert made == 4

    server.configure(model_root="/m/qwen3")  # same served names and URL, another model
    second = scale("eval", *cot, "--name", "two", "--reuse-group", "common")
    assert second.exit_code == 0, second.output
    assert server.stats()["requests"] == made + 2  # its own calls, none of the old model's replies
    with ResultsStore() as store:
        assert all(result.generated_tokens for result in store.runs(["two"])[0].results)

    reopened = scale("eval", *cot, "--name", "one", "--reuse-group", "common")
    assert reopened.exit_code == 2, reopened.output
    assert error_lines(reopened) == ["error: evaluation 'one' was run with system1 model root /m/qwq, not /m/qwen3 "
                                     "(and system2 model root /m/qwq, not /m/qwen3): use a new --name, or --replace "
                                     "to discard its results and threads"]
    # --replace under the same name keeps its default reuse group (eval/solo): still no old reply
    replaced = scale("eval", *cot, "--name", "solo", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert server.stats()["requests"] == made + 4
    with ResultsStore() as store:
        run = store.runs(["solo"])[0]
        assert run.models["system2"]["root"] == "/m/qwen3" and all(r.generated_tokens for r in run.results)


def test_report_and_runs_show_name_each_runs_model(server):
    assert scale("eval", *SMALL, "--name", "tA").exit_code == 0
    report = scale("report", "--markdown", "--json", "r.json")
    assert report.exit_code == 0, report.output
    assert "/m/qwq" in report.stdout
    assert json.load(open("r.json"))[0]["models"]["system2"]["root"] == "/m/qwq"
    thread = json.loads(scale("runs", "list", "--json").stdout)[0]["thread_id"]
    shown = json.loads(scale("runs", "show", thread, "--json").stdout)
    assert shown["models"]["system2"] == {"id": "scale-system2", "root": "/m/qwq", "max_model_len": 40960,
                                          "source": "/v1/models"}
    assert "/m/qwq" in scale("runs", "show", thread).stdout


def test_a_server_that_reports_no_root_is_identified_by_its_id_and_says_so(fake_server, endpoint_env):
    solved = scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "r1")
    assert solved.exit_code == 0, solved.output
    shown = json.loads(scale("runs", "show", "r1", "--json").stdout)
    assert shown["models"]["system1"] == {"id": "scale-system1", "root": None, "max_model_len": None,
                                          "source": "id only"}


def test_resume_on_another_model_is_refused_unless_allowed_and_then_recorded(server, monkeypatch):
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    server.inject("500", times=1, stage="solve")
    assert scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "p1").exit_code == 1
    server.configure(model_root="/m/qwen3")
    server.reset()

    refused = scale("runs", "resume", "p1")
    assert refused.exit_code == 2, refused.output
    assert len(error_lines(refused)) == 1 and "Traceback" not in refused.output
    assert "run p1 was made with system1 model root /m/qwq, not /m/qwen3" in refused.stderr
    assert "--allow-model-change" in refused.stderr and server.stats()["requests"] == 0

    resumed = scale("runs", "resume", "p1", "--allow-model-change", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["status"] == "done" and server.stats()["requests"] > 0
    shown = json.loads(scale("runs", "show", "p1", "--json").stdout)
    assert shown["models"]["system2"]["root"] == "/m/qwq"  # what it was started on
    assert [change["models"]["system2"]["root"] for change in shown["model_changes"]] == ["/m/qwen3"]


def test_a_fork_keeps_its_parents_models_and_is_not_resumed_on_another(server):
    assert scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "p1").exit_code == 0
    forked = scale("runs", "fork", "p1", "--at", "2", "--system", "2", "--thread-id", "f1", "--no-run")
    assert forked.exit_code == 0, forked.output
    assert json.loads(scale("runs", "show", "f1", "--json").stdout)["models"]["system2"]["root"] == "/m/qwq"
    server.configure(model_root="/m/qwen3")
    refused = scale("runs", "resume", "f1")
    assert refused.exit_code == 2 and "run f1 was made with system1 model root /m/qwq, not /m/qwen3" in refused.stderr


def test_replace_never_discards_threads_a_live_process_is_computing(server):
    import asyncio
    from pathlib import Path

    from scale_graph import leases
    from scale_graph.persistence import open_async

    assert scale("eval", *SMALL, "--name", "tA").exit_code == 0
    thread = json.loads(scale("runs", "list", "--json").stdout)[0]["thread_id"]

    async def hold() -> None:
        async with open_async(Path("scale.db")) as (saver, _):
            await leases.acquire(leases.backend_for(saver), thread)  # this (live) process holds it

    asyncio.run(hold())
    refused = scale("eval", *SMALL, "--name", "tA", "-t", "0.9", "--replace")
    assert refused.exit_code == 2, refused.output
    assert "being computed by another process" in refused.stderr
    assert scale("runs", "show", thread).exit_code == 0  # still there


def test_a_baselines_kept_sample_under_a_reused_name_is_refused_with_another_budget(server):
    """A baseline sample's outcome kept for other workers (evaluation/claims.py) carries the identity
    too: a fresh results database beside the same run database never returns it for another budget."""
    first = scale("eval", *SMALL, "-m", "cot", "--name", "cA", "--system2-max-tokens", "300")
    assert first.exit_code == 0, first.output
    made = server.stats()["requests"]
    assert made > 0
    server.reset()
    refused = scale("eval", *SMALL, "-m", "cot", "--name", "cA", "--system2-max-tokens", "400",
                    "--results-db", "other.db")
    assert refused.exit_code == 2, refused.output
    assert error_lines(refused) == ["error: evaluation 'cA' was run with system2_max_tokens=300, not 400: use a new "
                                    "--name, or --replace to discard its results and threads"]
    assert server.stats()["requests"] == 0
    replaced = scale("eval", *SMALL, "-m", "cot", "--name", "cA", "--system2-max-tokens", "400",
                     "--results-db", "other.db", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert server.stats()["requests"] > 0  # computed anew, not the kept 300-token outcome
