"""LangGraph Studio / `langgraph dev` on the project's SQLite run database (scale_graph.studio).

The end-to-end test starts a real `langgraph dev` (package langgraph-cli[inmem]) on a temporary
langgraph.json whose checkpointer and store are scale_graph.studio's factories, with the inner
SCALE calls going to a fake OpenAI server process, and checks that a run started through the
LangGraph SDK (what Studio uses) is an ordinary run of the SCALE database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import scale_graph.studio
from scale_graph.cli import app as cli_app
from tests.support.ports import free_port
from tests.support.reliability import REPO_ROOT

PROBLEM = "What is 1+1?"
GRAPH_MODULE = importlib.import_module("scale_graph.graph")  # the package re-exports `graph`, hiding the module
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # langgraph-cli: no usage report
    "LANGGRAPH_NO_VERSION_CHECK": "1",  # langgraph-api: no PyPI version check at start
    "LANGSMITH_TRACING": "false",  # no traces to LangSmith
    "LANGCHAIN_TRACING_V2": "false",
}




def scale(*args: str, env: dict | None = None) -> dict:
    result = CliRunner().invoke(cli_app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def langgraph_json(folder: Path) -> Path:
    """A langgraph.json like the repository's, with absolute paths to this checkout's files."""
    studio, graph = Path(scale_graph.studio.__file__).resolve(), Path(GRAPH_MODULE.__file__).resolve()
    config = {"dependencies": ["."], "graphs": {"scale": f"{graph}:graph"},
              "checkpointer": {"path": f"{studio}:checkpointer"}, "store": {"path": f"{studio}:store"}}
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config, indent=2))
    return path


# ---- the factories in-process ------------------------------------------------------------------
def test_factories_open_the_scale_database(scripted_endpoints, tmp_path, monkeypatch):
    """What `langgraph dev` does with them: enter, run a graph on the yielded pair, exit."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.store.sqlite import AsyncSqliteStore

    from scale_graph import build_graph
    from scale_graph.runner import start
    from tests.support.run_context import context

    scripted_endpoints()
    monkeypatch.setenv("SCALE_DB", str(tmp_path / "studio.db"))

    async def main():
        async with scale_graph.studio.checkpointer() as saver, scale_graph.studio.store() as store:
            assert isinstance(saver, AsyncSqliteSaver) and isinstance(store, AsyncSqliteStore)
            await start(build_graph(saver, store), store, PROBLEM, context(candidates=2), "f1")

    asyncio.run(main())
    shown = scale("runs", "show", "f1", "--json", "--db", str(tmp_path / "studio.db"))
    assert shown["status"] == "done" and shown["answer"] == "33" and shown["params"]["candidates"] == 2


def test_factories_default_to_scale_db_in_the_working_directory(isolated):
    async def main():
        async with scale_graph.studio.checkpointer(), scale_graph.studio.store():
            pass

    asyncio.run(main())
    assert (isolated / "scale.db").exists()


def test_input_and_output_schemas_render():
    graph = GRAPH_MODULE.graph
    assert list(graph.get_input_jsonschema()["properties"]) == ["problem"]
    assert "answer" in graph.get_output_jsonschema()["properties"]


