"""Call reuse across runs (scale_graph.reuse) against the deterministic fake server: a reused τ
sweep gives exactly the per-run results of independent runs while the server generates at most
half the tokens; identical calls in flight are made once; a journal of reused replies resumes."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from scale_graph import journal, reuse, runner
from scale_graph.cli.evaluate import eval_command, report_command
from scale_graph.evaluation.methods import thread_id
from scale_graph.evaluation.store import ResultsStore
from scale_graph.graph import build_graph
from scale_graph.persistence import open_async
from scale_graph.servers.chat import ChatCall
from scale_graph.setup import resolve
from tests.support.cli import scale
from tests.support.datasets import DATASETS, write_datasets
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_openai import replies as fake_replies

THRESHOLDS = "0.2,0.3,0.5,0.7,0.9"
#: Difficulty by sub-problem number: τ 0.2 routes 2-2-2, 0.3 and 0.5 route 1-2-2, 0.7 1-1-2, 0.9 1-1-1.
DIFFICULTY = {1: 0.25, 2: 0.6, 3: 0.85}


def difficulty_of(body: dict[str, Any]) -> float:
    """A difficulty decided by the request alone (the default cycles per request, so it would
    change with the number of calls made, i.e. with reuse itself)."""
    number = re.search(r"difficulty of sub-problem (\d+)", str(body["messages"][-1]["content"]))
    return DIFFICULTY.get(int(number.group(1)) if number else 1, 0.5)


@pytest.fixture
def server(fake_server, endpoint_env, tmp_path):
    fake_server.configure(difficulties=difficulty_of, reasoning_bytes=400)
    write_datasets(tmp_path / "data")
    return fake_server


def server_tokens(server: FakeOpenAIServer) -> tuple[int, int]:
    """(requests, completion tokens) the server answered since its last reset: each logged request
    replayed through the fake's own deterministic answer (its stats count requests, not tokens)."""
    log = [entry for entry in server.stats()["log"] if entry["status"] == 200]
    tokens = sum(fake_replies._completion(entry["body"], entry["stage"], server.config, difficulty_of(entry["body"]),
                                         entry["fault"], "replay")["usage"]["completion_tokens"] for entry in log)
    return len(log), tokens


def results(name: str) -> dict[tuple[str, str, int], Any]:
    """Every stored result of the evaluation ``name``, by (run name without ``name``, problem, sample)."""
    with ResultsStore() as store:
        return store.samples(f"{name}*", prefix=name)


def routes(name: str, thresholds: list[str], samples: int) -> dict[tuple[str, str, int], list[int]]:
    """The system each sub-problem was solved on, per (τ, problem, sample), from the checkpoints."""

    async def read() -> dict[tuple[str, str, int], list[int]]:
        async with open_async(Path("scale.db")) as (saver, store):
            graph = build_graph(saver, store)
            found = {}
            for threshold in thresholds:
                for problem in DATASETS["amc23"]:
                    for sample in range(samples):
                        thread = thread_id(f"{name}-t{threshold}", problem["id"], sample)
                        state = await graph.aget_state(runner.config_for(thread))
                        found[threshold, problem["id"], sample] = [s["system"] for s in state.values["steps"]]
            return found

    return asyncio.run(read())


def test_reused_threshold_sweep_equals_independent_runs_at_half_the_tokens(server):
    args = ["--dataset", "amc23", "--data-dir", "data", "--threshold", THRESHOLDS, "-k", "3", "--samples", "2",
            "--concurrency", "8"]
    independent = scale("eval", *args, "--name", "alone", "--no-reuse")
    assert independent.exit_code == 0, independent.output
    alone_requests, alone_tokens = server_tokens(server)
    server.reset()
    shared = scale("eval", *args, "--name", "together")
    assert shared.exit_code == 0, shared.output
    shared_requests, shared_tokens = server_tokens(server)

    alone, together = results("alone"), results("together")
    assert len(alone) == len(together) == 5 * len(DATASETS["amc23"]) * 2
    for key, mine in alone.items():
        theirs = together[key]
        assert mine.error is None and theirs.error is None
        assert (mine.answer, mine.hard, mine.iterations, mine.completion_tokens, mine.tokens_by_stage) == \
               (theirs.answer, theirs.hard, theirs.iterations, theirs.completion_tokens, theirs.tokens_by_stage)
    thresholds = THRESHOLDS.split(",")
    assert routes("alone", thresholds, 2) == routes("together", thresholds, 2)
    assert {tuple(r) for r in routes("together", thresholds, 2).values()} == {(2, 2, 2), (1, 2, 2), (1, 1, 2), (1, 1, 1)}
    # the server made at most half the tokens, and each run's "generated" adds up to what it made
    assert shared_tokens <= 0.5 * alone_tokens and shared_requests < alone_requests
    assert sum(r.generated_tokens for r in together.values()) == shared_tokens
    assert sum(r.generated_tokens for r in alone.values()) == alone_tokens == sum(r.completion_tokens for r in alone.values())
    assert "tokens generated now" in shared.output and "reuse saved" in shared.output
    shown = scale("report", "together-*", "--markdown", "--out", "out")
    assert shown.exit_code == 0 and "| generated |" in shown.stdout
    assert f"tokens generated for the runs shown: {shared_tokens:,} of the" in shown.stdout


