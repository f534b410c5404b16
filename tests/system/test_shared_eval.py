"""Two identical `scale eval` processes (same --name, same databases) share the work: every
problem sample is claimed by one of them, so each LLM call is made once (issue 20, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from scale_graph.evaluation.store import ResultsStore
from tests.support.datasets import write_datasets
from tests.support.fake_openai import FakeOpenAIServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def request_identity(body: dict) -> str:
    """What makes two requests the same call: everything but the model routing details."""
    return json.dumps({key: body.get(key) for key in ("messages", "n", "seed", "max_tokens", "temperature")},
                      sort_keys=True)


def test_two_identical_baseline_evaluations_make_each_call_once(isolated):
    data = write_datasets(isolated / "data")
    # slow enough that both processes are in flight together: every sample overlaps
    with FakeOpenAIServer(latency=0.4) as server:
        env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": server.base_url, "SCALE_SYSTEM1_MODEL": "scale-system1",
               "SCALE_SYSTEM2_BASE_URL": server.base_url, "SCALE_SYSTEM2_MODEL": "scale-system2",
               "PYTHONPATH": os.pathsep.join(filter(None, [REPO + "/src", REPO, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "scale_graph.cli", "eval", "--dataset", str(data / "aime24.jsonl"),
                   "--method", "cot,majority", "--votes", "2", "--samples", "2", "--name", "shared",
                   "--db", str(isolated / "runs.db"), "--results-db", str(isolated / "results.db")]
        workers = [subprocess.Popen(command, env=env, cwd=isolated, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for _ in range(2)]
        outputs = [worker.communicate(timeout=180)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], outputs
        log = server.stats()["log"]
    calls = Counter(request_identity(entry["body"]) for entry in log)
    repeated = {identity: count for identity, count in calls.items() if count > 1}
    assert not repeated, f"{len(repeated)} call(s) made more than once by the two processes"
    # 3 problems × 2 samples × one CoT call + 3 problems × one majority request (the paper's one vote per problem)
    assert len(calls) == 9
    with ResultsStore(str(isolated / "results.db")) as store:
        results = [result for run in store.runs(["shared*"]) for result in run.results]
    assert len(results) == 9 and all(result.error is None for result in results)


def test_a_sample_another_worker_stored_meanwhile_is_skipped_without_a_call(scripted_endpoints, isolated):
    """Checked once a slot is free, not only when the command started: a worker of a shared
    evaluation does not redo (nor re-grade and re-store) what another one finished meanwhile."""
    import asyncio

    from scale_graph.evaluation.datasets import Dataset, Problem
    from scale_graph.evaluation.grading import Grade
    from scale_graph.evaluation.methods import Outcome, Setup
    from scale_graph.evaluation.runner import RunPlan, evaluate
    from tests.support.run_context import context

    problems = [Problem("p1", "What is 1+1?", "2"), Problem("p2", "What is 2+2?", "4")]
    run = RunPlan("cot-shared", "cot", Dataset("handmade", problems), Setup("cot-shared", context()))
    asked = []
    with ResultsStore(str(isolated / "results.db")) as results:
        run_id = results.open_run(run.name, "cot", "handmade", run.setup.config("cot"))

        def respond(call):
            asked.append(call)
            if len(asked) == 1:  # meanwhile, another worker stores the other problem's sample
                other = next(p for p in problems if p.problem not in call.messages[-1][1])
                results.save(run_id, other, 0, Outcome(answer=other.answer), Grade(True, "ok"))
            return "So the answer is \\boxed{2}."

        scripted_endpoints(respond)
        totals = asyncio.run(evaluate([run], results, samples=1, checkpoint_db=isolated / "runs.db", concurrency=1))
        stored = {result.problem_id: result.answer for result in results.runs(["cot-shared"])[0].results}
    assert len(asked) == 1
    assert (totals.done, totals.skipped) == (1, 1)
    assert sorted(stored) == ["p1", "p2"]


def test_a_results_table_created_by_another_process_meanwhile_is_no_error(isolated):
    """Two identical evaluations started at once on a new SQLite results file: both find a table
    missing, the later CREATE fails with "already exists" — the store looks again instead of failing."""
    from sqlalchemy import create_engine, event

    from scale_graph.evaluation.store import Result

    path = isolated / "results.db"
    other = create_engine(f"sqlite:///{path}")  # the other process

    created: list[bool] = []

    def meanwhile(table, connection, **_):
        if not created:  # once: the other process creates it between this one's check and its CREATE
            created.append(True)
            table.create(other)

    event.listen(Result.__table__, "before_create", meanwhile)
    try:
        with ResultsStore(str(path)) as store:
            run_id = store.open_run("shared", "cot", "data", {"seed": 0})
        assert run_id == 1
        assert created
    finally:
        event.remove(Result.__table__, "before_create", meanwhile)
        other.dispose()
