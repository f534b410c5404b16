"""``scale solve``: one problem, start to finish (or paused for review)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from scale_graph.cli.common import (DbOption, JsonOption, emit, err, print_progress,
                                  read_problem, run_guarded)


def solve(
    problem: Optional[str] = typer.Argument(None, help="The problem text."),
    problem_file: Optional[Path] = typer.Option(None, "--problem-file", "-f", help="Read the problem from a file."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="τ: difficulty above it goes to System 2 (default 0.2)."),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-k", help="k candidate decompositions (default 8)."),
    system1_max_tokens: Optional[int] = typer.Option(None, help="System 1 budget per sub-problem."),
    system2_max_tokens: Optional[int] = typer.Option(None, help="System 2 budget per sub-problem."),
    seed: Optional[int] = typer.Option(None, help="Base seed."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Per-problem token budget: all completion tokens of "
                                         "the run stay within it (default off)."),
    db: Optional[Path] = DbOption,
    thread_id: Optional[str] = typer.Option(None, "--thread-id", help="Id for the new run (default: random)."),
    as_json: bool = JsonOption,
    start_servers: bool = typer.Option(False, "--start-servers", help="Start the local CPU vLLM servers first if no endpoint is configured."),
    review: bool = typer.Option(False, "--review", help="Pause after the decomposition is chosen, to accept or edit it."),
) -> None:
    """Solve a problem with SCALE and print the answer and its sub-problems."""
    from scale_graph.graph import build_graph
    from scale_graph.journal import new_run_id
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runner import awaiting_review, resume, start, validate_problem, validate_thread_id
    from scale_graph.runs import summary

    thread = thread_id or new_run_id()
    path = db_path(db)
    explicit = {k: v for k, v in {"threshold": threshold, "candidates": candidates, "seed": seed,
                                  "system1_max_tokens": system1_max_tokens,
                                  "system2_max_tokens": system2_max_tokens,
                                  "review": review or None, "budget": budget}.items() if v is not None}

    async def work() -> dict[str, Any]:
        if start_servers:
            _ensure_local_servers()
        from scale_graph.setup import build

        resolved = build(explicit, db=path)  # the run's parameters, keys and databases, settled once
        text = read_problem(problem, problem_file, resolved.context.max_problem_chars)
        from scale_graph.servers.endpoints import endpoints, with_context_window

        text = validate_problem(text, resolved.context)
        validate_thread_id(thread)
        endpoints(resolved.context)  # fail before touching the database when nothing is configured
        context = with_context_window(resolved.context)  # asks the servers' /v1/models once
        async with open_async(path) as (saver, store):
            graph = build_graph(saver, store)
            # The run id first, on stderr even with --json: after a kill it is the only handle.
            err.print(f"[dim]run {thread} → {path}[/]", highlight=False, soft_wrap=True)
            err.print(f"[dim]{resolved.describe()}[/]", highlight=False, soft_wrap=True)
            started.append(thread)
            values = await start(graph, store, text, context, thread, on_event=print_progress)
            pending = await awaiting_review(graph, thread)
            if pending is not None:
                decision = _ask_review(pending, thread)
                if decision is None:
                    return summary(values, thread, "awaiting review")
                values = await resume(graph, store, thread, on_event=print_progress, review=decision)
            return summary(values, thread, "done" if values.get("finished") else "stopped")

    started: list[str] = []
    shown = run_guarded(work, thread_id=thread, db=db, saved=lambda: bool(started))
    emit(shown, as_json)


def _ask_review(subproblems: list[str], thread: str) -> Any:
    """Show D* and ask to accept or edit it; None when nobody can answer (not a terminal)."""
    err.print("[bold]decomposition for review:[/]")
    for number, text in enumerate(subproblems, 1):
        err.print(f"  {number}. {text}", highlight=False)
    if not sys.stdin.isatty():
        err.print(f"run {thread} is waiting for review: `scale runs resume {thread} --accept` "
                  f"or `--subproblems-file FILE` (one sub-problem per line)")
        return None
    if typer.confirm("accept this decomposition?", default=True, err=True):
        return "accept"
    err.print("enter the sub-problems, one per line; an empty line ends")
    lines = iter(lambda: input("> ").strip(), "")
    return list(lines) or "accept"


def _ensure_local_servers() -> None:
    from scale_graph.servers import manager
    from scale_graph.setup import running_servers

    if running_servers() is None and not os.environ.get("SCALE_SYSTEM1_BASE_URL"):
        err.print("[dim]starting the local CPU vLLM servers (scale servers up)…[/]")
        manager.up("local")
