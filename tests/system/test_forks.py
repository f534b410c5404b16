"""Forks (scale_graph.forks) and `scale runs fork/diff` against the deterministic fake server: a fork
at sub-problem N makes no call for anything before N (counted at the server), keeps the parent's
steps before N, solves N on the forced system and finishes; `runs diff` names N as the divergence."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from scale_graph import forks, runner
from scale_graph.graph import build_graph
from scale_graph.journal import RUNS_NAMESPACE
from scale_graph.persistence import open_async
from scale_graph.runs import show_run
from scale_graph.setup import resolve
from tests.support.cli import scale

#: Difficulty by sub-problem number; with τ = 0.5 the parent routes 1, 2, 1, 2.
DIFFICULTY = {1: 0.1, 2: 0.6, 3: 0.1, 4: 0.9}
PROBLEM = "What is 12 squared minus 119?"


def difficulty_of(body: dict[str, Any]) -> float:
    number = re.search(r"difficulty of sub-problem (\d+)", str(body["messages"][-1]["content"]))
    return DIFFICULTY.get(int(number.group(1)) if number else 1, 0.5)


@pytest.fixture
def server(fake_server, endpoint_env):
    fake_server.configure(difficulties=difficulty_of, subproblem_count=4)
    return fake_server


def requests(server) -> list[tuple[str, int | None, str]]:
    """(stage, sub-problem number or None, model) of every request since the last reset."""
    found = []
    for entry in server.stats()["log"]:
        text = str(entry["body"]["messages"][-1]["content"])
        number = re.search(r"(?:sub-problem|Solve sub-problem) (\d+)", text)
        found.append((entry["stage"], int(number.group(1)) if number else None, entry["model"]))
    return found


async def _with_graph(work: Any) -> Any:
    async with open_async(Path("scale.db")) as (saver, store):
        return await work(build_graph(saver, store), store)


def parent_run(thread: str = "parent") -> dict[str, Any]:
    context = resolve({"threshold": 0.5, "candidates": 2}).context
    return asyncio.run(_with_graph(lambda graph, store: runner.start(graph, store, PROBLEM, context, thread)))


def test_fork_at_subproblem_makes_no_call_before_it_and_diff_names_it(server):
    parent = parent_run()
    assert [s["system"] for s in parent["steps"]] == [1, 2, 1, 2]
    server.reset()

    forked = scale("runs", "fork", "parent", "--at", "3", "--system", "2", "--json")
    assert forked.exit_code == 0, forked.output
    child = json.loads(forked.stdout)
    made = requests(server)
    # only sub-problem 3's solve (forced to System 2), sub-problem 4's assessment and solve
    assert sorted((stage, number) for stage, number, _ in made) == [("difficulty", 4), ("solve", 3), ("solve", 4)]
    assert ("solve", 3, "scale-system2") in made
    assert child["status"] == "done" and child["thread_id"] != "parent"
    mine, theirs = child["subproblems"], parent["steps"]
    for index in (0, 1):
        assert {k: mine[index][k] for k in ("text", "difficulty", "system", "result", "completion_tokens")} == \
               {k: theirs[index][k] for k in ("text", "difficulty", "system", "result", "completion_tokens")}
    assert mine[2]["system"] == 2 and mine[2]["forced_system"] == 2 and mine[2]["difficulty"] == 0.1
    assert len(mine) == 4 and child["answer"] is not None

    diffed = scale("runs", "diff", "parent", child["thread_id"], "--json")
    assert diffed.exit_code == 0, diffed.output
    shown = json.loads(diffed.stdout)
    assert shown["first_divergence"] == 3 and "system" in shown["subproblems"][2]["differs"]
    assert shown["subproblems"][0]["differs"] == [] and shown["same_problem"]
    table = scale("runs", "diff", "parent", child["thread_id"])
    assert table.exit_code == 0 and "first divergence: sub-problem 3" in table.stdout


def test_fork_records_its_parent_and_marks_copied_calls_reused(server):
    parent_run()
    thread = asyncio.run(_with_graph(lambda graph, store: forks.fork(graph, store, "parent", at=3, system=2)))

    async def inspect(graph, store):
        snapshot = await graph.aget_state(runner.config_for(thread))
        record = await store.aget(RUNS_NAMESPACE, thread)
        values = await runner.resume(graph, store, thread)
        return snapshot, record.value, values, await show_run(graph, store, thread)

    snapshot, record, values, shown = asyncio.run(_with_graph(inspect))
    assert snapshot.next == ("solve_system2",)  # waits before sub-problem 3's solve, as forced
    assert snapshot.metadata["fork_of_thread_id"] == "parent" and snapshot.metadata["fork_of_at"] == 3
    assert record["fork_of"]["thread_id"] == "parent" and record["fork_of"]["system"] == 2
    assert record["fork_of"]["checkpoint_id"] == snapshot.metadata["fork_of_checkpoint_id"]
    assert values["run_id"] == thread and runner.is_finished(snapshot) is False
    # the solutions of sub-problems 1-2 came from the parent: shown, and marked reused
    assert [row["reused"] for row in shown["subproblems"]] == [True, True, False, False]
    assert all(row["solution"] for row in shown["subproblems"])
    reused = [call for call in shown["calls"] if call["reused"]]
    assert sorted(call["key"].split("#")[0] for call in reused) == ["select/0", "solve/0/0", "solve/1/0"]
    assert shown["generated_tokens"] < shown["usage"]["total"]["completion_tokens"]


def test_fork_with_difficulty_routes_by_the_runs_threshold(server):
    parent_run()
    server.reset()

    async def work(graph, store):
        return await forks.fork_and_run(graph, store, "parent", at=1, difficulty=0.9)

    _, values = asyncio.run(_with_graph(work))
    step = values["steps"][0]
    assert (step["difficulty"], step["assessed_difficulty"], step["system"], step["forced_system"]) == (0.9, 0.1, 2, 2)
    assert not any(stage in ("decomposition", "selection") for stage, _, _ in requests(server))
    assert ("difficulty", 1, "scale-system1") not in [(s, n, m) for s, n, m in requests(server)]


def test_fork_with_edited_subproblems_starts_after_the_selection(server, tmp_path):
    parent_run()
    server.reset()
    (tmp_path / "edited.txt").write_text("find 12 squared\n\nsubtract 119\n", encoding="utf-8")
    forked = scale("runs", "fork", "parent", "--subproblems-file", "edited.txt", "--thread-id", "edited", "--json")
    assert forked.exit_code == 0, forked.output
    child = json.loads(forked.stdout)
    assert [row["text"] for row in child["subproblems"]] == ["find 12 squared", "subtract 119"]
    assert child["selection"]["method"] == "human" and child["status"] == "done"
    stages = [stage for stage, _, _ in requests(server)]
    assert "decomposition" not in stages and "selection" not in stages and stages.count("solve") == 2


def test_fork_without_run_is_resumable_under_its_own_id(server):
    parent_run()
    created = scale("runs", "fork", "parent", "--at", "2", "--system", "1", "--thread-id", "later", "--no-run")
    assert created.exit_code == 0, created.output
    server.reset()
    resumed = scale("runs", "resume", "later", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["subproblems"][1]["system"] == 1
    assert {number for _, number, _ in requests(server)} <= {2, 3, 4}
    again = scale("runs", "fork", "parent", "--at", "2", "--system", "1", "--thread-id", "later")
    assert again.exit_code == 0  # a fork that exists under the given id is that fork, not made twice


@pytest.mark.parametrize("args, message", [
    (["--at", "9", "--system", "2"], "no sub-problem 9 assessed"),
    (["--at", "1", "--system", "2", "--difficulty", "0.3"], "exactly one of --system"),
    (["--at", "1", "--system", "3"], "--system must be 1 or 2"),
    (["--at", "1", "--difficulty", "1.5"], "within [0, 1]"),
    (["--system", "2"], "--at must be"),
])
def test_fork_refuses_bad_requests_in_one_line(server, args, message):
    parent_run()
    result = scale("runs", "fork", "parent", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_fork_of_an_unknown_run_is_one_line(server):
    parent_run()
    result = scale("runs", "fork", "nobody", "--at", "1", "--system", "2")
    assert result.exit_code == 2 and "no run 'nobody'" in result.output


def test_fork_refuses_an_edited_decomposition_beyond_the_runs_limit(server, tmp_path):
    parent_run()
    (tmp_path / "long.txt").write_text("".join(f"step {i}\n" for i in range(13)), encoding="utf-8")
    result = scale("runs", "fork", "parent", "--subproblems-file", "long.txt")
    assert result.exit_code == 2 and "1 to 12 sub-problems, got 13" in result.output
    listed = scale("runs", "list", "--json")
    assert [row["thread_id"] for row in json.loads(listed.stdout)] == ["parent"]  # nothing was written


def test_runs_list_names_the_parent_of_a_fork(server):
    parent_run()
    created = scale("runs", "fork", "parent", "--at", "1", "--system", "2", "--thread-id", "child", "--no-run")
    assert created.exit_code == 0, created.output
    rows = {row["thread_id"]: row for row in json.loads(scale("runs", "list", "--json").stdout)}
    assert rows["child"]["fork_of"] == "parent" and rows["parent"]["fork_of"] is None
    assert rows["child"]["status"].startswith("stopped")  # `runs show` says where: before solve_system2


def test_fork_under_the_id_of_an_unrelated_run_is_refused_and_changes_nothing(server):
    parent_run()
    parent_run("other")
    before = json.loads(scale("runs", "show", "other", "--json").stdout)
    server.reset()
    result = scale("runs", "fork", "parent", "--at", "1", "--system", "2", "--thread-id", "other")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "not this fork of run parent" in errors[0]
    assert requests(server) == []  # `other` was not resumed
    after = json.loads(scale("runs", "show", "other", "--json").stdout)
    assert after == before and after["fork_of"] is None


def test_a_fork_id_reused_with_another_change_is_refused(server):
    parent_run()
    created = scale("runs", "fork", "parent", "--at", "1", "--system", "2", "--thread-id", "f", "--no-run")
    assert created.exit_code == 0, created.output
    for other in (["parent", "--at", "1", "--difficulty", "0.9"], ["parent", "--at", "2", "--system", "2"]):
        result = scale("runs", "fork", *other, "--thread-id", "f", "--no-run")
        assert result.exit_code == 2 and "not this fork of run parent" in result.stderr, result.output
    record = json.loads(scale("runs", "show", "f", "--json").stdout)["fork_of"]
    assert (record["at"], record["system"]) == (1, 2)  # still the first fork
    same = scale("runs", "fork", "parent", "--at", "1", "--system", "2", "--thread-id", "f", "--no-run")
    assert same.exit_code == 0, same.output  # the very same fork is found again
