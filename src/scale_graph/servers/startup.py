"""Starting the servers of a profile: spawn each, record it at once, wait until all answer;
on any failure stop what was started and leave no record."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from scale_graph.servers import state as files
from scale_graph.servers.probe import serves
from scale_graph.servers.processes import identity, session_members, spawn, stop_server
from scale_graph.servers.vllm import ServerSpec

# How often a slow start is reported while `up` waits.
_NOTE_EVERY = 30.0


class ServerError(RuntimeError):
    """A server could not be started, found or stopped. ``str()`` is meant for the user: the
    first line says what happened; ``log_tail`` (also appended to the message) holds the last
    lines of the server's log when there is one."""

    def __init__(self, message: str, log_tail: str = "", log_path: Path | None = None):
        self.summary = message
        self.log_tail = log_tail
        self.log_path = log_path
        full = message
        if log_tail:
            full += f"\n--- last lines of {log_path} ---\n{log_tail}"
        super().__init__(full)

    @classmethod
    def with_log(cls, message: str, log_path: Path) -> ServerError:
        return cls(message, files.tail(log_path), log_path)


def say(console: Any, message: str) -> None:
    """Tell the user (a rich console or anything with ``print``); silent without one."""
    if console is not None and callable(getattr(console, "print", None)):
        console.print(message)


def start_all(
    root: Path, profile: str, specs: list[ServerSpec], timeout: float, poll_interval: float, console: Any
) -> None:
    """Start every server, recording each as soon as it runs, and wait until all answer; on any
    failure (or interruption) stop what was started and leave no record."""
    recorded: dict = {"profile": profile, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "servers": []}
    started: list[tuple[ServerSpec, dict, subprocess.Popen]] = []
    try:
        for spec in specs:
            record, proc = _start(spec, root)
            recorded["servers"].append(record)
            started.append((spec, record, proc))
            files.write_json(root / files.SERVERS_FILE, recorded)
            say(console, f"Started {spec.name} (pid {proc.pid}), log: {record['log']}")
        deadline = time.monotonic() + timeout
        for spec, record, proc in started:
            _wait_ready(spec, Path(record["log"]), proc, deadline, timeout, poll_interval, console)
            record["members"] = session_members(proc.pid)
        files.write_json(root / files.SERVERS_FILE, recorded)
    except BaseException:
        for _spec, record, _proc in started:
            stop_server(record, grace=10)
        files.remove_state(root)
        raise


def _start(spec: ServerSpec, root: Path) -> tuple[dict, subprocess.Popen]:
    log = files.log_path(root, spec.name)
    try:
        proc = spawn(spec.argv, spec.env, log, cwd=root)
    except OSError as exc:
        raise ServerError(f"cannot start {spec.name} ({spec.argv[0]}): {exc}") from exc
    record = {
        "name": spec.name,
        "argv": list(spec.argv),
        "env": dict(spec.env),
        "port": spec.port,
        "base_url": spec.base_url,
        "served_names": list(spec.served_names),
        "role": spec.role,
        "log": str(log),
        "process": identity(proc.pid),
        "members": [],
    }
    return record, proc


def _wait_ready(
    spec: ServerSpec,
    log: Path,
    proc: subprocess.Popen,
    deadline: float,
    timeout: float,
    poll_interval: float,
    console: Any,
) -> None:
    started = time.monotonic()
    next_note = started + _NOTE_EVERY
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerError.with_log(
                f"server {spec.name} exited with code {code} before answering {spec.models_url}", log
            )
        if serves(spec.base_url, spec.served_names, timeout=min(5.0, max(poll_interval, 1.0))):
            say(console, f"{spec.name} answers at {spec.base_url} ({time.monotonic() - started:.0f} s)")
            return
        if time.monotonic() >= deadline:
            raise ServerError.with_log(f"server {spec.name} did not answer {spec.models_url} within {timeout:g} s", log)
        if time.monotonic() >= next_note:
            say(console, f"waiting for {spec.name}… ({time.monotonic() - started:.0f} s)")
            next_note += _NOTE_EVERY
        time.sleep(poll_interval)



__all__ = ["ServerError", "say", "start_all"]