def _call(seed: int = 7) -> ChatCall:
    return ChatCall(key="probe", system=1, messages=[("user", "What is 2 + 2?")], thinking=False, max_tokens=64,
                    temperature=0.7, seed=seed)


def test_identical_calls_in_flight_are_made_once(server):
    server.configure(latency=0.3)
    context = resolve({"reuse_group": "flight"}).context
    systems = journal.systems_for(context)

    async def many() -> list[Any]:
        async with open_async(Path("scale.db")) as (_saver, store):
            return await asyncio.gather(*(reuse.acall(systems, _call(), context, store) for _ in range(6)),
                                        reuse.acall(systems, _call(seed=8), context, store))

    replies = asyncio.run(many())
    assert server.stats()["requests"] == 2  # one per distinct request, not one per caller
    assert [reply.reused for reply in replies[:6]].count(False) == 1
    assert all(reply.choices == replies[0].choices for reply in replies[:6])
    assert not replies[6].reused


def test_identical_calls_in_flight_are_made_once_across_threads(server):
    from langgraph.store.memory import InMemoryStore

    server.configure(latency=0.3)
    context, store = resolve({"reuse_group": "threads"}).context, InMemoryStore()
    systems, replies = journal.systems_for(context), []
    threads = [threading.Thread(target=lambda: replies.append(reuse.call(systems, _call(), context, store)))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.stats()["requests"] == 1
    assert sorted(reply.reused for reply in replies) == [False, True, True, True, True]


def test_a_journal_of_reused_replies_resumes_without_calls(server):
    problem = DATASETS["amc23"][0]["problem"]
    context = resolve({"reuse_group": "resume", "candidates": 2}).context

    async def run() -> tuple[dict, dict, int, list[dict]]:
        async with open_async(Path("scale.db")) as (saver, store):
            graph = build_graph(saver, store)
            first = await runner.start(graph, store, problem, context, "first")
            made = server.stats()["requests"]
            await runner.start(graph, store, problem, context, "second")
            assert server.stats()["requests"] == made  # every call of the second run taken from the first
            entries = await store.asearch(journal.calls_namespace("second"), limit=100)
            # the cache gone and the checkpoints gone: only the journal can answer the resumed run
            for item in await store.asearch(reuse.namespace("resume"), limit=100):
                await store.adelete(reuse.namespace("resume"), item.key)
            await saver.adelete_thread("second")
            resumed = await runner.resume(graph, store, "second")
            return first, resumed, made, [item.value for item in entries]

    first, resumed, made, entries = asyncio.run(run())
    assert entries and all(entry["reused"] for entry in entries)
    assert server.stats()["requests"] == made
    assert resumed["answer"] == first["answer"] and resumed["usage"] == first["usage"]


def test_baselines_share_calls_across_commands_by_group(server):
    base = ["--dataset", "amc23", "--data-dir", "data", "-m", "cot", "--samples", "1", "--reuse-group", "common"]
    assert scale("eval", *base, "--name", "one").exit_code == 0
    made = server.stats()["requests"]
    assert scale("eval", *base, "--name", "two").exit_code == 0
    assert server.stats()["requests"] == made  # the second command generated nothing
    one, two = results("one"), results("two")
    assert {key: (r.answer, r.completion_tokens) for key, r in one.items()} == \
        {key: (r.answer, r.completion_tokens) for key, r in two.items()}  # results are stored as samples finish
    assert all(r.generated_tokens == 0 for r in two.values()) and all(r.generated_tokens for r in one.values())


def test_reuse_switch_does_not_change_a_run_identity(server):
    args = ["--dataset", "amc23", "--data-dir", "data", "-m", "cot", "--samples", "1", "--limit", "1"]
    assert scale("eval", *args).exit_code == 0
    again = scale("eval", *args, "--no-reuse")
    assert again.exit_code == 0, again.output
    assert "0 problem sample(s) evaluated now, 1 already stored" in again.output


def test_reuse_group_with_no_reuse_is_one_line_error(server):
    result = scale("eval", "--dataset", "amc23", "--data-dir", "data", "--no-reuse", "--reuse-group", "x", catch_exceptions=True)
    assert result.exit_code != 0
    assert "give either --reuse-group or --no-reuse" in result.output and "Traceback" not in result.output
