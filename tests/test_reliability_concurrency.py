"""Concurrency on one SQLite file: 4 processes × 16 problems in flight at once, plus readers.

Each process (tests/reliability_concurrency_driver.py) opens the database with
``persistence.open_async`` and runs 16 problems with ``asyncio.gather`` against one fake server
subprocess (50 ms latency); `scale runs list --json` reads the file while they write. No run may
fail ("database is locked" or anything else), and all 64 must be finished and readable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability_helpers import ServerProcess, endpoint_env, last_json, scale

pytestmark = pytest.mark.timeout(600)

DRIVER = Path(__file__).with_name("reliability_concurrency_driver.py")
PROCESSES, PROBLEMS = 4, 16
REQUESTS_PER_RUN = 8  # decompose, select, 3 × (assess, solve): 3 sub-problems, no cut-off thinking


def test_four_processes_sixteen_problems_each_on_one_database(tmp_path):
    db = tmp_path / "shared.db"
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
                readings.append(scale("runs", "list", "--json", env=env, timeout=300))
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

    listed = scale("runs", "list", "--json", env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == PROCESSES * PROBLEMS
    assert {r["thread_id"] for r in rows} == {f"p{n}-{i:02d}" for n in range(PROCESSES) for i in range(PROBLEMS)}
    assert all(r["status"] == "done" and r["answer"] is not None and r["subproblems"] == 3 for r in rows), \
        [r for r in rows if r["status"] != "done"][:3]
    # every run made exactly its own calls: none lost, none repeated
    assert stats["requests"] == PROCESSES * PROBLEMS * REQUESTS_PER_RUN
    shown = scale("runs", "show", "p3-15", "--json", env=env, timeout=300)
    assert shown.returncode == 0 and last_json(shown.stdout)["status"] == "done"