# ---- langgraph dev end to end ------------------------------------------------------------------
class Log:
    """A subprocess's output file (the child appends; we read it separately)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""


@contextlib.contextmanager
def process(args, *, env, cwd, ready, timeout=90.0):
    """A subprocess whose output goes to a log file; ``ready(log)`` polled until it returns a true value."""
    log = Log(cwd / f"{Path(args[0]).name}-{len(os.listdir(cwd))}.log")
    with open(log.path, "ab") as sink:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not (result := ready(log)):
            assert proc.poll() is None, f"{args[0]} exited {proc.returncode}:\n{log.text()[-4000:]}"
            assert time.monotonic() < deadline, f"{args[0]} not ready after {timeout} s:\n{log.text()[-4000:]}"
            time.sleep(0.2)
        yield result, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fake_openai_ready(log: Log) -> str | None:
    for line in log.text().splitlines():
        if line.startswith("READY "):
            return line.split()[1]
    return None


def server_ok(url):
    def ready(_log: Log) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/ok", timeout=2).status_code == 200
        return False

    return ready


def test_langgraph_dev_runs_land_in_the_scale_database(tmp_path):
    pytest.importorskip("langgraph_api", reason="needs langgraph-cli[inmem]")
    from langgraph_sdk import get_client

    langgraph = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which("langgraph")
    if langgraph is None:
        pytest.skip("the langgraph command is not installed")
    db = tmp_path / "studio.db"
    config = langgraph_json(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALE_")}
    env.update(OFFLINE_ENV, SCALE_DB=str(db), SCALE_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")

    with process([sys.executable, "-m", "tests.support.fake_openai", "--port", "0"],
                 env={**env, "PYTHONPATH": str(REPO_ROOT)}, cwd=tmp_path, ready=fake_openai_ready,
                 timeout=30) as (fake_url, _):
        for system in (1, 2):
            env[f"SCALE_SYSTEM{system}_BASE_URL"] = fake_url
            env[f"SCALE_SYSTEM{system}_MODEL"] = f"scale-system{system}"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        with process([langgraph, "dev", "--port", str(port), "--no-browser", "--no-reload", "--config", str(config)],
                     env=env, cwd=tmp_path, ready=server_ok(url)) as (_, log):
            startup = time.monotonic() - began

            async def drive():
                client = get_client(url=url)
                [assistant] = await client.assistants.search(graph_id="scale")
                schemas = await client.assistants.get_schemas(assistant["assistant_id"])
                thread = await client.threads.create()
                parts = [part async for part in client.runs.stream(
                    thread["thread_id"], "scale", input={"problem": PROBLEM}, context={"candidates": 2},
                    stream_mode=["updates", "custom"])]
                history = await client.threads.get_history(thread["thread_id"], limit=100)
                state = await client.threads.get_state(thread["thread_id"])
                return schemas, thread["thread_id"], parts, history, state

            schemas, thread_id, parts, history, state = asyncio.run(drive())
            output = log.text()
            assert "Using custom checkpointer" in output and "AsyncSqliteSaver" in output, output[-3000:]
            assert "Using custom store" in output and "AsyncSqliteStore" in output

            # the run context schema as Studio shows it: Context's fields with defaults and descriptions
            threshold = schemas["context_schema"]["properties"]["threshold"]
            assert threshold["default"] == 0.2 and "τ of Eq. 4" in threshold["description"]
            assert schemas["context_schema"]["properties"]["candidates"]["default"] == 8

            # progress events (custom) and node updates streamed
            assert not [p for p in parts if p.event == "error"], [p.data for p in parts if p.event == "error"]
            custom = [p.data["event"] for p in parts if p.event == "custom"]
            assert custom == ["decomposed", "selected"] + ["assessed", "solved"] * 3 + ["finalized"], custom
            assert next(p.data for p in parts if p.event == "custom")["candidates"] == 2  # the run context arrived
            updated = [node for p in parts if p.event == "updates" for node in p.data]
            assert updated[:3] == ["decompose", "select", "assess"] and updated[-1] == "finalize"

            # the thread's history, read back through the custom checkpointer
            assert state["values"]["answer"] and len(state["values"]["steps"]) == 3 and state["next"] == []
            assert [h["next"] for h in history][-2:] == [["decompose"], ["__start__"]]

            # the same thread in the SCALE database, while the server still runs
            shown = scale("runs", "show", thread_id, "--json", "--db", str(db))
            assert shown["status"] == "done" and shown["answer"] == state["values"]["answer"]
            assert shown["params"]["candidates"] == 2 and shown["problem"] == PROBLEM
            assert len(shown["checkpoints"]) == len(history)
            assert all(row["solution"] for row in shown["subproblems"])  # texts from the journal (store)
            listed = scale("runs", "list", "--json", "--db", str(db))
            assert [r["thread_id"] for r in listed] == [thread_id]

            # and the other way round: a CLI run (with a UUID id) opens in the server / Studio
            cli_id = str(uuid.uuid4())
            solved = scale("solve", "What is 2+2?", "-k", "1", "--thread-id", cli_id, "--json", "--db", str(db),
                           env={k: v for k, v in env.items() if k.startswith("SCALE_")})

            async def open_cli_run():
                client = get_client(url=url)
                await client.threads.create(thread_id=cli_id, metadata={"graph_id": "scale"})
                return await client.threads.get_state(cli_id), await client.threads.get_history(cli_id, limit=100)

            cli_state, cli_history = asyncio.run(open_cli_run())
            assert cli_state["values"]["answer"] == solved["answer"] and len(cli_history) > 5
    print(f"langgraph dev ready in {startup:.1f} s")
