"""``scale db copy``: runs and results from SQLite to PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scale_graph.cli.common import (out, run_guarded)


def db_copy(
    src: Path = typer.Argument(..., help="SQLite run database to copy from (e.g. scale.db)."),
    dst: str = typer.Argument(..., help="PostgreSQL database to copy to: postgresql://user:password@host:port/db."),
    results: Optional[str] = typer.Option(None, "--results", help="Results database to copy too (default: "
                                          "$SCALE_RESULTS_DB or ./scale-results.db when it exists)."),
    results_to: Optional[str] = typer.Option(None, "--results-to", help="Where the results go (default: DST)."),
) -> None:
    """Copy runs (checkpoints, call journal) and evaluation results from SQLite to PostgreSQL."""
    from scale_graph.dbcopy import copy

    if results is None:
        from scale_graph.database import results_db

        candidate = results_db(None, src)
        results = candidate if "://" not in candidate and Path(candidate).is_file() else None
    copied = run_guarded(lambda: copy(src, dst, results, results_to))
    out.print(f"copied {copied.runs} run(s) ({copied.checkpoints} checkpoints, {copied.items} stored items)"
              + (f" and {copied.results} result(s)" if results is not None else ""), highlight=False)
    for what, names in (("runs", copied.skipped_runs), ("result runs", copied.skipped_results)):
        if names:
            out.print(f"skipped {len(names)} {what} already in the destination: {', '.join(names)}", highlight=False)
