"""Bad input: each case gives exactly one `error:` line on stderr, a non-zero exit and no
traceback, and leaves the runs already in the database intact (`runs list --json` equal before
and after, the file's bytes unchanged).

Most cases run the CLI in-process (typer's CliRunner: an escaping exception would show as
``result.exception``); cases whose failure only shows in a real process (argv decoding, click's
own usage errors, output of background threads) run ``python -m scale_graph.cli``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scale_graph.cli import app
from tests.support.cli import CLI
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.reliability import assert_one_error_line

pytestmark = pytest.mark.timeout(120)

runner = CliRunner()


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAIServer() as fake:
        for system in (1, 2):
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", fake.base_url)
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_MODEL", f"scale-system{system}")
        monkeypatch.setenv("SCALE_CANDIDATES", "2")
        yield fake


@pytest.fixture
def db(server, tmp_path) -> Path:
    """A database holding two finished runs (connections closed: no -wal left)."""
    path = tmp_path / "scale.db"
    for thread in ("first", "second"):
        done = cli("solve", f"What is {thread}?", "--thread-id", thread, "--db", str(path))
        assert done.exit_code == 0, done.output
    assert not Path(f"{path}-wal").exists()
    return path


def cli(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def one_error_line(result, code: int = 2, contains: str | None = None) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    if contains is not None:
        assert contains in errors[0], errors[0]
    return errors[0]


def listed(path: Path) -> list:
    result = cli("runs", "list", "--json", "--db", str(path))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def digest(path: Path) -> dict[str, str]:
    """Bytes of the database and of its write-ahead log, by name (an empty log and the -shm
    index hold no data: SQLite creates and removes them as connections come and go)."""
    files = [path, Path(f"{path}-wal")]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file() and p.stat().st_size}


class Intact:
    """Runs and bytes of a database before a bad command, checked after it."""

    def __init__(self, path: Path, *, runs: bool = True) -> None:
        self.path = path
        self.bytes = digest(path) if path.exists() else None
        self.runs = listed(path) if runs else None

    def check(self, *, runs: bool = True) -> None:
        if self.bytes is not None:
            assert digest(self.path) == self.bytes, "the database file changed"
        if runs and self.runs is not None:
            assert listed(self.path) == self.runs


# ---- the problem ---------------------------------------------------------------------------------
def test_empty_and_whitespace_problems(db, tmp_path):
    intact = Intact(db)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t \r\n")
    for args in (["solve", ""], ["solve", "   \n\t  "], ["solve", "--problem-file", str(blank)], ["solve"]):
        one_error_line(cli(*args, "--db", str(db)), 2)
    intact.check()


def test_one_megabyte_problem_is_refused_and_accepted_when_allowed(db, tmp_path, monkeypatch):
    big = tmp_path / "big.txt"  # just under the largest limit allowed (context.MAXIMA: 1,000,000)
    big.write_text("Compute the sum of the following numbers. " + "1234567 + " * 99_990 + "0")
    assert 990_000 < big.stat().st_size < 1_000_000
    intact = Intact(db)
    one_error_line(cli("solve", "--problem-file", str(big), "--db", str(db)), 2, "more than max_problem_chars")
    intact.check()
    # the documented escape hatch: raise the limit and the run goes through (prompts of ~1 MB)
    monkeypatch.setenv("SCALE_MAX_PROBLEM_CHARS", "1000000")
    done = cli("solve", "--problem-file", str(big), "--db", str(db), "--thread-id", "big", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["answer"] is not None
    rows = listed(db)
    assert [r["thread_id"] for r in rows if r["thread_id"] != "big"] == [r["thread_id"] for r in intact.runs]
    assert all(r["status"] == "done" for r in rows)


def test_binary_problem_file(db, tmp_path):
    intact = Intact(db)
    for name, data in (("latin1.txt", "Wie viel ist ä?".encode("latin-1")), ("random.bin", os.urandom(4096) + b"\xff"),
                       ("utf16.txt", "What is 1+1?".encode("utf-16"))):
        path = tmp_path / name
        path.write_bytes(data)
        one_error_line(cli("solve", "--problem-file", str(path), "--db", str(db)), 2, "is not UTF-8 text")
    one_error_line(cli("solve", "--problem-file", str(tmp_path), "--db", str(db)), 2, "cannot read problem file")
    intact.check()


def test_nul_characters_are_valid_text(db, tmp_path):
    path = tmp_path / "nul.txt"
    path.write_bytes("What is\x00 1+1?".encode())
    done = cli("solve", "--problem-file", str(path), "--db", str(db), "--thread-id", "nul", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["problem"] == "What is\x00 1+1?"
    assert {r["thread_id"] for r in listed(db)} == {"first", "second", "nul"}


def test_invalid_utf8_problem_argument(db, server):
    intact = Intact(db)
    env = {**os.environ, "SCALE_DB": str(db)}
    done = subprocess.run([*CLI, "solve", b"What is \xff\xfe?"], env=env, capture_output=True, timeout=120)
    result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                         done.stderr.decode(errors="replace"))
    try:
        assert_one_error_line(result, 2)
        assert "resume" not in result.stderr
    finally:
        intact.check()


# ---- parameters ------------------------------------------------------------------------------------
BAD_PARAMETERS = [
    ("THRESHOLD", "2", "threshold must be within [0, 1], got 2.0"),
    ("THRESHOLD", "-0.5", "threshold must be within [0, 1]"),
    ("THRESHOLD", "nan", "threshold must be within [0, 1], got nan"),
    ("THRESHOLD", "abc", "SCALE_THRESHOLD: cannot use 'abc' (expected float)"),
    ("CANDIDATES", "abc", "SCALE_CANDIDATES: cannot use 'abc' (expected int)"),
    ("CANDIDATES", "0", "candidates must be at least 1, got 0"),
    ("CANDIDATES", "2.5", "SCALE_CANDIDATES: cannot use '2.5'"),
    ("MAX_SUBPROBLEMS", "0", "max_subproblems must be at least 1"),
    ("SYSTEM2_MAX_TOKENS", "-1", "system2_max_tokens must be at least 1"),
    ("PARSE_RETRIES", "-1", "parse_retries must be non-negative"),
    ("MAX_RETRIES", "-1", "max_retries must be non-negative"),
    ("REQUEST_TIMEOUT", "0", "request_timeout must be a positive number of seconds"),
    ("PLANNER_SYSTEM", "3", "SCALE_PLANNER_SYSTEM: cannot use '3'"),
    ("CARRY", "everything", "SCALE_CARRY: cannot use 'everything'"),
    ("SYSTEM1_TOP_P", "0", "system1_top_p must be within (0, 1]"),
    ("PLANNER_TEMPERATURE", "5", "planner_temperature must be within [0, 2]"),
    ("THINKING_FLAG", "maybe", "SCALE_THINKING_FLAG: cannot use 'maybe' (expected bool)"),
    ("MAX_PROBLEM_CHARS", "0", "max_problem_chars must be at least 1"),
    ("SYSTEM1_BASE_URL", "ftp://example.org/v1", "must start with http:// or https://"),
    ("CONFIG", "/nonexistent/scale.toml", "does not exist"),
]


@pytest.mark.parametrize("name, value, message", BAD_PARAMETERS, ids=[f"{n}={v}" for n, v, _ in BAD_PARAMETERS])
def test_parameter_out_of_range(db, name, value, message):
    intact = Intact(db)
    one_error_line(cli("solve", "What is 1+1?", "--db", str(db), env={f"SCALE_{name}": value}), 2, message)
    intact.check()


def test_out_of_range_options(db):
    intact = Intact(db)
    one_error_line(cli("solve", "x", "--threshold", "2", "--db", str(db)), 2, "threshold must be within [0, 1]")
    one_error_line(cli("solve", "x", "-k", "-3", "--db", str(db)), 2, "candidates must be at least 1")
    one_error_line(cli("solve", "x", "--system2-max-tokens", "0", "--db", str(db)), 2, "system2_max_tokens")
    intact.check()


def test_option_of_the_wrong_type_gives_one_error_line(db):
    done = subprocess.run([*CLI, "solve", "x", "-k", "abc", "--db", str(db)], capture_output=True, text=True, timeout=120)
    assert_one_error_line(done, 2)


def test_saved_parameters_win_over_a_bad_environment_on_resume(db, server):
    """Resuming a finished run with garbage in the environment: the environment is not read, the
    stored run comes back unchanged, nothing is asked of the servers and nothing is written."""
    stored = json.loads(cli("runs", "show", "first", "--json", "--db", str(db)).stdout)
    requests, intact = server.stats()["requests"], Intact(db)
    done = cli("runs", "resume", "first", "--json", "--db", str(db), env={"SCALE_THRESHOLD": "7", "SCALE_CANDIDATES": "x"})
    assert done.exit_code == 0, done.output
    resumed = json.loads(done.stdout)
    assert stored["status"] == resumed["status"] == "done"
    assert resumed["answer"] == stored["answer"] is not None
    assert [{k: row[k] for k in resumed_row} for row, resumed_row in zip(stored["subproblems"], resumed["subproblems"])] \
        == resumed["subproblems"] and len(resumed["subproblems"]) == len(stored["subproblems"]) > 0
    assert resumed["usage"] == stored["usage"]
    assert server.stats()["requests"] == requests
    intact.check()


# ---- thread ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["show", "resume", "delete"])
def test_unknown_thread_id(db, command):
    intact = Intact(db)
    for thread in ("nope", "", "a" * 5000, "../../etc/passwd", "ünï cödé"):
        one_error_line(cli("runs", command, thread, "--db", str(db)), 2, "no run")
    intact.check()


def test_existing_thread_id_is_refused(db):
    intact = Intact(db)
    one_error_line(cli("solve", "Another problem", "--thread-id", "first", "--db", str(db)), 2, "run first already exists")
    intact.check(runs=True)


def test_thread_id_with_a_period_is_refused_up_front(db):
    intact = Intact(db, runs=True)
    try:
        one_error_line(cli("solve", "What is 1+1?", "--thread-id", "v1.2", "--db", str(db)), 2)
    finally:
        assert listed(db) == intact.runs, "a run that can never finish was left in the database"


# ---- the database file -------------------------------------------------------------------------------
COMMANDS = [["solve", "What is 1+1?"], ["runs", "list"], ["runs", "list", "--json"], ["runs", "show", "first"],
            ["runs", "resume", "first"], ["runs", "delete", "first"]]


def every_command_fails(path: Path, contains: str) -> None:
    for command in COMMANDS:
        one_error_line(cli(*command, "--db", str(path)), 2, contains)


def test_corrupted_database_random_bytes(server, tmp_path):
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(64 * 1024))
    before = digest(path)
    every_command_fails(path, "is unreadable or corrupted")
    assert digest(path) == before


def test_corrupted_database_text_and_truncated(db, tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 100)
    before = digest(text)
    every_command_fails(text, "is unreadable or corrupted")
    assert digest(text) == before

    truncated = tmp_path / "truncated" / "scale.db"
    truncated.parent.mkdir()
    data = db.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    before = digest(truncated)
    for command in COMMANDS:
        one_error_line(cli(*command, "--db", str(truncated)), 2, str(truncated))
    assert digest(truncated) == before


def test_database_path_is_a_directory_or_missing(server, tmp_path):
    one_error_line(cli("solve", "x", "--db", str(tmp_path)), 2, "is a directory")
    one_error_line(cli("solve", "x", "--db", str(tmp_path / "no" / "such" / "dir.db")), 2, "does not exist")
    for command in (["runs", "list"], ["runs", "show", "x"], ["runs", "resume", "x"], ["runs", "delete", "x"]):
        one_error_line(cli(*command, "--db", str(tmp_path / "missing.db")), 2, "does not exist")
    assert not (tmp_path / "missing.db").exists()


def set_schema_version(path: Path, value: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE scale_meta SET value = ? WHERE key = 'schema_version'", (value,))
    conn.close()


def test_database_from_a_newer_schema(db):
    runs = listed(db)
    set_schema_version(db, "999")
    before = digest(db)
    every_command_fails(db, "was written by a newer SCALE-Graph (schema 999")
    assert digest(db) == before
    set_schema_version(db, "1")
    assert listed(db) == runs


def test_database_with_a_garbled_schema_version(db):
    set_schema_version(db, "abc")
    before = digest(db)
    try:
        one_error_line(cli("runs", "list", "--db", str(db)), 2, "schema")
    finally:
        assert digest(db) == before


def test_foreign_sqlite_database_is_not_modified(server, tmp_path):
    path = tmp_path / "other-app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE store (name TEXT, price REAL)")
        conn.execute("INSERT INTO store VALUES ('apple', 1.5)")
    conn.close()
    before = digest(path)
    result = cli("runs", "list", "--db", str(path))
    assert result.exit_code == 2
    assert digest(path) == before, "another application's database was modified"


# ---- read-only databases (tests run as root, which ignores file modes: use the immutable flag) -----
def chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.fixture
def immutable():
    marked: list[Path] = []

    def mark(path: Path) -> None:
        if not chattr("+i", path):
            pytest.skip("cannot make a file read-only for root here (chattr +i unsupported)")
        marked.append(path)

    yield mark
    for path in reversed(marked):
        chattr("-i", path)


def test_read_only_database_file(db, immutable):
    runs = listed(db)
    before = digest(db)
    immutable(db)
    every_command_fails(db, "is read-only")
    assert digest(db)[db.name] == before[db.name]
    chattr("-i", db)
    assert listed(db) == runs


def test_read_only_directory_with_an_existing_database(db, immutable):
    runs = listed(db)
    before = digest(db)
    immutable(db.parent)
    for command in COMMANDS:
        one_error_line(cli(*command, "--db", str(db)), 2, str(db))
    assert digest(db) == before
    chattr("-i", db.parent)
    assert listed(db) == runs


def test_new_database_in_a_read_only_directory(server, tmp_path, immutable):
    folder = tmp_path / "locked"
    folder.mkdir()
    immutable(folder)
    done = subprocess.run([*CLI, "solve", "What is 1+1?", "--db", str(folder / "new.db")],
                          capture_output=True, text=True, timeout=120)
    assert_one_error_line(done, 2)
