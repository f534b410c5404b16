"""Kill anywhere: SIGKILL `scale solve` at every stage, then `scale runs resume`.

Every kill point gets its own fake server and database, and all of them run in parallel. The
SIGKILL is sent either by the server itself (a :class:`KillingServer`, from its event loop, at
an exact moment of the conversation) or by a thread watching the run's SQLite file (right
after a journal entry, a checkpoint or a WAL write appears). The run: k=3 candidates, 4
sub-problems with difficulties 0.1/0.8/0.1/0.9 (τ=0.2: System 1, 2, 1, 2) and a System 2 budget too small to finish
thinking, so both System 2 solves need the forced-answer follow-up. Its 12 requests:

    1 decompose  2 select  3 assess#1  4 solve#1 (S1)  5 assess#2  6 solve#2 (S2)  7 force#2
    8 assess#3  9 solve#3 (S1)  10 assess#4  11 solve#4 (S2)  12 force#4   → finalize

A SIGKILL inside `finalize` (a node without I/O that lasts milliseconds) is also reproduced
deterministically by rewinding a finished run's file to the state such a kill leaves.

For every kill point the resumed run must equal an uninterrupted run (answer, candidates,
selection, sub-problems, difficulties, systems, results, tokens, warnings, solution and
reasoning texts), and at most the one request in flight at the kill may be sent twice.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scale_graph import build_graph
from scale_graph.journal import calls_namespace
from scale_graph.persistence import open_async, open_sync
from scale_graph.runs import show_run
from tests.support.cli import CLI, TRACEBACK, scale_process
from tests.support.reliability import (
    KillingServer,
    comparable,
    difficulty_by_index,
    endpoint_env,
    kill_on_database_event,
    last_json,
    request_bodies,
)

PROBLEM = "What is 2+3?"
THREAD = "k"
LATENCY = 0.15
SERVER = {"latency": LATENCY, "subproblem_count": 4, "reasoning_bytes": 800}
DIFFICULTIES = [0.1, 0.8, 0.1, 0.9]
# 100 tokens = 400 chars < 800: System 2 is cut off. Native thinking budgets off: they are probed on the
# first thinking call of each invocation (servers/capabilities.py), so against this server, which ignores the
# field, a resumed process would send it once more than the uninterrupted one; this test pins the
# forced-answer follow-up path, where both send the same requests.
RUN = {"candidates": 3, "system2_max_tokens": 100, "thinking_budget": "false"}
REQUESTS = 12
IN_FLIGHT = LATENCY / 2
PROCESS_TIMEOUT = 300  # generous: the machine may be shared; normally a few seconds
WORKERS = 8

#: (what is happening, trigger, …). Server triggers ("arrival"/"answer", request, delay) are
#: fired by the server itself: "arrival" kills while that request is in flight, "answer" that long
#: after it was answered. Database triggers watch the run's SQLite file from this process and
#: kill as soon as it shows the n-th journalled call, the n-th checkpoint, or a write to the WAL
#: after a given answer (inside or right after a write transaction).
KILL_POINTS = [
    ("decompose in flight", "arrival", "decompose", IN_FLIGHT),
    ("select in flight", "arrival", "select", IN_FLIGHT),
    ("checkpoint after select written", "checkpoints", 4),
    ("assess #1 in flight", "arrival", "assess#1", IN_FLIGHT),
    ("solve #1 (System 1) in flight", "arrival", "solve#1", IN_FLIGHT),
    ("assess #2 in flight", "arrival", "assess#2", IN_FLIGHT),
    ("solve #2 (System 2) in flight", "arrival", "solve#2", IN_FLIGHT),
    ("solve #2 cut off, journalled, before the follow-up", "journal", 6),
    ("forced-answer follow-up #2 in flight", "arrival", "force#2", IN_FLIGHT),
    ("WAL write after assess #3 answered", "wal", "assess#3"),
    ("solve #3 (System 1) in flight", "arrival", "solve#3", IN_FLIGHT),
    ("assess #4 in flight", "arrival", "assess#4", IN_FLIGHT),
    ("solve #4 (System 2) in flight", "arrival", "solve#4", IN_FLIGHT),
    ("force #4 answered: journal/checkpoint write", "answer", "force#4", 0.0),
    ("checkpoint after solve #4 written: finalize", "checkpoints", 12),
]
ORDER = ["decompose", "select", "assess#1", "solve#1", "assess#2", "solve#2", "force#2",
         "assess#3", "solve#3", "assess#4", "solve#4", "force#4"]


def new_server() -> KillingServer:
    server = KillingServer(**SERVER, difficulties=difficulty_by_index(DIFFICULTIES))
    server.start()
    return server


def shown_in_process(db: Path) -> dict:
    async def main():
        async with open_async(db) as (saver, store):
            return await show_run(build_graph(saver, store), store, THREAD)

    return asyncio.run(main())


def stopped_where(db: Path, scratch: Path) -> tuple[str, int]:
    """Where a killed run stands, read from a copy of its files: (next node(s), journalled calls)."""
    scratch.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", scratch / f"copy.db{suffix}")
    with open_sync(scratch / "copy.db") as (saver, store):
        snapshot = build_graph(saver, store).get_state({"configurable": {"thread_id": THREAD}})
        calls = len(store.search(calls_namespace(THREAD), limit=1000))
    if not snapshot.values:
        return "not started", calls
    return (",".join(snapshot.next) or "done"), calls


def rewind_into_finalize(source: Path, target: Path) -> None:
    """A copy of a finished run as a SIGKILL inside `finalize` leaves it: the last checkpoint and
    the writes finalize made against the one before are gone (deterministic, unlike a real kill
    in a node that takes a few milliseconds)."""
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
    conn.close()
    shutil.copy(source, target)
    with sqlite3.connect(target) as conn:
        (last,), (before,) = conn.execute("SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? "
                                          "ORDER BY checkpoint_id DESC LIMIT 2", (THREAD,)).fetchall()
        conn.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id = ?", (THREAD, last))
        conn.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_id IN (?, ?)", (THREAD, last, before))
    conn.close()


def baseline(tmp: Path) -> dict:
    server = new_server()
    try:
        env = endpoint_env(server.base_url, tmp / "baseline.db", **RUN)
        done = scale_process("solve", PROBLEM, "--thread-id", THREAD, "--json", env=env, timeout=PROCESS_TIMEOUT)
        assert done.returncode == 0, done.stderr
        stats = server.stats()
        result = {"json": last_json(done.stdout), "requests": stats["requests"], "arrivals": server.arrivals,
                  "bodies": request_bodies(stats["log"]), "shown": shown_in_process(tmp / "baseline.db")}
        # killed inside finalize: resuming runs finalize again and asks the servers nothing
        rewound = tmp / "rewound" / "runs.db"
        rewound.parent.mkdir()
        rewind_into_finalize(tmp / "baseline.db", rewound)
        result["rewound_where"] = stopped_where(rewound, tmp / "rewound" / "inspect")[0]
        resumed = scale_process("runs", "resume", THREAD, "--json", env={**env, "SCALE_DB": str(rewound)}, timeout=PROCESS_TIMEOUT)
        assert resumed.returncode == 0, resumed.stderr
        result["rewound_json"] = last_json(resumed.stdout)
        result["rewound_shown"] = shown_in_process(rewound)
        result["requests_after_rewind"] = server.stats()["requests"]
        return result
    finally:
        server.close()


def kill_and_resume(tmp: Path, number: int, point: tuple) -> dict:
    _, trigger, *how = point
    work = tmp / f"k{number:02d}"
    work.mkdir()
    db = work / "runs.db"
    server = new_server()
    try:
        env = endpoint_env(server.base_url, db, **RUN)
        with open(work / "solve.out", "wb") as out, open(work / "solve.err", "wb") as err:
            proc = subprocess.Popen([*CLI, "solve", PROBLEM, "--thread-id", THREAD, "--json"], env=env,
                                    stdout=out, stderr=err)
            if trigger in ("arrival", "answer"):
                server.arm(proc.pid, how[0], trigger, how[1])
            elif trigger == "wal":
                kill_on_database_event(proc.pid, db, THREAD, "wal", after=lambda: how[0] in server.answered)
            else:
                kill_on_database_event(proc.pid, db, THREAD, trigger, how[0])
            code = proc.wait(timeout=PROCESS_TIMEOUT)
        # the request in flight at the kill is still answered (to nobody) after the latency
        deadline = time.time() + 10
        while server.stats()["requests"] < len(server.arrivals) and time.time() < deadline:
            time.sleep(0.02)
        at_kill = server.stats()
        where, journalled = stopped_where(db, work / "inspect")
        resumed = scale_process("runs", "resume", THREAD, "--json", env=env, timeout=PROCESS_TIMEOUT)
        stats = server.stats()
        return {"code": code, "stderr": (work / "solve.err").read_text(errors="replace"),
                "requests_at_kill": at_kill["requests"], "where": where, "journalled": journalled,
                "resumed": resumed, "requests": stats["requests"], "bodies": request_bodies(stats["log"]),
                "shown": shown_in_process(db) if resumed.returncode == 0 else None,
                "arrivals": server.arrivals, "log_at_kill": at_kill["log"]}
    finally:
        server.close()


def strip_volatile(result: dict) -> dict:
    """A `--json` summary without the thread id and wall-clock latencies."""
    rows = [{k: v for k, v in row.items() if k != "latency_s"} for row in result["subproblems"]]
    return {**{k: v for k, v in result.items() if k not in ("thread_id", "subproblems")}, "subproblems": rows}


@pytest.mark.timeout(900)
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path):
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        base_future = pool.submit(baseline, tmp_path)
        futures = [pool.submit(kill_and_resume, tmp_path, n, point) for n, point in enumerate(KILL_POINTS)]
        base = base_future.result()
        outcomes = [f.result() for f in futures]

    # the uninterrupted run is what the design says, and asks nothing twice
    assert base["requests"] == REQUESTS and base["arrivals"] == ORDER
    assert len(set(base["bodies"])) == REQUESTS
    assert [r["system"] for r in base["json"]["subproblems"]] == [1, 2, 1, 2]
    assert [r["forced_answer"] for r in base["json"]["subproblems"]] == [False, True, False, True]
    expected = comparable(base["shown"])
    expected_json = strip_volatile(base["json"])
    assert base["rewound_where"] == "finalize"
    assert strip_volatile(base["rewound_json"]) == expected_json and comparable(base["rewound_shown"]) == expected
    assert base["requests_after_rewind"] == REQUESTS

    print("\n" + "\n".join(
        f"{label:52s} killed={o['code'] == -signal.SIGKILL} answered={o['requests_at_kill']:2d} "
        f"journal={o['journalled']:2d} stopped before {o['where']:14s} requests in all {o['requests']}"
        for (label, *_), o in zip(KILL_POINTS, outcomes)))
    for (label, *_), outcome in zip(KILL_POINTS, outcomes):
        assert outcome["code"] == -signal.SIGKILL, (label, "the run finished before the kill", outcome["stderr"])
        resumed = outcome["resumed"]
        assert resumed.returncode == 0, (label, resumed.stderr)
        assert "Traceback" not in resumed.stderr
        # the same final state as the uninterrupted run …
        assert strip_volatile(last_json(resumed.stdout)) == expected_json, label
        assert comparable(outcome["shown"]) == expected, label
        # … and no finished call repeated: at most the request in flight at the kill
        assert REQUESTS <= outcome["requests"] <= REQUESTS + 1, (label, outcome["requests"])
        counts = Counter(outcome["bodies"])
        twice = [body for body, count in counts.items() if count > 1]
        assert all(counts[body] == 2 for body in twice) and len(twice) <= 1, label
        if twice:  # the repeated request is the last one sent before the kill
            in_flight = request_bodies(outcome["log_at_kill"])[-1]
            assert twice[0] == in_flight, (label, "a finished call other than the one in flight was repeated")
        assert set(outcome["bodies"]) == set(base["bodies"]), (label, "a request differs from the uninterrupted run's")

    # the kills landed in every node that talks to a server
    stops = {o["where"] for o in outcomes}
    assert {"decompose", "select", "assess", "solve_system1", "solve_system2"} <= stops, stops
    # and between a reply reaching the journal and the node's checkpoint (nothing to repeat then)
    assert any(o["requests"] == REQUESTS for o in outcomes)


# ---- every checkpoint boundary: SIGKILL and SIGINT just before each checkpoint write -----------------
DRIVER = Path(__file__).parents[1] / "support" / "drivers" / "kill.py"
EXIT = {"KILL": -signal.SIGKILL, "INT": 130}


def driven(number: int, name: str, work: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``scale ARGS`` signalling itself (SIG``name``) before checkpoint write ``number`` (0: never)."""
    done = subprocess.run([sys.executable, str(DRIVER), str(number), name, str(work / "writes"), "--", *args],
                          env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    return done


def boundary_run(tmp: Path, number: int, name: str) -> dict:
    """Solve, signalled before checkpoint write ``number``; then `scale runs resume`."""
    work = tmp / f"{name.lower()}{number:02d}"
    work.mkdir()
    server = new_server()
    try:
        env = endpoint_env(server.base_url, work / "runs.db", **RUN)
        killed = driven(number, name, work, ["solve", PROBLEM, "--thread-id", THREAD, "--json"], env)
        where, _ = stopped_where(work / "runs.db", work / "inspect")
        listed = scale_process("runs", "list", "--json", env=env, timeout=PROCESS_TIMEOUT)
        resumed = scale_process("runs", "resume", THREAD, "--json", env=env, timeout=PROCESS_TIMEOUT)
        return {"killed": killed, "where": where, "listed": listed, "resumed": resumed,
                "arrivals": list(server.arrivals), "bodies": request_bodies(server.stats()["log"]),
                "shown": shown_in_process(work / "runs.db") if resumed.returncode == 0 else None}
    finally:
        server.close()


@pytest.mark.timeout(1800)
def test_signal_at_every_checkpoint_boundary_then_resume_gives_the_uninterrupted_result(tmp_path):
    """Issues 12.1 and 15.7: killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) just before each
    checkpoint write — the node's writes saved, its checkpoint not — a run is never reported
    done without its answer, and resuming it ends with the uninterrupted result and repeats no
    call (no request is in flight at a checkpoint boundary)."""
    (tmp_path / "base").mkdir()
    server = new_server()
    try:
        env = endpoint_env(server.base_url, tmp_path / "base" / "runs.db", **RUN)
        base = driven(0, "KILL", tmp_path / "base", ["solve", PROBLEM, "--thread-id", THREAD, "--json"], env)
        assert base.returncode == 0, base.stderr
        base_bodies = request_bodies(server.stats()["log"])
        expected = comparable(shown_in_process(tmp_path / "base" / "runs.db"))
    finally:
        server.close()
    boundaries = len((tmp_path / "base" / "writes").read_text().split())
    assert boundaries >= 2 + REQUESTS - 2  # input, decompose, select, 4 × (assess, solve), finalize …
    assert len(base_bodies) == REQUESTS and expected["answer"] is not None

    points = [(n, name) for n in range(1, boundaries + 1) for name in ("KILL", "INT")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda point: boundary_run(tmp_path, *point), points))

    for (number, name), o in zip(points, outcomes):
        label = f"SIG{name} before checkpoint write {number} (stopped before {o['where']})"
        killed = o["killed"]
        assert killed.returncode == EXIT[name], (label, killed.returncode, killed.stderr[-2000:])
        assert TRACEBACK not in killed.stderr, (label, killed.stderr)
        if name == "INT":
            assert killed.stderr.strip().splitlines()[-1].startswith("error: interrupted"), (label, killed.stderr)
        assert o["listed"].returncode == 0, (label, o["listed"].stderr)
        status = json.loads(o["listed"].stdout)[0]
        # "done" only when finalize's writes are saved: then with the answer
        assert status["status"] != "done" or status["answer"] == expected["answer"], (label, status)
        assert o["resumed"].returncode == 0, (label, o["resumed"].stderr)
        assert comparable(o["shown"]) == expected, label
        assert last_json(o["resumed"].stdout)["answer"] == expected["answer"], label
        assert sorted(o["bodies"]) == sorted(base_bodies), (label, "a call was repeated or left out", o["arrivals"])


