"""One worker per run (issue 12.2): the lease in the run database, in-process.

The two-process case (`scale runs resume` twice at once) is in test_reliability_concurrency.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from scale_graph import build_graph, leases
from scale_graph.evaluation.datasets import Dataset, Problem
from scale_graph.evaluation.methods import Setup, thread_id
from scale_graph.evaluation.runner import RunPlan, evaluate
from scale_graph.evaluation.store import ResultsStore
from scale_graph.persistence import open_async
from scale_graph.runner import RunBusy, resume, start
from scale_graph.runs import list_runs, show_run
from tests.support.run_context import context

pytestmark = pytest.mark.timeout(120)


def put_lease(db, thread: str, *, host: str = "elsewhere", pid: int = 4242, expires_in: float = 100.0) -> None:
    """A lease row as another worker would have written it."""
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT OR REPLACE INTO scale_leases VALUES (?, 'other', ?, ?, ?)",
                     (thread, host, pid, time.time() + expires_in))
    conn.close()


def stopped_run(db, scripted_endpoints) -> None:
    """Run "t" stopped before its first assess (the assess call fails)."""
    from scale_graph.servers.chat import EndpointError
    from tests.support.chat import default_respond

    down = {"on": True}
    scripted_endpoints(lambda call: EndpointError("down") if call.key.startswith("assess") and down["on"] else default_respond(call))

    async def main():
        async with open_async(db) as (saver, store):
            with pytest.raises(EndpointError):
                await start(build_graph(saver, store), store, "What is a+b?", context(), "t")

    asyncio.run(main())
    down["on"] = False


async def resumed(db, thread: str = "t"):
    async with open_async(db) as (saver, store):
        return await resume(build_graph(saver, store), store, thread)


def test_a_run_held_by_a_live_worker_is_refused_with_who_and_when(scripted_endpoints, tmp_path):
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    put_lease(db, "t", host="elsewhere", pid=4242, expires_in=100)
    with pytest.raises(RunBusy) as refused:
        asyncio.run(resumed(db))
    message = str(refused.value)
    assert message.startswith("run t is being worked on by another process (pid 4242 on elsewhere); "
                              "try again after it stops, or in "), message
    assert 95 <= int(message.rsplit(" in ", 1)[1].split()[0]) <= 100
    assert "\n" not in message


def test_an_expired_lease_is_taken_over(scripted_endpoints, tmp_path):
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    put_lease(db, "t", host="elsewhere", expires_in=-1)
    assert asyncio.run(resumed(db))["answer"] == "33"
    with sqlite3.connect(db) as conn:  # released at the end
        assert conn.execute("SELECT count(*) FROM scale_leases").fetchone()[0] == 0
    conn.close()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(scripted_endpoints, tmp_path):
    """A killed `scale solve` must be resumable right away, not after the expiry."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    put_lease(db, "t", host=leases.HOST, pid=dead.pid, expires_in=100)
    assert asyncio.run(resumed(db))["answer"] == "33"


def test_two_workers_in_one_process_one_runs_the_other_is_refused(scripted_endpoints, tmp_path):
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    fake = scripted_endpoints()

    async def main():
        async with open_async(db) as (saver, store):
            graph = build_graph(saver, store)
            return await asyncio.gather(resume(graph, store, "t"), resume(graph, store, "t"), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert sorted(type(o).__name__ for o in outcomes) == ["RunBusy", "dict"], outcomes
    assert f"(pid {os.getpid()} on {leases.HOST})" in str(next(o for o in outcomes if isinstance(o, RunBusy)))
    keys = [call.key for call in fake.calls]
    assert len(keys) == len(set(keys)) == 6  # 3 × (assess, solve), each once


def test_runs_list_tells_a_running_run_from_a_stopped_one(scripted_endpoints, tmp_path):
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)

    async def statuses():
        async with open_async(db) as (saver, store):
            graph = build_graph(saver, store)
            return [row["status"] for row in await list_runs(graph, store)], (await show_run(graph, store, "t"))["status"]

    assert asyncio.run(statuses()) == (["stopped before assess"], "stopped before assess")
    put_lease(db, "t", host=leases.HOST, pid=os.getpid())
    assert asyncio.run(statuses()) == ([f"running (pid {os.getpid()})"], f"running (pid {os.getpid()})")
    put_lease(db, "t", host="gpu-7", pid=99)
    assert asyncio.run(statuses())[0] == ["running (pid 99 on gpu-7)"]
    put_lease(db, "t", host="gpu-7", pid=99, expires_in=-1)  # its holder stopped renewing: stopped
    assert asyncio.run(statuses())[0] == ["stopped before assess"]


def test_resume_says_where_it_picks_up(scripted_endpoints, tmp_path):
    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    events = []

    async def main():
        async with open_async(db) as (saver, store):
            return await resume(build_graph(saver, store), store, "t", on_event=events.append)

    asyncio.run(main())
    assert events[0]["event"] == "resuming" and events[0]["at"] == "sub-problem 1 of 3 (assess)", events[0]
    assert (events[0]["subproblem"], events[0]["subproblems"], events[0]["nodes"]) == (1, 3, ["assess"])


def test_a_lost_lease_stops_the_worker(tmp_path):
    """A worker that stalled past the expiry and was taken over stops instead of running on."""

    async def main():
        async with open_async(tmp_path / "runs.db") as (saver, _):
            backend = leases.backend_for(saver)
            with pytest.raises(leases.LeaseHeld) as lost:
                async with leases.held(backend, "t", ttl=30, renew_every=0.05):
                    await backend.execute("UPDATE scale_leases SET holder = 'thief', pid = 7", {})
                    await asyncio.sleep(5)
            return lost.value

    lost = asyncio.run(main())
    assert lost.lost and lost.lease.pid == 7


