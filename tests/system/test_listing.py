"""`scale runs list` answers from plain SQL (no LangGraph import) with what LangGraph would say."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

from scale_graph.listing import quick_list
from tests.support.cli import scale


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
    assert scale("solve", "1+1?", "-k", "2", "--thread-id", "done", "--db", str(db)).exit_code == 0
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    fake_server.inject("500", times=1, stage="solve")
    assert scale("solve", "2+2?", "-k", "2", "--thread-id", "stopped", "--db", str(db)).exit_code == 1
    fake_server.inject("500", times=1, stage="solve")
    assert scale("solve", "3+3?", "-k", "2", "--thread-id", "held", "--db", str(db)).exit_code == 1
    with sqlite3.connect(db) as conn:  # a live worker (this process) holds "held"
        conn.execute("INSERT OR REPLACE INTO scale_leases VALUES ('held', 'h', ?, ?, ?)",
                     (__import__("socket").gethostname(), os.getpid(), time.time() + 60))

    assert quick_list(db) is None  # "stopped" stopped half-way: only LangGraph can say where
    assert scale("runs", "delete", "stopped", "--db", str(db)).exit_code == 0
    quick, full = quick_list(db), full_list(db)
    assert quick is not None and quick == full
    assert {row["thread_id"]: row["status"] for row in quick} == {"done": "done", "held": f"running (pid {os.getpid()})"}


def test_runs_list_imports_no_langgraph(endpoint_env, fake_server, tmp_path):
    """Issue 15.4: every `scale` command paid seconds of imports before doing anything."""
    db = tmp_path / "runs.db"
    assert scale("solve", "1+1?", "-k", "2", "--thread-id", "r", "--db", str(db)).exit_code == 0
    code = ("import sys, runpy; sys.argv = ['scale', 'runs', 'list', '--json', '--db', sys.argv[1]]\n"
            "try:\n    runpy.run_module('scale_graph.cli', run_name='__main__')\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('langgraph', 'langchain', 'openai'))), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)[0]["status"] == "done"
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_a_fork_lists_the_tokens_runs_show_gives_it(endpoint_env, fake_server, tmp_path):
    """Defect before: the quick path summed the fork's own call journal (107 tokens) while
    `runs show` and the LangGraph path count the state's usage, which a fork inherits from its
    parent up to the fork point (269): `runs list` changed its number when any run stopped."""
    db = str(tmp_path / "runs.db")
    fake_server.configure(difficulties=[0.1, 0.8, 0.1], reasoning_bytes=400)
    assert scale("solve", "1+1?", "-k", "2", "--thread-id", "parent", "--db", db).exit_code == 0
    assert scale("runs", "fork", "parent", "--at", "3", "--system", "2", "--thread-id", "fork", "--db", db).exit_code == 0
    shown = {thread: json.loads(scale("runs", "show", thread, "--json", "--db", db).stdout)["usage"]["total"]
             ["completion_tokens"] for thread in ("parent", "fork")}

    quick = quick_list(tmp_path / "runs.db")
    assert quick is not None
    assert {row["thread_id"]: row["tokens"] for row in quick} == shown
    assert {row["thread_id"]: row["tokens"] for row in full_list(tmp_path / "runs.db")} == shown
