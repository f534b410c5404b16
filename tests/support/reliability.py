"""Shared helpers of the reliability suite (tests/system/test_reliability_*.py).

* :func:`scale` runs the real ``scale`` command in a subprocess (``python -m scale_graph.cli``),
  so tracebacks, exit codes and SIGKILL behave as for a user.
* :class:`KillingServer` is the fake OpenAI server that can SIGKILL a client process at an exact
  moment of its conversation (when request k *arrives*, or a few ms after request k was
  *answered*), and counts arrivals as well as answers.
* :func:`comparable` strips a ``runs show --json`` object down to what must not depend on
  whether a run was interrupted.
* :class:`ServerProcess` runs the fake server as a subprocess, driven by its control endpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from scale_graph.context import ENDPOINT_FIELDS
from tests.support.cli import TRACEBACK
from tests.support.fake_openai import FakeOpenAIServer, detect_stage


def endpoint_env(base_url: str, db: str | os.PathLike | None = None, **extra: Any) -> dict[str, str]:
    """The current environment plus both systems at ``base_url`` (and SCALE_DB / other SCALE_* given)."""
    env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": base_url, "SCALE_SYSTEM1_MODEL": "scale-system1",
           "SCALE_SYSTEM2_BASE_URL": base_url, "SCALE_SYSTEM2_MODEL": "scale-system2"}
    if db is not None:
        env["SCALE_DB"] = str(db)
    env.update({f"SCALE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def last_json(stdout: str) -> Any:
    """The JSON object a ``--json`` command printed (its last line)."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no JSON on stdout"
    return json.loads(lines[-1])


def assert_one_error_line(result: subprocess.CompletedProcess, code: int | None = None, contains: str | None = None) -> str:
    """Exactly one ``error:`` line on stderr, no traceback, a non-zero (or the given) exit code."""
    assert TRACEBACK not in result.stderr and TRACEBACK not in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line, stderr was:\n{result.stderr}"
    assert errors[0] == lines[-1], f"the error line is not the last line:\n{result.stderr}"
    if code is None:
        assert result.returncode != 0
    else:
        assert result.returncode == code, (result.returncode, result.stderr)
    if contains is not None:
        assert contains in errors[0], errors[0]
    return errors[0]


# ---- difficulties that depend on the request only (not on how many were asked before) ------
_ASSESSED = re.compile(r"difficulty of sub-problem (\d+)")


def difficulty_by_index(values: list[float]):
    """A ``difficulties`` callable: the difficulty of sub-problem i is ``values[i - 1]``.

    The server's own cycle counts requests, so a request repeated after a kill would get the
    next value; this keeps a resumed run comparable with an uninterrupted one.
    """

    def pick(body: dict[str, Any]) -> float:
        text = body["messages"][-1]["content"]
        match = _ASSESSED.search(text if isinstance(text, str) else "")
        number = int(match.group(1)) if match else 1
        return values[(number - 1) % len(values)]

    return pick


_NUMBERED = re.compile(r"(?:difficulty of sub-problem|Solve sub-problem|reasoning about sub-problem"
                       r"|solution of sub-problem) (\d+)")  # the last: forcing.FORCE_SUBPROBLEM


def call_label(body: dict[str, Any]) -> str:
    """Which SCALE call a request body is: decompose, select, assess#i, solve#i, force#i."""
    stage = detect_stage(body)
    if stage == "decomposition":
        return "decompose"
    if stage == "selection":
        return "select"
    messages = body["messages"]
    # a forced answer continues the model's own reply (an assistant message last, forcing.py);
    # the System 1 fallback pastes the cut work into a prompt instead
    continued = messages[-1].get("role") == "assistant" and len(messages) > 1
    text = messages[-2 if continued else -1].get("content")
    match = _NUMBERED.search(text if isinstance(text, str) else "")
    number = match.group(1) if match else "?"
    if stage == "difficulty":
        return f"assess#{number}"
    if continued or "cut off before you finished" in (text or ""):
        return f"force#{number}"
    return f"solve#{number}"


