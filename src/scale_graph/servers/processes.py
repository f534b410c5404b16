"""Server processes: starting one in its own session, knowing it again (pid + start time), and
signalling or stopping exactly the processes that were started, never a recycled pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

DEFAULT_STOP_GRACE = 30.0
# After SIGKILL the kernel still needs a moment to tear a large process (a GPU server) down.
_KILL_WAIT = 10.0

# Popen objects of the servers this Python process started (so they can be reaped).
_CHILDREN: dict[int, subprocess.Popen] = {}


class _Stat(NamedTuple):
    state: str  # one letter; "Z"/"X": exited, not yet (or no longer) a process of ours
    session: int
    start_time: int  # clock ticks since boot: with the pid, the identity of a process


def _proc_stat(pid: int | str) -> _Stat | None:
    """Fields of ``/proc/<pid>/stat``; None when there is no such process (or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        fields = raw[raw.rindex(")") + 2 :].split()
        return _Stat(fields[0], int(fields[3]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def process_start_time(pid: int) -> float | None:
    """An identity stamp of a running process (None when it does not exist)."""
    stat = _proc_stat(pid)
    if stat is not None:
        return float(stat.start_time)
    if Path("/proc/self/stat").exists():
        return None
    try:  # pragma: no cover - non-Linux fallback
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # pragma: no cover
        return None


def _reap(pid: int) -> None:
    """Collect an exited child of ours, so that it stops showing as a zombie."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_same_process(record: Mapping) -> bool:
    """True when ``record`` (``{"pid", "start_time"}``) is a live process, the very one recorded."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is not None:
        if stat.state in ("Z", "X"):
            return False
        start: float | None = float(stat.start_time)
    else:
        start = process_start_time(pid)  # non-Linux
        if start is None:
            return False
    return record.get("start_time") is None or start == float(record["start_time"])


def identity(pid: int) -> dict:
    """The record :func:`is_same_process` recognises this process by."""
    return {"pid": pid, "start_time": process_start_time(pid)}


def session_members(sid: int) -> list[dict]:
    """Processes of session ``sid`` other than its leader (vLLM's engine and worker processes)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    members = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == sid:
            continue
        stat = _proc_stat(entry)
        if stat is not None and stat.session == sid and stat.state not in ("Z", "X"):
            members.append({"pid": int(entry), "start_time": float(stat.start_time)})
    return members


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``argv`` in a new session (so that its whole process group can be signalled),
    output appended to ``log`` after a header line. Raises OSError when it cannot start."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log, "ab") as handle:
        handle.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} scale servers up: {' '.join(argv)}\n".encode())
        handle.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd),
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def server_processes(record: Mapping) -> list[dict]:
    """The recorded processes of one server: its leader, then the members found once it answered."""
    return [record.get("process") or {}] + list(record.get("members") or [])


def _signal_server(record: Mapping, sig: int) -> list[dict]:
    """Send ``sig`` to the verified processes of one server; return those still ours."""
    leader = record.get("process") or {}
    alive = [p for p in server_processes(record) if is_same_process(p)]
    group = None
    if is_same_process(leader):
        # The leader is ours, so its process group (start_new_session) is ours too.
        group = leader["pid"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for proc in alive:
        try:
            if group is not None and os.getpgid(proc["pid"]) == group:
                continue  # already signalled with the group
            os.kill(proc["pid"], sig)
        except (ProcessLookupError, PermissionError):
            continue
    return alive


def _wait_gone(processes: list[dict], seconds: float, step: float) -> bool:
    """Wait up to ``seconds`` for none of ``processes`` to be alive; True if they are gone."""
    deadline = time.monotonic() + seconds
    while any(is_same_process(p) for p in processes):
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def stop_server(record: Mapping, grace: float = DEFAULT_STOP_GRACE) -> bool:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. True if anything was running."""
    alive = _signal_server(record, signal.SIGTERM)
    if not alive:
        return False
    if not _wait_gone(alive, grace, 0.2):
        _signal_server(record, signal.SIGKILL)
        _wait_gone(alive, _KILL_WAIT, 0.1)
    pid = (record.get("process") or {}).get("pid")
    if isinstance(pid, int):
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    return True


__all__ = [
    "DEFAULT_STOP_GRACE",
    "identity",
    "is_same_process",
    "process_start_time",
    "server_processes",
    "session_members",
    "spawn",
    "stop_server",
]
