"""Refusals of issue 20: each command refuses what it cannot do safely with one `error:` line,
exit 2, and changes nothing — a bad review edit, unbounded or out-of-range multipliers, a
baseline's too-long problem, ids that are not ASCII (encoded, not refused), non-regular files,
deeply nested dataset lines, an unreachable PostgreSQL, a database deleted mid-run.
(Forks, deletes, lost leases and calibrations have theirs beside their other tests.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scale_graph.cli import app

pytestmark = pytest.mark.timeout(120)

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result, code: int = 2, starts: str | None = None) -> str:
    """The single `error:` line of ``result`` (nothing else on stderr), after checking the exit code."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    if starts is not None:
        assert lines[0].startswith(f"error: {starts}"), lines[0]
    return lines[0]


def test_a_bad_review_edit_is_refused_before_it_is_stored_and_the_run_stays_resumable(endpoint_env, tmp_path):
    paused = cli("solve", "What is 1+1?", "-k", "2", "--review", "--thread-id", "a", "--json")
    assert paused.exit_code == 0, paused.output
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "long.txt").write_text("".join(f"step {i}\n" for i in range(100)), encoding="utf-8")
    for bad, count in (("empty.txt", 0), ("long.txt", 100)):
        refused = cli("runs", "resume", "a", "--subproblems-file", str(tmp_path / bad))
        line = one_error_line(refused, 2, "review: resume with 'accept' or 1 to 12 sub-problem strings")
        assert line.endswith(f"got {count} sub-problems"), line
    done = cli("runs", "resume", "a", "--accept", "--json")
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.stdout)["subproblems"]) == 3


@pytest.mark.parametrize("command", [["eval", "--dataset", "aime25"], ["traces", "generate", "--dataset", "aime25",
                                                                       "--out", "tr"]])
@pytest.mark.parametrize("samples", ["1000000000", "1025", "0"])
def test_samples_are_bounded_like_every_multiplier(endpoint_env, data_dir, fake_server, command, samples):
    result = cli(*command, "--data-dir", str(data_dir), "--samples", samples)
    wanted = "at least 1, got 0" if samples == "0" else f"at most 1,024, got {int(samples):,}"
    one_error_line(result, 2, f"--samples must be {wanted}")
    assert fake_server.stats()["requests"] == 0
    assert not Path("scale-results.db").exists() and not Path("scale.db").exists()  # nothing was created


@pytest.mark.parametrize("seed", [str(10**30), str(2**63), "-1"])
def test_a_seed_outside_64_bits_is_refused_up_front(endpoint_env, fake_server, seed):
    result = cli("solve", "What is 1+1?", "--seed", seed, "--thread-id", "s")
    line = one_error_line(result, 2, "seed must be within [0, 9223372036854775808)")
    assert "resume" not in line and fake_server.stats()["requests"] == 0
    assert not Path("scale.db").exists() or json.loads(cli("runs", "list", "--json").stdout) == []


def test_a_seed_outside_64_bits_over_serve_is_a_400_without_a_thread(endpoint_env, fake_server, tmp_path):
    import httpx

    from scale_graph.serve import THREAD_HEADER
    from tests.system.test_serve import Served

    with Served(tmp_path / "serve.db") as served:
        for seed in (10**30, -1):
            response = httpx.post(f"{served.url}/v1/chat/completions", json={
                "model": "scale", "messages": [{"role": "user", "content": "What is 1+1?"}], "scale": {"seed": seed}})
            assert response.status_code == 400, response.text
            assert "seed must be within" in response.json()["error"]["message"]
            assert THREAD_HEADER not in response.headers
    assert fake_server.stats()["requests"] == 0


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["scale", "cot", "majority", "inftythink"])
def test_every_method_refuses_a_problem_longer_than_max_problem_chars(endpoint_env, fake_server, tmp_path, method):
    dataset = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "problem": "x" * 20_001, "answer": "1"},
                                                  {"id": "short", "problem": "What is 1+1?", "answer": "2"}])
    result = cli("eval", "--dataset", str(dataset), "--method", method, "--samples", "1", "--votes", "2")
    assert result.exit_code == 1, result.output  # the long problem's sample failed; the short one ran
    assert "max_problem_chars" in result.stderr.splitlines()[-1]
    sent = [json.dumps(entry["body"]) for entry in fake_server.stats()["log"]]
    assert sent and not any("x" * 20_001 in body for body in sent)  # never sent to the server