def test_an_evaluation_skips_a_sample_another_live_process_holds(scripted_endpoints, tmp_path):
    """Not stored as failed (a re-run would then count it): left for its holder or a later run."""
    scripted_endpoints()
    db, results = tmp_path / "runs.db", ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    problems = [Problem("p1", "What is a+b?", "33"), Problem("p2", "What is b+a?", "33")]
    run = RunPlan("scale-held", "scale", Dataset("handmade", problems), Setup("scale-held", context()))

    async def create():
        async with open_async(db):
            pass

    asyncio.run(create())
    put_lease(db, thread_id("scale-held", "p1", 0))
    try:
        totals = asyncio.run(evaluate([run], results, samples=1, checkpoint_db=db))
        assert (totals.done, totals.failed, totals.skipped) == (1, 0, 1)
        stored = results.runs(["scale-held"])[0].results
        assert [r.problem_id for r in stored] == ["p2"]
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM scale_leases")
        conn.close()
        totals = asyncio.run(evaluate([run], results, samples=1, checkpoint_db=db))
        assert (totals.done, totals.failed) == (1, 0)
        assert sorted((r.problem_id, r.answer) for r in results.runs(["scale-held"])[0].results) == \
            [("p1", "33"), ("p2", "33")]
    finally:
        results.close()


def test_deleting_a_run_a_live_worker_holds_is_refused_and_keeps_it(scripted_endpoints, tmp_path):
    from typer.testing import CliRunner

    from scale_graph.cli import app

    db = tmp_path / "runs.db"
    stopped_run(db, scripted_endpoints)
    put_lease(db, "t", host="elsewhere", pid=4242, expires_in=100)
    refused = CliRunner().invoke(app, ["runs", "delete", "t", "--db", str(db)])
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run t is being worked on by another process"), lines
    with sqlite3.connect(db) as conn:  # the run and the worker's lease are untouched
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 't'").fetchone()[0] > 0
        assert conn.execute("SELECT holder FROM scale_leases").fetchall() == [("other",)]
    conn.close()
    put_lease(db, "t", host="elsewhere", expires_in=-1)  # the worker died: the run can be deleted
    deleted = CliRunner().invoke(app, ["runs", "delete", "t", "--db", str(db)])
    assert deleted.exit_code == 0, deleted.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 't'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM scale_leases").fetchone()[0] == 0
    conn.close()


@pytest.mark.parametrize("taker", ["gone", "same process"])
def test_a_lost_lease_never_names_this_process_as_the_taker(tmp_path, taker):
    """Taken over and released since (the row gone), or taken by another worker of this process."""

    async def main():
        async with open_async(tmp_path / "runs.db") as (saver, _):
            backend = leases.backend_for(saver)
            with pytest.raises(leases.LeaseHeld) as lost:
                async with leases.held(backend, "t", ttl=30, renew_every=0.05):
                    if taker == "gone":
                        await backend.execute("DELETE FROM scale_leases", {})
                    else:
                        await backend.execute("UPDATE scale_leases SET holder = 'thief'", {})
                    await asyncio.sleep(5)
            return lost.value

    held = asyncio.run(main())
    message = str(RunBusy(held.lease, held.lost, held.removed))  # as runner.holding raises it
    assert "by another process" not in message, message
    if taker == "gone":
        assert message == ("run t lost its lease and stopped: another process took the run over while this one "
                           "stalled and has released it since, or the run was deleted")
    else:
        assert f"was taken over by another worker of this process (pid {os.getpid()} " in message


class _LandsAnyway(leases.MemoryBackend):
    """A statement in flight lands even when its caller is cancelled (as aiosqlite's thread or
    the PostgreSQL server finish it)."""

    async def execute(self, sql, params):
        return await asyncio.shield(self._land(sql, params))

    async def _land(self, sql, params):
        await asyncio.sleep(0.05)
        return await leases.MemoryBackend.execute(self, sql, params)


def test_a_claim_cancelled_while_its_lease_is_taken_leaves_no_lease_behind():
    """Else this very process (alive, so its lease looks live) is refused the sample until the expiry."""
    async def main():
        backend = _LandsAnyway()

        async def hold():
            async with leases.held(backend, "eval/run/p1/0#00000000"):
                await asyncio.sleep(10)

        task = asyncio.create_task(hold())
        await asyncio.sleep(0.01)  # the ACQUIRE is in flight
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        return dict(backend.table)

    assert asyncio.run(main()) == {}


def test_a_lease_this_process_could_not_release_is_taken_back_at_once_by_it():
    """A release that cannot land (the database closed under a cancelled evaluation) leaves a row
    naming this live process: before, this process then refused itself the sample until the
    expiry, so an evaluation re-run in the same process (serve, a test, a notebook) skipped it."""
    class _ReleaseFails(leases.MemoryBackend):
        async def execute(self, sql, params):
            if sql == leases.RELEASE:
                raise RuntimeError("no active connection")
            return await leases.MemoryBackend.execute(self, sql, params)

    async def main():
        backend = _ReleaseFails()
        async with leases.held(backend, "eval/run/p1/0#00000000"):
            pass
        left = dict(backend.table)
        async with leases.held(backend, "eval/run/p1/0#00000000") as again:
            return left, again

    left, again = asyncio.run(main())
    assert list(left) == ["eval/run/p1/0#00000000"]  # the row stayed, naming this process
    assert again.pid == os.getpid()

    async def other_worker_holds():  # a lease another worker of this process holds is still refused
        backend = leases.MemoryBackend()
        async with leases.held(backend, "t"):
            with pytest.raises(leases.LeaseHeld):
                async with leases.held(backend, "t"):
                    pass

    asyncio.run(other_worker_holds())
