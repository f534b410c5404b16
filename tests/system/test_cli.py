"""The scale CLI end to end against a real HTTP server (the fake OpenAI server), and its errors."""

import json

import pytest

from tests.support.cli import scale
from tests.support.ports import free_port


def test_solve_json_then_list_show_delete(endpoint_env, fake_server):
    result = scale("solve", "What is 1+1?", "-k", "3", "--thread-id", "r1", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["thread_id"] == "r1" and shown["answer"] is not None
    assert len(shown["subproblems"]) == 3
    for row in shown["subproblems"]:
        assert row["system"] in (1, 2) and 0 <= row["difficulty"] <= 1 and row["completion_tokens"] > 0
        assert row["text"]
    total = shown["usage"]["total"]
    assert total["calls"] == fake_server.stats()["requests"] == 8
    assert total["completion_tokens"] == sum(s["completion_tokens"] for s in shown["usage"]["by_stage"].values())

    listed = json.loads(scale("runs", "list", "--json").stdout)
    assert [r["thread_id"] for r in listed] == ["r1"] and listed[0]["status"] == "done"

    table = scale("runs", "show", "r1")
    assert table.exit_code == 0 and "difficulty" in table.stdout and "answer:" in table.stdout
    detail = json.loads(scale("runs", "show", "r1", "--json").stdout)
    assert detail["params"]["candidates"] == 3
    assert [c["next"] for c in detail["checkpoints"]][:4] == [["__start__"], ["decompose"], ["select"], ["assess"]]
    hard = [r for r in detail["subproblems"] if r["system"] == 2]
    assert hard and all(len(r["reasoning"]) > 0 for r in hard)
    assert all("\\boxed" in r["solution"] for r in detail["subproblems"])

    assert scale("runs", "delete", "r1").exit_code == 0
    assert json.loads(scale("runs", "list", "--json").stdout) == []
    assert scale("runs", "show", "r1").exit_code == 2


def test_problem_file(endpoint_env, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("What is 2+2?")
    result = scale("solve", "--problem-file", str(path), "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problem"] == "What is 2+2?"




@pytest.mark.parametrize("args, message", [
    (["solve", ""], "the problem is empty"),
    (["solve", "   \n"], "the problem is empty"),
    (["solve", "--problem-file", "missing.txt"], "cannot read problem file"),
    (["solve", "x", "--threshold", "1.5"], "threshold must be within [0, 1]"),
    (["solve", "x", "-k", "0"], "candidates must be at least 1"),
    (["solve", "x" * 20001], "more than max_problem_chars"),
    (["runs", "show", "nope"], "no run 'nope'"),
    (["runs", "resume", "nope"], "no run 'nope'"),
    (["runs", "delete", "nope"], "no run 'nope'"),
])
def test_bad_input_one_line_and_nonzero_exit(endpoint_env, args, message):
    if args[0] == "runs":
        assert scale("solve", "seed run", "-k", "1").exit_code == 0  # a database exists
    result = scale(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_invalid_utf8_problem_file(endpoint_env, tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    result = scale("solve", "--problem-file", str(path))
    assert result.exit_code == 2 and "not UTF-8" in result.stderr


def test_no_endpoints_says_how_to_start_the_local_servers():
    result = scale("solve", "What is 1+1?")
    assert result.exit_code == 2
    assert "scale servers up" in result.stderr and "Traceback" not in result.output


def test_malformed_config_file(tmp_path):
    (tmp_path / "scale.toml").write_text("[system1\nbase_url = ")
    result = scale("solve", "x")
    assert result.exit_code == 2 and "config file scale.toml is malformed" in result.stderr


def test_config_file_supplies_endpoints(fake_server, tmp_path):
    (tmp_path / "scale.toml").write_text(
        f'[system1]\nbase_url = "{fake_server.base_url}"\nmodel = "scale-system1"\n'
        f'[system2]\nbase_url = "{fake_server.base_url}"\nmodel = "scale-system2"\n[run]\ncandidates = 2\n')
    result = scale("solve", "What is 1+1?", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"]
    assert fake_server.stats()["log"][0]["body"]["n"] == 2


def test_unreachable_endpoint_stops_resumable_then_resumes(monkeypatch, fake_server):
    port = free_port()
    dead = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv("SCALE_MAX_RETRIES", "1")
    for system in (1, 2):
        monkeypatch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", dead)
        monkeypatch.setenv(f"SCALE_SYSTEM{system}_MODEL", f"scale-system{system}")
    result = scale("solve", "What is 1+1?", "--thread-id", "down", "-k", "2")
    assert result.exit_code == 1
    assert "unreachable after 1 retries" in result.stderr and "scale runs resume down" in result.stderr
    assert "Traceback" not in result.output
    for system in (1, 2):  # the server is back (elsewhere): resume with the current endpoints
        monkeypatch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", fake_server.base_url)
    resumed = scale("runs", "resume", "down", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["answer"] is not None


def test_server_errors_are_retried_then_reported(endpoint_env, fake_server, monkeypatch):
    monkeypatch.setenv("SCALE_MAX_RETRIES", "2")
    fake_server.inject("503", times=2)
    assert scale("solve", "What is 1+1?", "-k", "2").exit_code == 0  # two 503s absorbed by retries
    fake_server.inject("500", times=3)
    result = scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "x")
    assert result.exit_code == 1 and "HTTP 500" in result.stderr and "scale runs resume x" in result.stderr


def test_api_key_is_sent_and_never_stored(fake_server, endpoint_env, monkeypatch, tmp_path):
    fake_server.configure(api_key="sk-PLANTED-SECRET-123")
    monkeypatch.setenv("SCALE_SYSTEM1_API_KEY", "sk-PLANTED-SECRET-123")
    monkeypatch.setenv("SCALE_SYSTEM2_API_KEY", "sk-PLANTED-SECRET-123")
    result = scale("solve", "What is 1+1?", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "PLANTED" not in result.output
    for path in tmp_path.glob("scale.db*"):
        assert b"PLANTED-SECRET" not in path.read_bytes()
    monkeypatch.setenv("SCALE_SYSTEM1_API_KEY", "wrong")
    bad = scale("solve", "x", "-k", "1")
    assert bad.exit_code == 1 and "PLANTED" not in bad.output and "wrong" not in bad.stderr


def test_problem_file_read_is_bounded_and_no_run_is_promised(endpoint_env, tmp_path):
    """Issue 12.9: --problem-file /dev/zero read until MemoryError, then said "the run is saved"."""
    import resource
    import subprocess
    import sys

    def limit_memory():  # a child that reads /dev/zero unbounded dies instead of filling the machine
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-m", "scale_graph.cli", "solve", "--problem-file", "/dev/zero",
                           "--db", str(tmp_path / "runs.db")], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_memory)
    assert done.returncode == 2, done.stderr
    assert "/dev/zero: it is a character device, not a regular file" in done.stderr and "resume" not in done.stderr
    assert "Traceback" not in done.stderr


def test_explicit_option_equal_to_default_beats_environment(endpoint_env, fake_server, monkeypatch):
    """Issue 10.1: `scale solve --threshold 0.2` with SCALE_THRESHOLD=0.9 ran at 0.9."""
    monkeypatch.setenv("SCALE_THRESHOLD", "0.9")
    result = scale("solve", "What is 1+1?", "-k", "2", "--threshold", "0.2", "--thread-id", "t02", "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(scale("runs", "show", "t02", "--json").stdout)
    assert detail["params"]["threshold"] == 0.2
    assert "threshold=0.2 (option)" not in result.stderr  # at its default: not listed as a change
    result = scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "t09", "--json")
    assert json.loads(scale("runs", "show", "t09", "--json").stdout)["params"]["threshold"] == 0.9
    assert "threshold=0.9 (environment)" in result.stderr


def test_resume_says_where_it_picks_up_and_the_stopped_run_is_not_done(endpoint_env, fake_server, monkeypatch):
    """Issue 15.5: `runs resume` says where it picks up; a stopped run is never shown as done."""
    monkeypatch.setenv("SCALE_MAX_RETRIES", "0")
    fake_server.inject("500", times=1, stage="solve")
    stopped = scale("solve", "What is 1+1?", "-k", "2", "--thread-id", "p1")
    assert stopped.exit_code == 1
    listed = json.loads(scale("runs", "list", "--json").stdout)
    assert listed[0]["status"].startswith("stopped")
    resumed = scale("runs", "resume", "p1", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming at sub-problem 1 of 3" in resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "done"