def test_non_ascii_ids_reach_the_server_and_every_call_succeeds(endpoint_env, fake_server, tmp_path):
    dataset = write_jsonl(tmp_path / "données.jsonl", [{"id": "问题-1", "problem": "What is 1+1?", "answer": "33"}])
    result = cli("eval", "--dataset", str(dataset), "--method", "scale,cot", "--samples", "1", "--name", "évaluation")
    assert result.exit_code == 0, result.output
    solved = cli("solve", "What is 1+1?", "--thread-id", "exécution-ü", "--json")
    assert solved.exit_code == 0, solved.output
    assert json.loads(solved.stdout)["answer"] is not None
    assert fake_server.stats()["requests"] > 0


def test_a_deeply_nested_dataset_line_names_the_file_and_line(endpoint_env, fake_server, tmp_path):
    dataset = tmp_path / "deep.jsonl"
    dataset.write_text('{"id": "a", "problem": "What is 1+1?", "answer": "2"}\n' + "[" * 100_000 + "]" * 100_000
                       + "\n", encoding="utf-8")
    one_error_line(cli("eval", "--dataset", str(dataset), "--samples", "1"), 2,
                   f"{dataset}, line 2: JSON nested too deeply")
    assert fake_server.stats()["requests"] == 0


@pytest.mark.parametrize("args, message", [
    (["solve", "--problem-file", "fifo"], "cannot read problem file fifo: it is a FIFO, not a regular file"),
    (["solve", "What is 1+1?", "--db", "fifo"], "database fifo is a FIFO, not a regular file"),
    (["runs", "list", "--db", "fifo"], "database fifo is a FIFO, not a regular file"),
    (["runs", "resume", "r", "--db", "fifo"], "database fifo is a FIFO, not a regular file"),
    (["eval", "--dataset", "fifo", "--samples", "1"], "dataset fifo is a FIFO, not a regular file"),
])
def test_a_fifo_is_refused_instead_of_waiting_forever(endpoint_env, fake_server, tmp_path, args, message):
    """In a real process: a hang shows as a timeout, not as a stuck test run."""
    import os
    import subprocess

    from tests.support.cli import CLI
    from tests.support.reliability import assert_one_error_line

    os.mkfifo(tmp_path / "fifo")
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "SCALE_DATA_DIR": str(tmp_path)})
    assert_one_error_line(done, 2, message)
    assert fake_server.stats()["requests"] == 0


@pytest.mark.parametrize("args", [["runs", "list"], ["solve", "What is 1+1?"], ["runs", "resume", "r"]])
def test_an_unreachable_postgresql_is_one_line_naming_host_port_and_cause(endpoint_env, tmp_path, args):
    """No server needed: a closed port on 127.0.0.1. Nothing but the one line on stderr (no pool warnings)."""
    import os
    import socket
    import subprocess

    from tests.support.cli import CLI

    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://scale:PLANTED-PW@127.0.0.1:{port}/scale"
    done = subprocess.run([*CLI, *args, "--db", url], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    wanted = (f"error: database postgresql://scale:***@127.0.0.1:{port}/scale: "
              f"cannot connect to 127.0.0.1:{port}: connection refused")
    assert done.stderr.splitlines() == [wanted], done.stderr
    assert "PLANTED-PW" not in done.stdout + done.stderr


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_mid_run_stops_it_with_one_line(endpoint_env, scripted_endpoints, tmp_path, how):
    """The open file stays writable after `rm`: without a check the run would end "done", saved nowhere."""
    import shutil

    from tests.support.chat import default_respond

    db = tmp_path / "runs.db"

    def respond(call):
        if call.key.startswith("assess/1") and db.exists():
            if how == "deleted":
                db.unlink()
            else:
                shutil.copy(db, tmp_path / "copy.db")
                (tmp_path / "copy.db").replace(db)
        return default_respond(call)

    scripted_endpoints(respond)
    result = cli("solve", "What is a+b?", "--db", str(db), "--thread-id", "gone")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # progress lines, then the error
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], lines
    assert lines[-1].startswith(f"error: database {db} was deleted or replaced while this process was using it")
    assert "resume" not in lines[-1] and "answer" not in result.stdout.lower()
