"""The state folder of ``scale servers``: its files, their atomic writes, its lock and its logs.

Layout of the folder (:func:`default_state_dir`):

``servers.json``
    the profile and, per server, its argv, port, log file and the identity of every process it
    runs (pid + start time, see :mod:`scale_graph.servers.processes`).
``endpoints.json``
    written once every server answers ``GET /v1/models``::

        {"profile": "local",
         "system1": {"base_url": "http://127.0.0.1:8100/v1", "model": SYSTEM1_NAME},
         "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": SYSTEM2_NAME},
         "run_defaults": {...}}
``logs/<server>.log``
    stdout and stderr of each server.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

SERVERS_FILE = "servers.json"
ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = ".lock"
LOG_DIR = "logs"
LOG_TAIL_LINES = 20
# A server's log can grow to gigabytes; the tail shown to the user needs only its end.
_TAIL_BYTES = 64 * 1024


def default_state_dir() -> Path:
    """``$SCALE_STATE_DIR`` or ``$XDG_STATE_HOME/scale-graph`` or ``~/.local/state/scale-graph``."""
    env = os.environ.get("SCALE_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "scale-graph"


def state_root(state_dir: Path | str | None) -> Path:
    """The state folder to use: the given one, else :func:`default_state_dir`."""
    return Path(state_dir).expanduser() if state_dir is not None else default_state_dir()


def read_json(path: Path) -> dict | None:
    """A state file's object; None when it is missing, unreadable or not a JSON object (a
    half-written or foreign file counts as no state rather than stopping every command)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove_state(root: Path) -> None:
    """Forget the recorded servers (endpoints first: without it no run picks them up)."""
    for name in (ENDPOINTS_FILE, SERVERS_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Serialise ``up``/``down`` on one state folder across processes."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def log_path(root: Path, server: str) -> Path:
    """The log file of one server (its folder is created)."""
    folder = root / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{server}.log"


def tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log ("" when there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


__all__ = [
    "ENDPOINTS_FILE",
    "LOG_DIR",
    "SERVERS_FILE",
    "default_state_dir",
    "locked",
    "log_path",
    "read_json",
    "remove_state",
    "state_root",
    "tail",
    "write_json",
]
