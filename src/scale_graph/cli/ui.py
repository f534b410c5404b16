"""`scale ui`: check the databases and the interface, then serve the viewer with uvicorn.

Light at import (the main CLI registers it): Starlette, uvicorn and LangGraph load when it runs.
Refusals are one ``error:`` line and exit 2: a non-loopback ``--host`` without an API key, a run
or results database that cannot be opened, a port that is taken.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, Optional

import typer

from scale_graph.cli.common import DbOption, err, fail

DEFAULT_PORT = 8300


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ui_command(
    db: Optional[Path] = DbOption,
    results_db: Optional[str] = typer.Option(None, "--results-db", help="Results database of `scale eval` "
                                             "(default: $SCALE_RESULTS_DB, else ./scale-results.db when it exists)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on; any other than loopback needs --api-key."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SCALE_UI_API_KEY", show_default=False,
                                          help="Require this key (default: $SCALE_UI_API_KEY); open it in a browser "
                                               "once as http://HOST:PORT/?key=KEY."),
    calibration: Path = typer.Option(Path("scale-calibrate"), "--calibration", help="Folder of `scale calibrate` "
                                     "outputs to show beside the evaluations."),
) -> None:
    """A local, read-only web viewer of runs, forks and evaluations (no internet needed)."""
    if not is_loopback(host) and not api_key:
        fail(f"--host {host} is reachable from other machines: give --api-key (or SCALE_UI_API_KEY), "
             "or keep the default 127.0.0.1", 2)
    if not 0 < port < 65536:
        fail(f"--port must be within 1-65535, got {port}", 2)
    try:
        import uvicorn

        from scale_graph.ui.app import create_app
    except ImportError:
        fail("`scale ui` needs starlette and uvicorn: pip install 'scale-graph[ui]'", 2)
    from scale_graph.database import db_path
    from scale_graph.errors import ConfigError
    from scale_graph.persistence import DatabaseError, check_database

    path = db_path(db)
    try:
        check_database(path, must_exist=True)
        results = _results(results_db, path)
    except (DatabaseError, ConfigError) as exc:
        fail(str(exc), 2)
    _check_port(host, port)
    app = create_app(path, results=results, api_key=api_key, db_shown=str(path) if db else None,
                     calibration_dir=calibration)
    err.print(f"SCALE ui on http://{host}:{port}/ — runs in {path}" +
              (f", evaluations in {results.shown}" if results is not None else ""), highlight=False, soft_wrap=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        if results is not None:
            results.close()


def _results(explicit: str | None, run_db: Any) -> Any:
    """The results database to show (:func:`scale_graph.database.results_db`): the one named (it
    must open), else ./scale-results.db when it exists."""
    from scale_graph.database import DEFAULT_RESULTS_DB, results_db
    from scale_graph.evaluation.store import ResultsStore

    named = results_db(explicit, run_db)
    if named == DEFAULT_RESULTS_DB and not Path(DEFAULT_RESULTS_DB).is_file():
        return None
    return ResultsStore(named, must_exist=True)


def _check_port(host: str, port: int) -> None:
    """A taken port is one line now, not a log line from uvicorn later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