def stored_results(results: Path) -> list[tuple]:
    """(answer, error) of every stored evaluation result (none when the file is not there yet)."""
    if not results.exists():
        return []
    with sqlite3.connect(results) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = conn.execute("SELECT answer, error FROM eval_results").fetchall() if "eval_results" in tables else []
    conn.close()
    return rows


def eval_args(work: Path, dataset: Path) -> list[str]:
    return ["eval", "--dataset", str(dataset), "--method", "scale", "--samples", "1", "--name", "kill",
            "--candidates", str(RUN["candidates"]), "--system2-max-tokens", str(RUN["system2_max_tokens"]),
            "--concurrency", "1", "--db", str(work / "runs.db"), "--results-db", str(work / "results.db")]


def boundary_eval(tmp: Path, dataset: Path, number: int, name: str) -> dict:
    """`scale eval` of one problem signalled before checkpoint write ``number``, then run again."""
    work = tmp / f"eval-{name.lower()}{number:02d}"
    work.mkdir()
    server = new_server()
    try:
        env = endpoint_env(server.base_url, thinking_budget=RUN["thinking_budget"])
        killed = driven(number, name, work, eval_args(work, dataset), env)
        after_kill = stored_results(work / "results.db")
        again = scale_process(*eval_args(work, dataset), env=env, timeout=PROCESS_TIMEOUT)
        return {"killed": killed, "after_kill": after_kill, "again": again,
                "stored": stored_results(work / "results.db"), "bodies": request_bodies(server.stats()["log"])}
    finally:
        server.close()