class KillingServer(FakeOpenAIServer):
    """A fake server that counts request arrivals and can SIGKILL one client process.

    ``arm(pid, label, phase, delay)`` (``label`` as :func:`call_label` names requests):
    ``phase="arrival"`` kills ``delay`` s after that request arrives (it is then in flight: choose
    delay < latency); ``phase="answer"`` kills ``delay`` s after it was answered (journal write,
    checkpoint write, next node, finalize …). The kill is sent from the server's event loop, so
    it lands at the same point of the conversation however loaded the machine is.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.arrivals: list[str] = []
        self._arrival_lock = threading.Lock()
        self._target: tuple[int, str, str, float] | None = None
        self.answered: list[str] = []
        self.kill_sent = threading.Event()
        self.killed_body: dict[str, Any] | None = None

    def arm(self, pid: int, label: str, phase: str, delay: float = 0.0) -> None:
        assert phase in ("arrival", "answer")
        self.kill_sent.clear()
        self._target = (pid, label, phase, delay)

    def _fire(self, pid: int, delay: float, body: dict[str, Any]) -> None:
        self._target = None
        self.killed_body = body

        def kill() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.kill_sent.set()

        assert self._loop is not None
        self._loop.call_later(delay, kill)

    async def _chat_completions(self, request):  # type: ignore[override]
        try:
            body = json.loads(request.body)
            label = call_label(body)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            body, label = None, "?"
        with self._arrival_lock:
            self.arrivals.append(label)
        target = self._target
        hit = target is not None and body is not None and target[1] == label
        if hit and target[2] == "arrival":
            self._fire(target[0], target[3], body)
        reply = await super()._chat_completions(request)
        self.answered.append(label)
        if hit and target[2] == "answer":
            self._fire(target[0], target[3], body)  # the reply is written right after this returns
        return reply


def kill_on_database_event(pid: int, db: Path, thread_id: str, kind: str, count: int = 0,
                           after: Callable[[], bool] | None = None, poll: float = 0.0005) -> threading.Thread:
    """SIGKILL ``pid`` as soon as its database shows an event; returns the watching thread.

    ``kind``: ``"journal"`` (the run has ``count`` journalled calls), ``"checkpoints"`` (it has
    ``count`` checkpoints), or ``"wal"`` (the -wal file is written, once ``after()`` is true:
    the kill then lands inside or right after a write transaction).
    """
    queries = {"journal": ("SELECT count(*) FROM store WHERE prefix = ?", f"scale.{thread_id}.calls"),
               "checkpoints": ("SELECT count(*) FROM checkpoints WHERE thread_id = ?", thread_id)}

    def alive() -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    connection: list[sqlite3.Connection] = []

    def reached() -> bool:
        try:
            if not connection:  # one read-only connection: each query sees the latest commit
                connection.append(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05))
            sql, arg = queries[kind]
            return connection[0].execute(sql, (arg,)).fetchone()[0] >= count
        except sqlite3.Error:  # not created yet
            for conn in connection:
                conn.close()
            connection.clear()
            return False

    def watch() -> None:
        try:
            _watch()
        finally:
            for conn in connection:
                conn.close()

    def _watch() -> None:
        wal = Path(f"{db}-wal")
        size: Any = False
        while alive():
            if kind == "wal":
                if after is not None and not after():
                    time.sleep(poll)
                    continue
                try:
                    stat = wal.stat()
                    current = (stat.st_size, stat.st_mtime_ns)
                except FileNotFoundError:
                    current = None
                if size is False:
                    size = current
                elif current != size:
                    os.kill(pid, signal.SIGKILL)
                    return
            elif kind != "wal" and reached():
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(poll)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def comparable(shown: dict[str, Any]) -> dict[str, Any]:
    """What of a run must be the same whether or not it was killed and resumed.

    Wall-clock fields (latency, checkpoint times), the thread id and where the endpoints are
    (each test server has its own port) are left out.
    """
    rows = [{k: v for k, v in row.items() if k != "latency_s"} for row in shown["subproblems"]]
    return {
        "status": shown["status"], "problem": shown["problem"], "answer": shown["answer"],
        "planned_subproblems": shown["planned_subproblems"], "candidates": shown["candidates"],
        "selection": shown["selection"], "subproblems": rows, "usage": shown["usage"],
        "warnings": shown["warnings"],
        "params": {k: v for k, v in (shown.get("params") or {}).items() if k not in ENDPOINT_FIELDS},
    }


def request_bodies(log: list[dict[str, Any]]) -> list[str]:
    """The answered (HTTP 200) request bodies of a server log, canonical JSON."""
    return [json.dumps(entry["body"], sort_keys=True) for entry in log if entry["status"] == 200]


REPO_ROOT = Path(__file__).resolve().parents[2]  # `python -m tests.support.fake_openai` runs from here


class ServerProcess:
    """``python -m tests.support.fake_openai`` as a subprocess, driven over HTTP."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_openai", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r} {self.proc.stderr.read()}")
        self.base_url = line.split()[1]
        self.root = self.base_url.rsplit("/v1", 1)[0]

    def _call(self, path: str, data: dict | None = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.root + path, data=body, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def inject(self, fault: str, times: int = 1, stage: str | None = None) -> Any:
        return self._call("/_inject", {"fault": fault, "times": times, "stage": stage})

    def configure(self, **changes: Any) -> Any:
        return self._call("/_config", changes)

    def reset(self) -> Any:
        return self._call("/_reset", {})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]
