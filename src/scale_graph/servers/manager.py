"""Start, inspect and stop the vLLM servers of a profile (``scale servers up|status|down``).

What the servers are is :mod:`~scale_graph.servers.launch`; where their record lives,
:mod:`~scale_graph.servers.state`; how their processes are known and stopped,
:mod:`~scale_graph.servers.processes`; how they are asked whether they answer,
:mod:`~scale_graph.servers.probe`. This module only puts these together. ``scale solve``
finds the endpoints of running servers through :func:`running_endpoints`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from scale_graph.servers import state as files
from scale_graph.servers.launch import (
    SYSTEMS,
    LaunchError,
    ProfileOptions,
    endpoints_for_servers,
    external_endpoints,
    run_defaults_for_profile,
    servers_for_profile,
)
from scale_graph.servers.probe import (
    Probe,
    endpoints_answer,
    port_in_use,
    probe_models,
    serves,
)
from scale_graph.servers.processes import (
    DEFAULT_STOP_GRACE,
    is_same_process,
    server_processes,
    stop_server,
)
from scale_graph.servers.startup import ServerError, say, start_all
from scale_graph.servers.vllm import ServerSpec

DEFAULT_TIMEOUT = 600.0
# How long `up` keeps asking already-running servers before calling them unresponsive.
ALREADY_UP_PATIENCE = 20.0


def _all_ours_alive(recorded: dict) -> bool:
    servers = recorded.get("servers") or []
    return all(is_same_process(s.get("process") or {}) for s in servers)


def _any_ours_alive(recorded: dict) -> bool:
    return any(is_same_process(p) for s in recorded.get("servers") or [] for p in server_processes(s))


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
    root = files.state_root(state_dir)
    with files.locked(root):
        existing = _already_up(root, profile, console)
        if existing is not None:
            return existing
        if profile == "external":
            result = {"profile": profile, **external_endpoints(options), "run_defaults": {}}
            files.write_json(root / files.SERVERS_FILE, {"profile": profile, "servers": []})
            files.write_json(root / files.ENDPOINTS_FILE, result)
            return result
        if specs is None:
            if profile == "local" and not (options.model or options.local_model_dir):
                from scale_graph.servers.local_model import prepare_local_model

                model_dir = prepare_local_model(cache_dir=cache_dir, console=console)
                options = replace(options, local_model_dir=str(model_dir))
            specs = servers_for_profile(profile, options)
        if not specs:
            raise LaunchError(f"the {profile!r} profile starts no server")
        for spec in specs:
            for port in (spec.port, *spec.other_ports):
                if port_in_use(spec.host, port):
                    raise ServerError(
                        f"port {port} on {spec.host} (for {spec.name}) is already in use; choose "
                        "another with --port or stop what listens there"
                    )
        result = {"profile": profile, **endpoints_for_servers(specs), "run_defaults": run_defaults_for_profile(profile)}
        start_all(root, profile, specs, timeout, poll_interval, console)
        files.write_json(root / files.ENDPOINTS_FILE, result)
        return result


def _already_up(root: Path, profile: str, console: Any) -> dict | None:
    """The endpoints of the recorded servers when they run and answer; otherwise clears what an
    earlier start left behind and returns None. Raises ServerError when other servers run."""
    recorded = files.read_json(root / files.SERVERS_FILE)
    if recorded is None:
        return None
    endpoints = files.read_json(root / files.ENDPOINTS_FILE)
    if recorded.get("servers") and endpoints is not None and _all_ours_alive(recorded):
        if recorded.get("profile") != profile:
            raise ServerError(
                f"servers of the {recorded.get('profile')!r} profile are already running "
                f"(state in {root}); stop them first with: scale servers down"
            )
        if not endpoints_answer(endpoints, patience=ALREADY_UP_PATIENCE):
            raise ServerError(
                f"the servers recorded in {root} are running but do not answer "
                "/v1/models; see their logs, or stop them with: scale servers down"
            )
        say(console, f"Servers of the {profile!r} profile are already up; nothing to do.")
        return endpoints
    if _any_ours_alive(recorded):
        # an interrupted `up`, or one server of a pair died: start afresh
        say(console, "Stopping the leftovers of an earlier start…")
        for record in recorded.get("servers") or []:
            stop_server(record)
    files.remove_state(root)
    return None


def status(state_dir: Path | str | None = None, probe: Probe = probe_models) -> dict:
    """Per-endpoint status: ``{"system1": {"url", "model", "pid", "alive", "answering",
    "profile", "log"}, "system2": {...}}``; ``{}`` when nothing is recorded."""
    root = files.state_root(state_dir)
    recorded = files.read_json(root / files.SERVERS_FILE)
    endpoints = files.read_json(root / files.ENDPOINTS_FILE)
    if recorded is None:
        return {}
    servers = recorded.get("servers") or []
    out: dict = {}
    for system, name in SYSTEMS:
        entry = (endpoints or {}).get(system) or {}
        serving = [s for s in servers if name in (s.get("served_names") or [])]
        # with replicas, the one clients use is the router at the recorded endpoint
        server = next((s for s in serving if s.get("base_url") == entry.get("base_url")), None) or next(
            iter(serving), None
        )
        url = entry.get("base_url") or (server or {}).get("base_url")
        model = entry.get("model") or (name if server else None)
        if server is not None:
            pid = (server.get("process") or {}).get("pid")
            alive: bool | None = is_same_process(server.get("process") or {})
        else:
            pid, alive = None, None  # external: not ours
        answering = bool(url) and alive is not False and serves(url, [model] if model else [], probe=probe)
        out[system] = {
            "profile": recorded.get("profile"),
            "url": url,
            "model": model,
            "pid": pid,
            "alive": alive,
            "answering": answering,
            "ready": endpoints is not None,
            "log": (server or {}).get("log"),
        }
    return out


def servers_status(state_dir: Path | str | None = None, probe: Probe = probe_models) -> list[dict]:
    """Every recorded process — each server, or each replica and its router: ``{"name", "role",
    "url", "models", "pid", "alive", "answering", "log"}``; ``[]`` when nothing is recorded."""
    recorded = files.read_json(files.state_root(state_dir) / files.SERVERS_FILE) or {}
    rows = []
    for server in recorded.get("servers") or []:
        alive = is_same_process(server.get("process") or {})
        url = server.get("base_url")
        models = list(server.get("served_names") or [])
        rows.append({
            "name": server.get("name"),
            "role": server.get("role") or "server",
            "url": url,
            "models": models,
            "pid": (server.get("process") or {}).get("pid"),
            "alive": alive,
            "answering": bool(url) and alive and serves(url, models, probe=probe),
            "log": server.get("log"),
        })  # fmt: skip
    return rows


def down(state_dir: Path | str | None = None, grace: float = DEFAULT_STOP_GRACE) -> list[str]:
    """Stop the recorded servers (SIGTERM, wait ``grace`` s, SIGKILL) and remove the state
    files. Returns the names of the servers that were running."""
    root = files.state_root(state_dir)
    with files.locked(root):
        recorded = files.read_json(root / files.SERVERS_FILE)
        stopped: list[str] = []
        if recorded is not None:
            for record in recorded.get("servers") or []:
                if stop_server(record, grace=grace):
                    stopped.append(str(record.get("name")))
        files.remove_state(root)
        return stopped


def running_endpoints(state_dir: Path | str | None = None) -> dict | None:
    """The endpoints of running servers (parsed ``endpoints.json``) if every recorded server
    process is alive; None otherwise. No network call."""
    root = files.state_root(state_dir)
    endpoints = files.read_json(root / files.ENDPOINTS_FILE)
    recorded = files.read_json(root / files.SERVERS_FILE)
    if endpoints is None or recorded is None:
        return None
    if not _all_ours_alive(recorded):
        return None
    return endpoints


__all__ = [
    "ALREADY_UP_PATIENCE",
    "DEFAULT_STOP_GRACE",
    "DEFAULT_TIMEOUT",
    "ServerError",
    "down",
    "probe_models",
    "running_endpoints",
    "servers_status",
    "status",
    "up",
]
