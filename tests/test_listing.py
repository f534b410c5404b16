"""`scale runs list` answers from plain SQL (no LangGraph import) with what LangGraph would say."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

from typer.testing import CliRunner

from scale_graph.cli import app
from scale_graph.listing import quick_list

runner = CliRunner()


def full_list(path):
    from scale_graph.graph import build_graph
    from scale_graph.persistence import open_async
    from scale_graph.runs import list_runs

    async def rows():
        async with open_async(path) as (saver, store):
            return await list_runs(build_graph(saver, store), store)

    return asyncio.run(rows())


def test_quick_list_agrees_with_langgraph(endpoint_env, fake_server, monkeypatch, tmp_path):
    db = tmp_path / "runs.db"
    assert runner.invoke(app, ["solve", "1+1?", "-k", "2", "--thread-id", "done", "--db", str(db)]).exit_code == 0
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    fake_server.inject("500", times=1, stage="solve")
    assert runner.invoke(app, ["solve", "2+2?", "-k", "2", "--thread-id", "stopped", "--db", str(db)]).exit_code == 1
    fake_server.inject("500", times=1, stage="solve")
    assert runner.invoke(app, ["solve", "3+3?", "-k", "2", "--thread-id", "held", "--db", str(db)]).exit_code == 1
    with sqlite3.connect(db) as conn:  # a live worker (this process) holds "held"
        conn.execute("INSERT OR REPLACE INTO scale_leases VALUES ('held', 'h', ?, ?, ?)",
                     (__import__("socket").gethostname(), os.getpid(), time.time() + 60))

    quick, full = quick_list(db), full_list(db)
    assert quick is not None
    for row in full:  # LangGraph says where a stopped run stopped; the quick list says "stopped"
        if row["status"].startswith("stopped"):
            row["status"] = "stopped"
    assert quick == full
    assert {row["thread_id"]: row["status"] for row in quick} == {
        "done": "done", "stopped": "stopped", "held": f"running (pid {os.getpid()})"}


def test_runs_list_imports_no_langgraph(endpoint_env, fake_server, tmp_path):
    """Issue 15.4: every `scale` command paid seconds of imports before doing anything."""
    db = tmp_path / "runs.db"
    assert runner.invoke(app, ["solve", "1+1?", "-k", "2", "--thread-id", "r", "--db", str(db)]).exit_code == 0
    code = ("import sys, runpy; sys.argv = ['scale', 'runs', 'list', '--json', '--db', sys.argv[1]]\n"
            "try:\n    runpy.run_module('scale_graph.cli', run_name='__main__')\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('langgraph', 'langchain', 'openai'))), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)[0]["status"] == "done"
    assert done.stderr.strip().splitlines()[-1] == "[]"