@pytest.mark.timeout(1800)
def test_eval_signalled_at_every_checkpoint_boundary_stores_the_uninterrupted_answer(tmp_path):
    """Issue 12.1: an evaluation killed between a node's saved writes and its checkpoint stored
    the sample as a wrong answer (the run looked finished) and never retried it. Killed or
    interrupted before each checkpoint write, re-running the same command stores the answer of
    an uninterrupted evaluation, repeats no call, and never stores a sample done without answer."""
    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"id": "p1", "problem": PROBLEM, "answer": "5"}) + "\n")
    (tmp_path / "base").mkdir()
    server = new_server()
    try:
        base = driven(0, "KILL", tmp_path / "base", eval_args(tmp_path / "base", dataset),
                      endpoint_env(server.base_url, thinking_budget=RUN["thinking_budget"]))
        assert base.returncode == 0, base.stderr
        base_bodies = request_bodies(server.stats()["log"])
    finally:
        server.close()
    expected = stored_results(tmp_path / "base" / "results.db")
    assert len(expected) == 1 and expected[0][0] is not None and expected[0][1] is None, expected
    boundaries = len((tmp_path / "base" / "writes").read_text().split())
    assert len(base_bodies) == REQUESTS and boundaries >= REQUESTS

    points = [(n, name) for n in range(1, boundaries + 1) for name in ("KILL", "INT")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda point: boundary_eval(tmp_path, dataset, *point), points))

    for (number, name), o in zip(points, outcomes):
        label = f"SIG{name} before checkpoint write {number}"
        assert o["killed"].returncode == EXIT[name], (label, o["killed"].returncode, o["killed"].stderr[-2000:])
        assert TRACEBACK not in o["killed"].stderr, (label, o["killed"].stderr)
        assert all(answer is not None or error for answer, error in o["after_kill"]), (label, o["after_kill"])
        assert o["again"].returncode == 0, (label, o["again"].stderr)
        assert o["stored"] == expected, (label, o["stored"])
        assert sorted(o["bodies"]) == sorted(base_bodies), (label, "a call was repeated or left out")
