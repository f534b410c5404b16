"""Start, inspect and stop the vLLM servers of a profile (``scale servers up|status|down``).

State lives in one folder (:func:`default_state_dir`):

``servers.json``
    the profile and, per server, its argv, port, log file and the identity of every process it
    runs: pid + process start time (from ``/proc``), so that ``down`` signals exactly the
    processes that ``up`` started and never a recycled pid.
``endpoints.json``
    written once every server answers ``GET /v1/models``::

        {"profile": "local",
         "system1": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system1"},
         "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"},
         "run_defaults": {...}}

    ``scale solve`` reads it through :func:`running_endpoints`.
``logs/<server>.log``
    stdout and stderr of each server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from scale_graph.servers.launch import (
    LaunchError,
    ProfileOptions,
    ServerSpec,
    endpoints_for_servers,
    external_endpoints,
    run_defaults_for_profile,
    servers_for_profile,
)

SERVERS_FILE = "servers.json"
ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = ".lock"
LOG_DIR = "logs"
DEFAULT_TIMEOUT = 600.0
DEFAULT_STOP_GRACE = 30.0
LOG_TAIL_LINES = 20
# How long `up` keeps asking already-running servers before calling them unresponsive.
ALREADY_UP_PATIENCE = 20.0


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


# --------------------------------------------------------------------------- state folder


def default_state_dir() -> Path:
    """``$SCALE_STATE_DIR`` or ``$XDG_STATE_HOME/scale-graph`` or ``~/.local/state/scale-graph``."""
    env = os.environ.get("SCALE_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "scale-graph"


def _state_dir(state_dir: Path | str | None) -> Path:
    return Path(state_dir).expanduser() if state_dir is not None else default_state_dir()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _remove_state(root: Path) -> None:
    for name in (ENDPOINTS_FILE, SERVERS_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
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


# --------------------------------------------------------------------------- processes

# Popen objects of the servers this Python process started (so they can be reaped).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    try:
        fields = raw[raw.rindex(")") + 2 :].split()
        return fields[0], int(fields[19])
    except (ValueError, IndexError):
        return None


def process_start_time(pid: int) -> float | None:
    """An identity stamp of a running process (None when it does not exist)."""
    stat = _proc_stat(pid)
    if stat is not None:
        return float(stat[1])
    if Path("/proc/self/stat").exists():
        return None
    try:  # pragma: no cover - non-Linux fallback
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # pragma: no cover
        return None


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_same_process(record: dict) -> bool:
    """True when ``record`` (``{"pid", "start_time"}``) is a live process, the very one recorded."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False
        return record.get("start_time") is None or float(start) == float(record["start_time"])
    start_time = process_start_time(pid)  # non-Linux
    if start_time is None:
        return False
    return record.get("start_time") is None or start_time == record["start_time"]


