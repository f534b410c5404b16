"""Checkpoints and the call journal: a resumed run never repeats a finished LLM call."""

import os
import signal
import subprocess
import sys
import time

import pytest

from scale_graph import build_graph
from scale_graph.persistence import open_sync
from scale_graph.servers.chat import EndpointError
from tests.support.chat import default_respond
from tests.support.run_context import context

CONFIG = {"configurable": {"thread_id": "t1"}}


def failing_once(at_key):
    state = {"failed": False}

    def respond(call):
        if call.key == at_key and not state["failed"]:
            state["failed"] = True
            return EndpointError("System 2 endpoint is unreachable")
        return default_respond(call)

    return respond


@pytest.mark.parametrize("at_key", ["decompose/0", "select/0", "assess/1/0", "solve/2/0"])
def test_resume_after_injected_failure_repeats_nothing(scripted, tmp_path, at_key):
    fake = scripted(failing_once(at_key))
    with open_sync(tmp_path / "runs.db") as (saver, store):
        graph = build_graph(saver, store, chat=fake)
        with pytest.raises(EndpointError):
            graph.invoke({"problem": "What is a+b?"}, CONFIG, context=context(), durability="sync")
        calls_before = [c.key for c in fake.calls]
        assert graph.get_state(CONFIG).next  # stopped, resumable
        out = graph.invoke(None, CONFIG, context=context(), durability="sync")
    assert out["answer"] == "33"
    keys = [c.key for c in fake.calls]
    # the failed call is made again; every call that had finished is not
    assert keys.count(at_key) == 2
    finished = [k for k in calls_before if k != at_key]
    assert all(keys.count(k) == 1 for k in finished)
    assert len(keys) == 8 + 1


def test_journal_spares_finished_calls_of_an_interrupted_node(scripted, tmp_path):
    """The solve call finished, its follow-up failed: resuming re-runs the node but not the solve call."""
    state = {"failed": False}

    def respond(call):
        if call.key.startswith("solve"):
            from scale_graph.servers.chat import ChatReply, Choice
            return ChatReply(choices=[Choice("", "thinking...", "length")])
        if call.key.startswith("force") and not state["failed"]:
            state["failed"] = True
            return EndpointError("down")
        if call.key.startswith("force"):
            return "\\boxed{1}"
        return default_respond(call)

    fake = scripted(respond)
    with open_sync(tmp_path / "runs.db") as (saver, store):
        graph = build_graph(saver, store, chat=fake)
        with pytest.raises(EndpointError):
            graph.invoke({"problem": "p"}, CONFIG, context=context(threshold=0.0), durability="sync")
        graph.invoke(None, CONFIG, context=context(threshold=0.0), durability="sync")
    keys = [c.key for c in fake.calls]
    assert keys.count("solve/0/0") == 1 and keys.count("force/0/0") == 2


def scale_env(endpoint_env, db):
    return {**os.environ, **endpoint_env, "SCALE_DB": str(db), "SCALE_CANDIDATES": "3"}


def test_cli_sigkill_then_resume_completes_without_repeating_calls(fake_server, endpoint_env, tmp_path):
    fake_server.configure(latency=0.15, subproblem_count=4)
    env = scale_env(endpoint_env, tmp_path / "base.db")
    done = subprocess.run([sys.executable, "-m", "scale_graph.cli", "solve", "What is 2+3?", "--thread-id", "base", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    baseline = fake_server.stats()["requests"]
    assert baseline == 1 + 1 + 4 * 2

    for kill_at, offset in ((1, 0.05), (2, 0.1), (3, 0.0), (5, 0.1), (8, 0.05), (10, 0.0)):
        fake_server.reset()
        env = scale_env(endpoint_env, tmp_path / f"k{kill_at}.db")
        proc = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "solve", "What is 2+3?", "--thread-id", "k"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while fake_server.stats()["requests"] < kill_at and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(offset)  # kill while request `kill_at` is in flight or just after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = fake_server.stats()["requests"]
        resumed = subprocess.run([sys.executable, "-m", "scale_graph.cli", "runs", "resume", "k", "--json"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        total = fake_server.stats()["requests"]
        # at most the one request in flight at the kill is made again
        assert baseline <= total <= baseline + 1, (kill_at, before, total)
        shown = subprocess.run([sys.executable, "-m", "scale_graph.cli", "runs", "show", "k", "--json"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert '"status": "done"' in shown.stdout


def test_a_fork_with_edited_state_makes_new_calls(scripted, tmp_path):
    """Time travel in Studio: re-running from an earlier checkpoint with other inputs must not reuse replies."""
    from langgraph.checkpoint.memory import InMemorySaver

    fake = scripted()
    graph = build_graph(InMemorySaver(), chat=fake)
    graph.invoke({"problem": "p"}, CONFIG, context=context())
    before_assess = [s for s in graph.get_state_history(CONFIG) if s.next == ("assess",)][-1]  # right after select
    forked = graph.update_state(before_assess.config, {"subproblems": ["other a", "other b", "other c"]})
    count = len(fake.calls)
    out = graph.invoke(None, forked, context=context())
    assert [s["text"] for s in out["steps"]] == ["other a", "other b", "other c"]
    assert len(fake.calls) == count + 6  # every assess and solve made again for the new sub-problems


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in the graph catches it."""


def test_killed_before_each_checkpoint_write_resumes_to_the_end(scripted, tmp_path):
    """Issue 12.1: a run stopped after a node's writes were saved but before the next checkpoint
    is not finished; resuming it runs on to the uninterrupted answer and repeats no call."""
    import asyncio

    from scale_graph.persistence import open_async
    from scale_graph.runner import resume, start
    from scale_graph.runs import list_runs

    async def run(db, kill_before=None):
        async with open_async(db) as (saver, store):
            written, put = [], saver.aput

            async def aput(*args, **kwargs):
                if len(written) + 1 == kill_before:
                    raise Killed()
                written.append(1)
                return await put(*args, **kwargs)

            saver.aput = aput
            graph = build_graph(saver, store, chat=fake)
            try:
                return await start(graph, store, "What is a+b?", context(), "t1"), len(written)
            except Killed:
                return None, len(written)

    async def resumed(db):
        async with open_async(db) as (saver, store):
            graph = build_graph(saver, store, chat=fake)
            before = [(row["status"], row["answer"]) for row in await list_runs(graph, store)]
            values = await resume(graph, store, "t1")
            after = [(row["status"], row["answer"]) for row in await list_runs(graph, store)]
            return before, values, after

    fake = scripted()
    baseline, checkpoints = asyncio.run(run(tmp_path / "base.db"))
    uninterrupted = [c.key for c in fake.calls]
    assert baseline["answer"] == "33" and checkpoints > 10
    for n in range(1, checkpoints + 1):
        fake.calls.clear()
        db = tmp_path / f"k{n}.db"
        killed, _ = asyncio.run(run(db, kill_before=n))
        assert killed is None
        before, values, after = asyncio.run(resumed(db))
        # "done" only once finalize's writes are saved (the last checkpoint), then with the answer
        assert before[0][0] != "done" or before[0][1] == baseline["answer"], (n, before)
        assert values["answer"] == baseline["answer"], (n, values.get("answer"))
        assert after == [("done", baseline["answer"])], (n, after)
        assert values["steps"] == baseline["steps"], n
        keys = [c.key for c in fake.calls]
        assert sorted(keys) == sorted(uninterrupted), (n, "a call was repeated or skipped")
