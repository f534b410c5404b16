"""``scale serve``: SCALE as an OpenAI-compatible chat endpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from scale_graph.errors import ConfigError
from scale_graph.cli.common import (DbOption, err, fail)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8200, help="Port to listen on."),
    db: Optional[Path] = DbOption,
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SCALE_SERVE_API_KEY", show_default=False,
                                          help="Require 'Authorization: Bearer KEY' from clients "
                                               "(default: $SCALE_SERVE_API_KEY; none = open)."),
) -> None:
    """Serve SCALE as an OpenAI-compatible chat endpoint (model `scale`) on /v1."""
    try:
        from scale_graph.persistence import DatabaseError, check_database, db_path
        from scale_graph.serve import MODEL, APIError, create_app, run_server
        from scale_graph.servers.endpoints import endpoints
    except ImportError:
        fail("`scale serve` needs starlette and uvicorn: pip install 'scale-graph[serve]'", 2)
    path = db_path(db)
    if api_key is None and "SCALE_SERVE_API_KEY" in os.environ:  # set but empty: click drops it; refuse, never serve open
        api_key = os.environ["SCALE_SERVE_API_KEY"]
    try:
        check_database(path)
        from scale_graph.setup import build

        endpoints(build(db=path).context)  # fail now, not on the first request, when no System 1/2 is configured
        app = create_app(path, api_key=api_key)
    except (ConfigError, DatabaseError, APIError) as exc:
        fail(str(getattr(exc, "message", exc)), 2)
    err.print(f"SCALE on http://{host}:{port}/v1 (model {MODEL!r}); runs are stored in {path}", highlight=False)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        err.print("warning: no API key set (--api-key / SCALE_SERVE_API_KEY) on a non-loopback interface")
    run_server(app, host, port)  # connection limits and shutdown order: serve/connections.py
