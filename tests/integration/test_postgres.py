"""The run database on a real PostgreSQL server (tests/support/postgres.py), and the same CLI on SQLite.

Storage-touching commands run on both backends; PostgreSQL-only: several processes setting up
one new database at once, a killed run resumed by another process, `scale db copy` from SQLite,
a connection killed mid-run, and the server gone mid-run (bounded retries, one clear line, then
a successful resume). The URL carries a password: no output may show it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import scale as scale_in_process
from tests.support.datasets import write_datasets
from tests.support.postgres import PASSWORD, PostgresServer, pg_url, postgres_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)


def scale(*args: str):
    result = scale_in_process(*args)
    assert PASSWORD not in result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result


def ok(*args: str):
    result = scale(*args)
    assert result.exit_code == 0, result.output
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["sqlite", "postgres"])
def run_db(request, tmp_path) -> str:
    """The run database of one backend: a SQLite file, or a fresh PostgreSQL database."""
    return str(tmp_path / "runs.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def spawn(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scale_graph.cli", *args], env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoints(server: PostgresServer, url: str, thread: str) -> int:
    database = url.rsplit("/", 1)[1]
    try:
        return server.sql(f"SELECT count(*) FROM checkpoints WHERE thread_id = '{thread}'", database)[0][0]
    except Exception:  # noqa: BLE001 - the tables are not there yet
        return 0


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- every storage-touching command on both backends ---------------------------------------------
def test_solve_list_show_resume_delete(run_db, endpoint_env, fake_server):
    shown = last_json(ok("solve", "What is 1+1?", "-k", "3", "--thread-id", "r1", "--json", "--db", run_db))
    assert shown["answer"] is not None and len(shown["subproblems"]) == 3
    paused = last_json(ok("solve", "What is 2+2?", "-k", "3", "--thread-id", "r2", "--review", "--json", "--db", run_db))
    assert paused["status"] == "awaiting review"

    listed = {r["thread_id"]: r["status"] for r in json.loads(ok("runs", "list", "--json", "--db", run_db).stdout)}
    assert listed == {"r1": "done", "r2": "stopped before review"}
    resumed = last_json(ok("runs", "resume", "r2", "--accept", "--json", "--db", run_db))
    assert resumed["status"] == "done" and resumed["answer"] is not None
    detail = json.loads(ok("runs", "show", "r1", "--json", "--db", run_db).stdout)
    assert [c["next"] for c in detail["checkpoints"]][:4] == [["__start__"], ["decompose"], ["select"], ["assess"]]
    assert "runs in" in ok("runs", "list", "--db", run_db).stdout

    assert "deleted run r1" in ok("runs", "delete", "r1", "--db", run_db).stdout
    assert [r["thread_id"] for r in json.loads(ok("runs", "list", "--json", "--db", run_db).stdout)] == ["r2"]
    assert scale("runs", "show", "r1", "--db", run_db).exit_code == 2


def test_eval_report_and_traces(run_db, endpoint_env, fake_server, monkeypatch, tmp_path, postgres_server):
    """With SCALE_DB on PostgreSQL the results default to the same database (no scale-results.db)."""
    monkeypatch.setenv("SCALE_DB", run_db)
    write_datasets(tmp_path / "data")
    ok("eval", "--dataset", "aime24", "--data-dir", "data", "--method", "scale,cot", "--limit", "2",
       "--samples", "1", "--candidates", "2")
    report = ok("report", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "m.json"))
    assert "Comparison" in report.stdout
    figures = {row["name"]: row["samples"] for row in json.loads((tmp_path / "m.json").read_text())}
    assert figures == {"scale-aime24": 2, "cot-aime24": 2}
    ok("traces", "generate", "--dataset", "aime24", "--data-dir", "data", "--limit", "1", "--out", "tr", "-k", "2")
    ok("traces", "export", "tr", "--out", "t.jsonl")
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1
    on_server = run_db.startswith("postgresql")
    assert (tmp_path / "scale-results.db").exists() is not on_server
    if on_server:
        names = {row[0] for row in postgres_server.sql("SELECT name FROM eval_runs", run_db.rsplit("/", 1)[1])}
        assert names == {"scale-aime24", "cot-aime24", "tr"}


# ---- PostgreSQL: set-up race, kill and resume, copy, dropped connections -------------------------
SETUP_SCRIPT = """
import asyncio, sys, time
from scale_graph.evaluation.store import ResultsStore
from scale_graph.persistence import open_async

async def main():
    await asyncio.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # imports done: all start together
    if int(sys.argv[2]) % 2:  # what a starting `scale eval` worker does first: the results tables
        ResultsStore(sys.argv[1]).close()
    async with open_async(sys.argv[1]) as (saver, store):
        await store.aput(("probe",), sys.argv[2], {"ok": True})

