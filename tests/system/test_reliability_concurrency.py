"""Concurrency on one SQLite file: 4 processes × 16 problems in flight at once, plus readers.

Each process (tests/support/drivers/concurrency.py) opens the database with
``persistence.open_async`` and runs 16 problems with ``asyncio.gather`` against one fake server
subprocess (50 ms latency); `scale runs list --json` reads the file while they write. No run may
fail ("database is locked" or anything else), and all 64 must be finished and readable.

Several processes setting up the same *new* file at the same moment is its own test (the
store's schema migrations raced before persistence locked the set-up); the main test creates
the file first.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scale_graph.persistence import open_async
from tests.support.cli import CLI, scale_process
from tests.support.reliability import (
    ServerProcess,
    assert_one_error_line,
    endpoint_env,
    last_json,
    request_bodies,
)

pytestmark = pytest.mark.timeout(600)

DRIVER = Path(__file__).parents[1] / "support" / "drivers" / "concurrency.py"
PROCESSES, PROBLEMS = 4, 16
REQUESTS_PER_RUN = 8  # decompose, select, 3 × (assess, solve): 3 sub-problems, no cut-off thinking


def create(db: Path) -> None:
    async def main():
        async with open_async(db):
            pass

    asyncio.run(main())


def test_four_processes_sixteen_problems_each_on_one_database(tmp_path):
    db = tmp_path / "shared.db"
    create(db)  # the concurrent first set-up of a file is test_processes_setting_up_a_new_database_at_once
    with ServerProcess("--latency", "0.05") as server:
        env = endpoint_env(server.base_url, db, candidates=2)
        drivers = [subprocess.Popen([sys.executable, str(DRIVER), str(db), f"p{n}", str(PROBLEMS)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for n in range(PROCESSES)]
        # readers while the writers work
        readings = []
        deadline = time.monotonic() + 300
        while any(d.poll() is None for d in drivers) and time.monotonic() < deadline and len(readings) < 3:
            if db.exists():
                readings.append(scale_process("runs", "list", "--json", env=env, timeout=300))
            time.sleep(0.5)
        outputs = [d.communicate(timeout=300) for d in drivers]
        stats = server.stats()

    for driver, (stdout, stderr) in zip(drivers, outputs):
        assert driver.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr and "Traceback" not in stderr, stderr[-3000:]
        result = last_json(stdout)
        assert result["failures"] == [], result["failures"]
        assert len(result["done"]) == PROBLEMS
    assert readings, "no reader ran while the writers worked"
    for reading in readings:
        assert reading.returncode == 0, reading.stderr
        assert "database is locked" not in reading.stderr

    listed = scale_process("runs", "list", "--json", env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == PROCESSES * PROBLEMS
    assert {r["thread_id"] for r in rows} == {f"p{n}-{i:02d}" for n in range(PROCESSES) for i in range(PROBLEMS)}
    assert all(r["status"] == "done" and r["answer"] is not None and r["subproblems"] == 3 for r in rows), \
        [r for r in rows if r["status"] != "done"][:3]
    # every run made exactly its own calls: none lost, none repeated
    assert stats["requests"] == PROCESSES * PROBLEMS * REQUESTS_PER_RUN
    shown = scale_process("runs", "show", "p3-15", "--json", env=env, timeout=300)
    assert shown.returncode == 0 and last_json(shown.stdout)["status"] == "done"


RACE_DRIVER = Path(__file__).parents[1] / "support" / "drivers" / "open_race.py"
RACERS, ROUNDS = 6, 12


def test_processes_setting_up_a_new_database_at_once(tmp_path):
    """Issue 10.6: the store's migrations raced ('duplicate column name: expires_at|ttl_minutes',
    'UNIQUE constraint failed: store_migrations.v'); persistence locks the first set-up."""
    racers = [subprocess.Popen([sys.executable, str(RACE_DRIVER), str(tmp_path), f"p{n}", str(ROUNDS)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(RACERS)]
    try:
        for r in range(ROUNDS):  # release all processes together, round after round
            deadline = time.monotonic() + 120
            while len(list(tmp_path.glob(f"ready-{r}-*"))) < RACERS and time.monotonic() < deadline:
                if any(p.poll() is not None for p in racers):
                    break
                time.sleep(0.005)
            (tmp_path / f"go-{r}").touch()
        outputs = [p.communicate(timeout=300) for p in racers]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
    failures = []
    for process, (stdout, stderr) in zip(racers, outputs):
        assert process.returncode == 0, stderr[-2000:]
        failures += last_json(stdout)["failures"]
    assert failures == [], f"{len(failures)} of {RACERS * ROUNDS} opens failed, e.g. {failures[:3]}"


def test_two_resumes_of_one_run_at_once_one_refuses_and_each_call_is_made_once(tmp_path):
    """Issue 12.2: the second `scale runs resume` of a run another process works on refuses (exit
    2, one line naming the holder) instead of running everything left a second time."""
    db = tmp_path / "runs.db"
    with ServerProcess("--latency", "0") as server:
        env = endpoint_env(server.base_url, db, candidates=2)
        server.inject("refuse", times=50, stage="difficulty")  # stops the run before its first assess
        stopped = scale_process("solve", "What is 2+3?", "--thread-id", "r", env=env, timeout=300)
        assert stopped.returncode == 1, stopped.stderr
        server.reset()
        server.configure(latency=2.0)  # the first resume works ~12 s: the second comes meanwhile
        first = subprocess.Popen([*CLI, "runs", "resume", "r", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while server.stats()["requests"] < 1 and not server.stats()["log"] and time.monotonic() < deadline:
            if first.poll() is not None:
                break
            time.sleep(0.05)
        second = scale_process("runs", "resume", "r", "--json", env=env, timeout=300)
        out, err = first.communicate(timeout=300)
        stats = server.stats()
    assert first.returncode == 0, err
    assert last_json(out)["answer"] is not None
    assert_one_error_line(second, 2, f"run r is being worked on by another process (pid {first.pid} on ")
    assert "try again after it stops, or in " in second.stderr
    bodies = request_bodies(stats["log"])
    assert len(bodies) == len(set(bodies)) == 6, "a call was made twice"  # 3 × (assess, solve)
