"""Refusals of issue 20: each command refuses what it cannot do safely with one `error:` line,
exit 2, and changes nothing — a bad review edit, unbounded or out-of-range multipliers, ids a
request header cannot carry, non-regular files, deeply nested dataset lines, an unreachable
PostgreSQL. (Forks, deletes and calibrations have theirs beside their other tests.)"""

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