def _session_members(sid: int) -> list[dict]:
    """Processes of session ``sid`` other than its leader (vLLM's engine and worker processes)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit() or int(entry) == sid:
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
        except (OSError, ValueError):
            continue
        try:
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                members.append({"pid": int(entry), "start_time": float(fields[19])})
        except (ValueError, IndexError):
            continue
    return members


def _server_records(record: dict) -> list[dict]:
    return [record.get("process") or {}] + list(record.get("members") or [])


def _signal_server(record: dict, sig: int) -> list[dict]:
    """Send ``sig`` to the verified processes of one server; return those still ours."""
    leader = record.get("process") or {}
    alive = [p for p in _server_records(record) if is_same_process(p)]
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


def _stop_server(record: dict, grace: float = DEFAULT_STOP_GRACE) -> bool:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. True if anything was running."""
    alive = _signal_server(record, signal.SIGTERM)
    if not alive:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(is_same_process(p) for p in alive):
            break
        time.sleep(0.2)
    else:
        _signal_server(record, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(is_same_process(p) for p in alive):
            time.sleep(0.1)
    pid = (record.get("process") or {}).get("pid")
    if isinstance(pid, int):
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    return True


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- network


def _is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def probe_models(base_url: str, timeout: float = 3.0) -> list[str] | None:
    """Model ids listed by ``GET {base_url}/models``, or None if it does not answer."""
    url = base_url.rstrip("/") + "/models"
    try:
        with httpx.Client(timeout=timeout, trust_env=not _is_loopback(url)) as client:
            response = client.get(url)
        if response.status_code != 200:
            return None
        data = response.json().get("data") or []
        return [str(item.get("id")) for item in data if isinstance(item, dict)]
    except (httpx.HTTPError, ValueError, AttributeError, OSError):
        return None


def _port_in_use(host: str, port: int) -> bool:
    bind_host = "127.0.0.1" if host in ("", "localhost") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- public API


def _say(console: Any, message: str) -> None:
    if console is not None and callable(getattr(console, "print", None)):
        console.print(message)


def _all_ours_alive(state: dict) -> bool:
    servers = state.get("servers") or []
    return all(is_same_process(s.get("process") or {}) for s in servers)


def _any_ours_alive(state: dict) -> bool:
    return any(is_same_process(p) for s in state.get("servers") or [] for p in _server_records(s))


def _answering(endpoints: dict, patience: float = 0.0) -> bool:
    """Both endpoints list their model; retried for ``patience`` seconds (a busy CPU server
    can be slow to answer)."""
    deadline = time.monotonic() + patience
    while True:
        ok = True
        for system in ("system1", "system2"):
            entry = endpoints.get(system) or {}
            models = probe_models(entry.get("base_url", ""), timeout=5.0)
            if models is None or entry.get("model") not in models:
                ok = False
                break
        if ok or time.monotonic() >= deadline:
            return ok
        time.sleep(1.0)


def up(
    profile: str = "local",
    options: ProfileOptions | None = None,
    state_dir: Path | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    console: Any = None,
    cache_dir: Path | None = None,
    poll_interval: float = 1.0,
    specs: list[ServerSpec] | None = None,
) -> dict:
    """Start the servers of ``profile`` in the background and wait until they answer.

    Returns the endpoints dict (also written to ``<state_dir>/endpoints.json``). If the servers
    recorded in the state folder are already running and answering, nothing is started and
    their endpoints are returned. ``specs`` overrides the profile's server list (tests).
    Raises :class:`ServerError` (start failed, timeout: message carries the log tail; the
    process is stopped) or :class:`LaunchError` (bad options).
    """
    options = options or ProfileOptions()
    root = _state_dir(state_dir)
    with _locked(root):
        existing = _read_json(root / SERVERS_FILE)
        endpoints = _read_json(root / ENDPOINTS_FILE)
        if existing is not None:
            has_servers = bool(existing.get("servers"))
            if has_servers and endpoints is not None and _all_ours_alive(existing):
                if existing.get("profile") != profile:
                    raise ServerError(
                        f"servers of the {existing.get('profile')!r} profile are already running "
                        f"(state in {root}); stop them first with: scale servers down"
                    )
                if not _answering(endpoints, patience=ALREADY_UP_PATIENCE):
                    raise ServerError(
                        f"the servers recorded in {root} are running but do not answer "
                        "/v1/models; see their logs, or stop them with: scale servers down"
                    )
                _say(console, f"Servers of the {profile!r} profile are already up; nothing to do.")
                return endpoints
            if _any_ours_alive(existing):
                # an interrupted `up`, or one server of a pair died: start afresh
                _say(console, "Stopping the leftovers of an earlier start…")
                for record in existing.get("servers") or []:
                    _stop_server(record)
            _remove_state(root)

        if profile == "external":
            result = external_endpoints(options)
            result = {"profile": profile, **result, "run_defaults": {}}
            _write_json(root / SERVERS_FILE, {"profile": profile, "servers": []})
            _write_json(root / ENDPOINTS_FILE, result)
            return result

        if specs is None:
            if profile == "local" and not (options.model or options.local_model_dir):
                from scale_graph.servers.local_model import chat_template_path, prepare_local_model

                model_dir = prepare_local_model(cache_dir=cache_dir, console=console)
                options.local_model_dir = str(model_dir)
                options.local_chat_template = str(chat_template_path(model_dir))
            specs = servers_for_profile(profile, options)
        if not specs:
            raise LaunchError(f"the {profile!r} profile starts no server")
        for spec in specs:
            if _port_in_use(spec.host, spec.port):
                raise ServerError(
                    f"port {spec.port} on {spec.host} is already in use; choose another with "
                    "--port or stop what listens there"
                )

        result = {"profile": profile, **endpoints_for_servers(specs)}
        result["run_defaults"] = run_defaults_for_profile(profile)
        state: dict = {
            "profile": profile,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "servers": [],
        }
        (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
        started: list[tuple[ServerSpec, dict, subprocess.Popen]] = []
        try:
            for spec in specs:
                record, proc = _start(spec, root)
                state["servers"].append(record)
                started.append((spec, record, proc))
                _write_json(root / SERVERS_FILE, state)
                _say(console, f"Started {spec.name} (pid {proc.pid}), log: {record['log']}")
            deadline = time.monotonic() + timeout
            for spec, record, proc in started:
                _wait_ready(spec, record, proc, deadline, timeout, poll_interval, console)
                record["members"] = _session_members(proc.pid)
            _write_json(root / SERVERS_FILE, state)
        except BaseException:
            for _spec, record, _proc in started:
                _stop_server(record, grace=10)
            _remove_state(root)
            raise
        _write_json(root / ENDPOINTS_FILE, result)
        return result


def _start(spec: ServerSpec, root: Path) -> tuple[dict, subprocess.Popen]:
    log_path = root / LOG_DIR / f"{spec.name}.log"
    env = dict(os.environ)
    env.update(spec.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "ab") as log:
        log.write(
            f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} scale servers up: "
            f"{' '.join(spec.argv)}\n".encode()
        )
        log.flush()
        try:
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(root),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ServerError(f"cannot start {spec.name} ({spec.argv[0]}): {exc}") from exc
    _CHILDREN[proc.pid] = proc
    record = {
        "name": spec.name,
        "argv": list(spec.argv),
        "env": dict(spec.env),
        "port": spec.port,
        "base_url": spec.base_url,
        "served_names": list(spec.served_names),
        "log": str(log_path),
        "process": {"pid": proc.pid, "start_time": process_start_time(proc.pid)},
        "members": [],
    }
    return record, proc


def _wait_ready(
    spec: ServerSpec,
    record: dict,
    proc: subprocess.Popen,
    deadline: float,
    timeout: float,
    poll_interval: float,
    console: Any,
) -> None:
    log_path = Path(record["log"])
    started = time.monotonic()
    next_note = started + 30
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerError(
                f"server {spec.name} exited with code {code} before answering {spec.models_url}",
                _tail(log_path),
                log_path,
            )
        models = probe_models(spec.base_url, timeout=min(5.0, max(poll_interval, 1.0)))
        if models is not None and all(name in models for name in spec.served_names):
            _say(console, f"{spec.name} answers at {spec.base_url} ({time.monotonic() - started:.0f} s)")
            return
        if time.monotonic() >= deadline:
            raise ServerError(
                f"server {spec.name} did not answer {spec.models_url} within {timeout:g} s",
                _tail(log_path),
                log_path,
            )
        if time.monotonic() >= next_note:
            _say(console, f"waiting for {spec.name}… ({time.monotonic() - started:.0f} s)")
            next_note += 30
        time.sleep(poll_interval)


def status(state_dir: Path | str | None = None, probe: Callable[[str], list[str] | None] = probe_models) -> dict:
    """Per-endpoint status: ``{"system1": {"url", "model", "pid", "alive", "answering",
    "profile", "log"}, "system2": {...}}``; ``{}`` when nothing is recorded."""
    root = _state_dir(state_dir)
    state = _read_json(root / SERVERS_FILE)
    endpoints = _read_json(root / ENDPOINTS_FILE)
    if state is None:
        return {}
    servers = state.get("servers") or []
    out: dict = {}
    for system, name in (("system1", "scale-system1"), ("system2", "scale-system2")):
        entry = (endpoints or {}).get(system) or {}
        server = next((s for s in servers if name in (s.get("served_names") or [])), None)
        url = entry.get("base_url") or (server or {}).get("base_url")
        model = entry.get("model") or (name if server else None)
        if server is not None:
            pid = (server.get("process") or {}).get("pid")
            alive: bool | None = is_same_process(server.get("process") or {})
        else:
            pid, alive = None, None  # external: not ours
        answering = False
        if url and alive is not False:
            models = probe(url)
            answering = models is not None and (model in models if model else True)
        out[system] = {
            "profile": state.get("profile"),
            "url": url,
            "model": model,
            "pid": pid,
            "alive": alive,
            "answering": answering,
            "ready": endpoints is not None,
            "log": (server or {}).get("log"),
        }
    return out


def down(state_dir: Path | str | None = None, grace: float = DEFAULT_STOP_GRACE) -> list[str]:
    """Stop the recorded servers (SIGTERM, wait ``grace`` s, SIGKILL) and remove the state
    files. Returns the names of the servers that were running."""
    root = _state_dir(state_dir)
    with _locked(root):
        state = _read_json(root / SERVERS_FILE)
        stopped: list[str] = []
        if state is not None:
            for record in state.get("servers") or []:
                if _stop_server(record, grace=grace):
                    stopped.append(str(record.get("name")))
        _remove_state(root)
        return stopped


def running_endpoints(state_dir: Path | str | None = None) -> dict | None:
    """The endpoints of running servers (parsed ``endpoints.json``) if every recorded server
    process is alive; None otherwise. No network call."""
    root = _state_dir(state_dir)
    endpoints = _read_json(root / ENDPOINTS_FILE)
    state = _read_json(root / SERVERS_FILE)
    if endpoints is None or state is None:
        return None
    if not _all_ours_alive(state):
        return None
    return endpoints


__all__ = [
    "DEFAULT_TIMEOUT",
    "ServerError",
    "default_state_dir",
    "down",
    "is_same_process",
    "probe_models",
    "process_start_time",
    "running_endpoints",
    "status",
    "up",
]
