"""`scale ui` through Starlette's TestClient on runs made against the fake OpenAI server: the JSON
the pages draw agrees with the CLI (`runs list/show/diff --json`, `scale report`), bad ids are
404 pages, secrets never leave, and the command refuses what it must (one line, exit 2)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from scale_graph import runner
from scale_graph.evaluation.store import ResultsStore
from scale_graph.graph import build_graph
from scale_graph.persistence import open_async
from scale_graph.setup import resolve
from scale_graph.ui.app import create_app
from scale_graph.cli.ui import is_loopback
from tests.support.cli import scale
from tests.support.datasets import write_datasets

PROBLEM = "What is 12 squared minus 119?"


def scale_json(*args: str) -> Any:
    result = scale(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def solve(thread: str, problem: str = PROBLEM, **params: Any) -> None:
    async def work() -> None:
        async with open_async(Path("scale.db")) as (saver, store):
            context = resolve({"candidates": 2, **params}).context
            await runner.start(build_graph(saver, store), store, problem, context, thread)

    asyncio.run(work())


@pytest.fixture
def runs(fake_server, endpoint_env) -> Path:
    """A finished run, a fork of it, a run waiting for review, a run failed on a server error, in ./scale.db."""
    fake_server.configure(difficulties=(0.1, 0.8, 0.1), subproblem_count=3)
    solve("parent", threshold=0.5)
    assert scale("runs", "fork", "parent", "--at", "2", "--system", "1").exit_code == 0
    solve("paused", review=True)
    fake_server.inject("400", times=1, stage="solve")
    with pytest.raises(Exception):
        solve("broken")
    return Path("scale.db")


def client(db: Path, **kwargs: Any) -> TestClient:
    return TestClient(create_app(db, **kwargs), raise_server_exceptions=False, base_url="http://127.0.0.1:8300")


def test_the_run_list_agrees_with_runs_list_and_pages_filters_and_sorts(runs):
    listed = {row["thread_id"]: row for row in scale_json("runs", "list")}
    with client(runs) as ui:
        page = ui.get("/api/runs").json()
        assert page["total"] == len(listed) == 4
        assert page["counts"] == {"done": 2, "running": 0, "stopped": 1, "failed": 1, "not started": 0}
        for row in page["rows"]:
            cli_row = listed[row["thread_id"]]
            assert (row["status"], row["answer"], row["tokens"], row["fork_of"]) == \
                   (cli_row["status"], cli_row["answer"], cli_row["tokens"], cli_row["fork_of"])
        assert listed["broken"]["status"].startswith("stopped before")  # where it stopped, as LangGraph says
        assert next(row for row in page["rows"] if row["thread_id"] == "broken")["state"] == "failed"
        one = ui.get("/api/runs", params={"per_page": 1, "page": 2, "sort": "thread_id", "order": "asc"}).json()
        assert [r["thread_id"] for r in one["rows"]] == [sorted(listed)[1]] and one["pages"] == 4
        done = ui.get("/api/runs", params={"state": "done"}).json()
        assert {r["thread_id"] for r in done["rows"]} == {k for k, v in listed.items() if v["status"] == "done"}
        assert [r["thread_id"] for r in ui.get("/api/runs", params={"text": "BROK"}).json()["rows"]] == ["broken"]
        assert ui.get("/api/runs", params={"page": "x", "sort": "; DROP TABLE store", "per_page": 10**9}).status_code == 200


def test_a_run_page_is_runs_show_json_with_its_forks_and_commands(runs):
    shown = scale_json("runs", "show", "parent")
    child = next(row["thread_id"] for row in scale_json("runs", "list") if row["fork_of"] == "parent")
    with client(runs) as ui:
        run = ui.get("/api/run", params={"id": "parent"}).json()
        fork = ui.get("/api/run", params={"id": child}).json()
    for name in ("subproblems", "answer", "status", "usage", "candidates", "selection", "params"):
        assert run[name] == shown[name], name
    assert [s["system"] for s in run["subproblems"]] == [1, 2, 1]
    assert run["children"] == [{"thread_id": child, "at": 2, "change": "sub-problem 2 on System 1"}]
    assert fork["fork_of"]["thread_id"] == "parent" and "diff" in fork["commands"]
    assert run["commands"]["resume"] == "scale runs resume parent"
    assert {p["name"]: p["origin"] for p in run["parameters"]}["candidates"] == "set for this run"
    assert {p["name"]: p["origin"] for p in run["parameters"]}["max_subproblems"] == "default"


def test_a_failed_run_shows_its_error_and_how_to_continue_it(runs):
    with client(runs) as ui:
        broken = ui.get("/api/run", params={"id": "broken"}).json()
        paused = ui.get("/api/run", params={"id": "paused"}).json()
    assert broken["state"] == "failed" and "HTTP 400" in broken["error"]
    assert broken["status"] == scale_json("runs", "show", "broken")["status"]
    assert paused["state"] == "stopped" and paused["error"] is None


def test_the_diff_is_runs_diff(runs):
    child = next(row["thread_id"] for row in scale_json("runs", "list") if row["fork_of"] == "parent")
    expected = scale_json("runs", "diff", "parent", child)
    with client(runs) as ui:
        diff = ui.get("/api/diff", params={"a": "parent", "b": child}).json()
    assert diff == expected and diff["first_divergence"] == 2


@pytest.mark.parametrize("url", ["/run?id=nope", "/run?id=has.a.dot", "/run?id=", "/api/run?id=nope",
                                 "/api/run?id=" + "x" * 300, "/api/diff?a=parent&b=nope", "/no/such/page",
                                 "/evaluation?name=x"])
def test_a_missing_or_malformed_id_is_a_404_page_never_a_traceback(runs, url):
    with client(runs) as ui:
        reply = ui.get(url)
    assert reply.status_code == 404
    assert "Traceback" not in reply.text and 'File "' not in reply.text
    if url.startswith("/api/"):
        assert reply.json()["error"]


def test_no_api_key_or_password_reaches_a_page(runs, monkeypatch):
    secret = "sk-uiSECRETkey123456"
    monkeypatch.setenv("SCALE_SYSTEM1_API_KEY", secret)
    solve("pasted", problem=f"Compute 2+2. (my key is {secret}, url http://me:hunter2pass@host/v1)")
    with client(runs) as ui:
        texts = [ui.get(url).text for url in ("/api/runs", "/api/run?id=pasted", "/run?id=pasted")]
    assert all(secret not in text and "hunter2pass" not in text for text in texts)
    assert "[redacted]" in texts[1]


def test_an_api_key_is_required_by_header_cookie_or_once_in_the_url(runs):
    with client(runs, api_key="open-sesame") as ui:
        assert ui.get("/api/runs").status_code == 401
        assert ui.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert ui.get("/api/runs", headers={"Authorization": "Bearer open-sesame"}).status_code == 200
        first = ui.get("/runs?key=open-sesame&state=done", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/runs?state=done"
        assert ui.get("/api/runs").status_code == 200  # the cookie now


def test_without_a_key_only_a_loopback_host_is_answered(runs):
    with client(runs) as ui:
        assert ui.get("/api/runs", headers={"Host": "localhost:8300"}).status_code == 200
        assert ui.get("/api/runs", headers={"Host": "rebound.example.com:8300"}).status_code == 400


def test_evaluations_show_the_numbers_of_scale_report(fake_server, endpoint_env):
    write_datasets(Path("data"))
    evaluated = scale("eval", "-d", "amc23", "--data-dir", "data", "-t", "0.2,0.5", "-k", "2", "-n", "2")
    assert evaluated.exit_code == 0, evaluated.output
    assert scale("report", "--json", "report.json").exit_code == 0
    reported = {m["name"]: m for m in json.loads(Path("report.json").read_text())}
    calibrated = scale("calibrate", "scale-amc23-t0.2", "--json")  # written to ./scale-calibrate/<run>/
    assert calibrated.exit_code == 0, calibrated.output
    with ResultsStore(must_exist=True) as results, client(Path("scale.db"), results=results) as ui:
        shown = ui.get("/api/evaluations").json()
        grid = ui.get("/api/evaluation", params={"name": "scale-amc23-t0.2"}).json()
        cells = [cell for row in grid["rows"] for cell in row["cells"]]
        opened = [ui.get("/api/run", params={"id": cell["thread_id"]}) for cell in cells]
    assert {m["name"]: (m["accuracy"], m["tok"], m["hard"]) for m in shown["metrics"]} == \
           {name: (m["accuracy"], m["tok"], m["hard"]) for name, m in reported.items()}
    assert [t["title"] for t in shown["tables"]] == ["Runs", "Comparison (paper Table 1)",
                                                     "SCALE by difficulty threshold τ (paper Table 2)"]
    assert [row[0] for row in shown["tables"][2]["rows"]] == ["0.2", "0.5"]
    assert len(cells) == reported["scale-amc23-t0.2"]["samples"] == 4
    assert {cell["outcome"] for cell in cells} <= {"correct", "wrong", "ungraded", "failed"}
    assert all(reply.status_code == 200 for reply in opened)  # each cell opens its sample's run
    written = json.loads(next(Path("scale-calibrate").glob("*/calibration.json")).read_text())
    assert [c["taus"] for c in shown["calibration"]] == [written["taus"]] and written["paired"] > 0


def test_without_a_results_database_the_evaluations_page_says_so(runs):
    with client(runs) as ui:
        reply = ui.get("/api/evaluations")
    assert reply.status_code == 404 and "no results database" in reply.json()["error"]


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("192.168.1.4", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_command_refuses_with_one_line_and_exit_2(runs, tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    cases = [(["ui", "--host", "0.0.0.0"], "--api-key"),
             (["ui", "--db", str(tmp_path / "missing.db")], "does not exist"),
             (["ui", "--db", str(corrupt)], "corrupt"),
             (["ui", "--results-db", str(tmp_path / "none.db")], "does not exist"),
             (["ui", "--port", "0"], "--port")]
    for args, words in cases:
        result = scale(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("error:") == 1 and words in result.output and "Traceback" not in result.output


def test_the_pages_ship_every_asset_they_load(runs):
    with client(runs) as ui:
        page = ui.get("/runs").text
        assets = [part.split('"')[0] for part in page.split('="/static/')[1:]]
        css = ui.get("/static/vendor/katex/katex.min.css").text
        fonts = [part.split(")")[0] for part in css.split("url(")[1:] if ".woff2" in part.split(")")[0]]
        replies = [ui.get("/static/" + asset) for asset in assets] + \
                  [ui.get("/static/vendor/katex/" + font) for font in fonts]
    assert len(assets) == 5 and fonts and all(reply.status_code == 200 for reply in replies)
    assert "http://" not in page and "https://" not in page


def test_a_list_of_many_runs_is_paged_in_sql(runs):
    with sqlite3.connect(runs) as conn:  # 500 more records: the list reads only the page shown
        conn.executemany("INSERT INTO store (prefix, key, value) VALUES ('scale.runs', ?, ?)",
                         [(f"bulk-{n:04d}", json.dumps({"problem": f"p{n}", "created": n, "params": {}}))
                          for n in range(500)])
    with client(runs) as ui:
        page = ui.get("/api/runs", params={"per_page": 20, "sort": "created", "order": "asc"}).json()
    assert page["total"] == 504 and page["counts"]["not started"] == 500 and len(page["rows"]) == 20
    assert page["rows"][0]["thread_id"] == "bulk-0000"


def test_the_list_follows_runs_made_resumed_and_deleted_while_it_is_open(runs, fake_server):
    def shown(ui: TestClient) -> dict[str, str]:
        return {row["thread_id"]: row["state"] for row in ui.get("/api/runs").json()["rows"]}

    with client(runs) as ui:
        assert shown(ui)["broken"] == "failed"
        solve("later")
        assert scale("runs", "resume", "broken").exit_code == 0
        assert scale("runs", "delete", "paused").exit_code == 0
        now = shown(ui)
        counts = ui.get("/api/runs").json()["counts"]
    assert now["later"] == "done" and now["broken"] == "done" and "paused" not in now
    assert counts == {"done": 4, "running": 0, "stopped": 0, "failed": 0, "not started": 0}
