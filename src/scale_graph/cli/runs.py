"""``scale runs list|show|resume|delete``: stored runs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from scale_graph.cli.common import (DbOption, JsonOption, SUBPROBLEMS_FILE_MAX_CHARS, emit, fail, out, print_progress,
                                  print_summary, read_problem, require_database, run_guarded)


def runs_list(db: Optional[Path] = DbOption, as_json: bool = JsonOption) -> None:
    """List the runs in the database, newest first."""
    from scale_graph.listing import quick_list

    from scale_graph.database import db_path

    path = db_path(db)

    async def work() -> list[dict[str, Any]]:
        from scale_graph.graph import build_graph
        from scale_graph.persistence import open_async
        from scale_graph.runs import list_runs

        require_database(path)
        async with open_async(path) as (saver, store):
            return await list_runs(build_graph(saver, store), store)

    quick = None
    if isinstance(path, Path):  # a SQLite file: answer without importing LangGraph when it can
        if not path.exists():
            fail(f"database {path} does not exist (runs are stored where `scale solve` ran, or in --db/SCALE_DB)", 2)
        quick = quick_list(path)
    rows = quick if quick is not None else run_guarded(work)
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"runs in {path}")
    for column in ("thread id", "status", "sub-problems", "tokens", "answer", "problem"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["thread_id"], row["status"], str(row["subproblems"]), str(row["tokens"]),
                      str(row["answer"]), row["problem"][:60].replace("\n", " "))
    out.print(table)


def runs_show(thread_id: str, db: Optional[Path] = DbOption, as_json: bool = JsonOption) -> None:
    """Show a run: every sub-problem with difficulty, system, tokens, and every checkpointed step."""
    from scale_graph.graph import build_graph
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runs import show_run

    path = db_path(db)

    async def work() -> dict[str, Any]:
        require_database(path)
        async with open_async(path) as (saver, store):
            return await show_run(build_graph(saver, store), store, thread_id)

    shown = run_guarded(work)
    if as_json:
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
        return
    print_summary(shown)
    for line in _model_lines(shown):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(f"{len(shown['checkpoints'])} checkpoints: " + " → ".join(
        ",".join(c["next"]) or "end" for c in shown["checkpoints"]), highlight=False)


def _model_lines(shown: dict[str, Any]) -> list[str]:
    """The models a run started on, and each change allowed on resume."""
    from scale_graph.servers.identity import ModelIdentity

    def described(models: dict[str, Any]) -> str:
        return ", ".join(f"{system} {ModelIdentity(**found).describe()}" for system, found in models.items())

    lines = [f"models: {described(shown['models'])}"] if shown.get("models") else \
        ["models: not recorded (a run from before model identities were)"]
    lines += [f"resumed on other models (--allow-model-change): {described(change['models'])}"
              for change in shown.get("model_changes") or []]
    return lines


def runs_resume(
    thread_id: str,
    db: Optional[Path] = DbOption,
    as_json: bool = JsonOption,
    accept: bool = typer.Option(False, "--accept", help="Accept the decomposition of a run waiting for review."),
    subproblems_file: Optional[Path] = typer.Option(None, "--subproblems-file", help="Replace it: one sub-problem per line."),
    allow_model_change: bool = typer.Option(False, "--allow-model-change", help="Continue even though an endpoint "
                                            "now serves another model than the run ran on (recorded in the run)."),
) -> None:
    """Continue a stopped run after its last finished step, with its saved parameters (on the same models)."""
    from scale_graph.graph import build_graph
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runner import resume
    from scale_graph.runs import summary
    from scale_graph.servers import identity
    from scale_graph.setup import build

    path = db_path(db)

    async def work() -> dict[str, Any]:
        require_database(path)
        current = build(saved={}).context  # where the endpoints are now: their models are read once, here
        if current.has_endpoints():
            await asyncio.to_thread(identity.probe, current)
        decision: Any = "accept" if accept else None
        if subproblems_file is not None:
            decision = [line for line in read_problem(None, subproblems_file, SUBPROBLEMS_FILE_MAX_CHARS).splitlines()
                        if line.strip()]
        async with open_async(path) as (saver, store):
            values = await resume(build_graph(saver, store), store, thread_id, on_event=print_progress, review=decision,
                                  allow_model_change=allow_model_change)
            return summary(values, thread_id, "done" if values.get("finished") else "stopped")

    emit(run_guarded(work, thread_id=thread_id, db=db), as_json)


def runs_delete(thread_id: str, db: Optional[Path] = DbOption) -> None:
    """Delete a run's checkpoints and stored texts."""
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runs import delete_run

    path = db_path(db)

    async def work() -> int:
        require_database(path)
        async with open_async(path) as (saver, store):
            return await delete_run(saver, store, thread_id)

    removed = run_guarded(work)
    out.print(f"deleted run {thread_id} ({removed} stored calls)")
