"""Running ``scale`` from a test: in-process through typer's CliRunner (:func:`scale`, fast, an
escaping exception fails the test) or as a real process (:func:`scale_process`, for signals, exit
codes and what a user's shell sees)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from scale_graph.cli import app

CLI = [sys.executable, "-m", "scale_graph.cli"]
"""The command line of ``scale`` in a subprocess."""

TRACEBACK = "Traceback (most recent call last)"

_runner = CliRunner()


def scale(*args: Any, env: dict[str, str] | None = None, catch_exceptions: bool = False) -> Result:
    """``scale ARGS`` in this process (arguments are turned into strings, so paths may be passed)."""
    return _runner.invoke(app, [str(arg) for arg in args], env=env, catch_exceptions=catch_exceptions)


def scale_ok(*args: Any, env: dict[str, str] | None = None) -> Result:
    """:func:`scale` that must exit 0 (the output is the assertion's message)."""
    result = scale(*args, env=env)
    assert result.exit_code == 0, result.output
    return result


def scale_json(*args: Any, env: dict[str, str] | None = None) -> Any:
    """The JSON ``scale ARGS --json`` prints (it must exit 0)."""
    return json.loads(scale_ok(*args, "--json", env=env).stdout)


def scale_process(*args: Any, env: dict[str, str] | None = None, timeout: float = 120,
                  cwd: str | os.PathLike | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    """``scale ARGS`` in a subprocess (``env=None``: this process's environment); stdout/stderr as
    text, undecodable bytes replaced."""
    done = subprocess.run([*CLI, *map(str, args)], env=env, capture_output=True, timeout=timeout, cwd=cwd, input=input)
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))