asyncio.run(main())
"""


def test_concurrent_setup_by_several_processes(pg_url, postgres_server):
    """Checkpoint, store and results set-up of a new database by several starting workers at once
    (the results' lock once deadlocked with the store's CREATE INDEX CONCURRENTLY)."""
    at = str(time.time() + 6)
    procs = [subprocess.Popen([sys.executable, "-c", SETUP_SCRIPT, pg_url, str(n), at], env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
    outcomes = [(p.wait(timeout=90), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in outcomes), [e[-500:] for _, e in outcomes]
    database = pg_url.rsplit("/", 1)[1]
    assert postgres_server.sql("SELECT count(*) FROM store WHERE prefix = 'probe'", database) == [(4,)]
    assert postgres_server.sql("SELECT max(v) FROM checkpoint_migrations", database)[0][0] > 0


def test_concurrent_results_setup(pg_url, postgres_server):
    """Several workers creating the results tables of a new database at once (threads: own connections)."""
    from concurrent.futures import ThreadPoolExecutor

    from scale_graph.evaluation.store import ResultsStore

    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: ResultsStore(pg_url), range(6)))
    for store in stores:
        store.close()
    assert postgres_server.sql("SELECT count(*) FROM eval_runs", pg_url.rsplit("/", 1)[1]) == [(0,)]


def test_workers_saving_the_same_samples_never_collide(pg_url, postgres_server):
    """Found by bench/scaleout.py: workers of one shared evaluation saving the same sample crashed on
    the results' unique key (select-then-insert is not atomic)."""
    import threading

    from scale_graph.evaluation.datasets import Problem
    from scale_graph.evaluation.grading import Grade
    from scale_graph.evaluation.methods import Outcome
    from scale_graph.evaluation.store import ResultsStore

    stores = [ResultsStore(pg_url) for _ in range(4)]
    run_id = stores[0].open_run("shared-run", "cot", "d", {})
    problems = [Problem(f"p{i}", "q", "1") for i in range(60)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def save_all(store) -> None:
        start.wait()
        try:
            for problem in problems:
                store.save(run_id, problem, 0, Outcome(answer="1", usage={}), Grade(True, "equivalent"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    workers = [threading.Thread(target=save_all, args=(store,)) for store in stores]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        assert failures == []
        assert len(stores[0].finished(run_id)) == len(problems)
    finally:
        for store in stores:
            store.close()


def test_killed_run_is_resumed_by_another_process(pg_url, postgres_server, endpoint_env, fake_server):
    fake_server.configure(latency=0.25)
    solving = spawn("solve", "What is 3+4?", "-k", "3", "--seed", "7", "--thread-id", "k1", "--json", "--db", pg_url)
    wait_for(lambda: checkpoints(postgres_server, pg_url, "k1") >= 4)
    solving.send_signal(signal.SIGKILL)
    solving.wait(timeout=10)
    fake_server.configure(latency=0.0)
    done = subprocess.run([sys.executable, "-m", "scale_graph.cli", "runs", "resume", "k1", "--json", "--db", pg_url],
                          env=cli_env(), capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["status"] == "done" and resumed["answer"] is not None
    spent = fake_server.stats()["requests"]
    reference = last_json(ok("solve", "What is 3+4?", "-k", "3", "--seed", "7", "--thread-id", "k2", "--json",
                             "--db", pg_url))
    # no finished call repeated: at most the one in flight at the kill
    assert spent <= fake_server.stats()["requests"] - spent + 1 and len(resumed["subproblems"]) == len(
        reference["subproblems"])
    assert PASSWORD not in done.stdout + done.stderr


def test_db_copy_round_trip(pg_url, endpoint_env, fake_server, tmp_path):
    write_datasets(tmp_path / "data")
    ok("solve", "What is 1+1?", "-k", "3", "--thread-id", "c1", "--json")
    ok("solve", "What is 5+6?", "-k", "3", "--thread-id", "c2", "--review", "--json")
    ok("eval", "--dataset", "aime24", "--data-dir", "data", "--method", "cot", "--limit", "2", "--samples", "1")
    before = {r["thread_id"]: r for r in json.loads(ok("runs", "list", "--json").stdout)}
    before_show = json.loads(ok("runs", "show", "c1", "--json").stdout)

    copied = ok("db", "copy", "scale.db", pg_url)
    assert "copied 2 run(s)" in copied.stdout and "and 2 result(s)" in copied.stdout
    after = {r["thread_id"]: r for r in json.loads(ok("runs", "list", "--json", "--db", pg_url).stdout)}
    assert after == before
    after_show = json.loads(ok("runs", "show", "c1", "--json", "--db", pg_url).stdout)
    assert after_show == before_show
    requests = fake_server.stats()["requests"]
    resumed = last_json(ok("runs", "resume", "c2", "--accept", "--json", "--db", pg_url))  # where it paused
    assert resumed["status"] == "done" and fake_server.stats()["requests"] > requests
    report = ok("report", "--results-db", pg_url, "--json", str(tmp_path / "m.json"))
    assert "Comparison" in report.stdout
    assert [(row["name"], row["samples"]) for row in json.loads((tmp_path / "m.json").read_text())] == [("cot-aime24", 2)]

    again = ok("db", "copy", "scale.db", pg_url)  # safe to repeat: nothing doubled
    assert "copied 0 run(s)" in again.stdout and "skipped 2 runs" in again.stdout
    assert "skipped 1 result runs" in again.stdout
    assert scale("db", "copy", "scale.db", "elsewhere.db").exit_code == 2  # not a PostgreSQL destination


def test_connection_killed_mid_run_is_retried(pg_url, postgres_server, endpoint_env, fake_server):
    """Every server connection of the run terminated at once, twice, mid-run: the run finishes."""
    fake_server.configure(latency=0.2)
    database = pg_url.rsplit("/", 1)[1]
    solving = spawn("solve", "What is 8+9?", "-k", "3", "--thread-id", "d1", "--json", "--db", pg_url)
    for at in (3, 6):
        wait_for(lambda: checkpoints(postgres_server, pg_url, "d1") >= at)
        killed = postgres_server.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")
        assert killed[0][0] >= 1
    out, errors = solving.communicate(timeout=90)
    assert solving.returncode == 0, errors
    assert json.loads(out.strip().splitlines()[-1])["status"] == "done"


def test_server_gone_mid_run_gives_one_line_then_resumes(pg_url, postgres_server, endpoint_env, fake_server):
    """Through a TCP proxy that goes down: bounded retries, one clear line, non-zero exit, then resume."""
    from tests.support.tcp_proxy import RecordingProxy

    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    proxy = RecordingProxy("127.0.0.1", port).start()
    via_proxy = pg_url.replace(f":{port}/", f":{proxy.port}/")
    fake_server.configure(latency=0.3)
    solving = spawn("solve", "What is 2+9?", "-k", "3", "--thread-id", "g1", "--json", "--db", via_proxy)
    wait_for(lambda: checkpoints(postgres_server, pg_url, "g1") >= 3)
    started = time.monotonic()
    proxy.listener.shutdown(socket.SHUT_RDWR)  # wakes its accept(): a closed listener alone keeps accepting on Linux
    proxy.stop()
    out, errors = solving.communicate(timeout=90)
    assert solving.returncode != 0 and time.monotonic() - started < 40
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in errors and PASSWORD not in errors + out
    assert "connection" in lines[0] and "resume" in lines[0] and "postgres:***@" in lines[0]
    fake_server.configure(latency=0.0)
    resumed = last_json(ok("runs", "resume", "g1", "--json", "--db", pg_url))
    assert resumed["status"] == "done" and resumed["answer"] is not None


# ---- units: URL handling, messages, Studio -------------------------------------------------------
def test_url_survives_a_path_option_and_never_shows_its_password():
    from scale_graph.persistence import db_path
    from scale_graph.postgres import PostgresUrl, mask_url

    url = f"postgresql://me:{PASSWORD}@db.example:5432/scale"
    for given in (url, Path(url), url.replace("postgresql", "postgres")):
        parsed = db_path(given)
        assert isinstance(parsed, PostgresUrl) and parsed.url == url.replace("postgres://", "postgresql://")
        assert PASSWORD not in f"{parsed} {parsed!r}" and "me:***@db.example:5432/scale" in str(parsed)
    assert mask_url(f"host=x password={PASSWORD} user=me") == "host=x password=*** user=me"
    assert db_path("scale.db") == Path("scale.db")


def test_unreachable_server_is_one_line_without_password(endpoint_env):
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:9/scale"  # the discard port: refused
    result = scale("runs", "list", "--db", url)
    assert result.exit_code == 2 and "cannot connect" in result.output and "me:***@" in result.output


def test_studio_factories_honour_a_postgres_url(pg_url, scripted_endpoints, monkeypatch):
    import scale_graph.studio
    from scale_graph import build_graph
    from scale_graph.runner import start
    from tests.support.run_context import context

    scripted_endpoints()
    monkeypatch.setenv("SCALE_DB", pg_url)

    async def main():
        async with scale_graph.studio.checkpointer() as saver, scale_graph.studio.store() as store:
            assert type(saver).__module__ .startswith("scale_graph.postgres")
            await start(build_graph(saver, store), store, "What is a+b?", context(candidates=2), "s1")

    asyncio.run(main())
    shown = json.loads(ok("runs", "show", "s1", "--json").stdout)
    assert shown["status"] == "done" and shown["answer"] == "33"
