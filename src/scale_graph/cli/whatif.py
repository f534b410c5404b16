"""``scale runs fork``, ``scale runs diff`` and ``scale calibrate``: typer command functions the
main CLI registers. Heavy modules (LangGraph, the evaluation harness, matplotlib) are imported
inside the commands, so ``scale --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from scale_graph.cli.common import (DbOption, JsonOption, SUBPROBLEMS_FILE_MAX_CHARS, emit, err, out, print_progress,
                                  read_problem, require_database, run_guarded, say_error)



def runs_fork(
    thread_id: str = typer.Argument(..., help="The run to fork."),
    at: int | None = typer.Option(None, "--at", help="Sub-problem N (1-based) whose route is forced."),
    system: int | None = typer.Option(None, "--system", help="Solve sub-problem N on this system (1 or 2)."),
    difficulty: float | None = typer.Option(None, "--difficulty", help="Give sub-problem N this difficulty "
                                               "(routed by the run's τ)."),
    subproblems_file: Path | None = typer.Option(None, "--subproblems-file", help="Fork from the selection on "
                                                    "with these sub-problems (one per line)."),
    new_thread_id: str | None = typer.Option(None, "--thread-id", help="Id for the fork (default: random)."),
    run: bool = typer.Option(True, "--run/--no-run", help="Run the fork to its end now (default), or only create "
                             "it (continue with `scale runs resume`)."),
    db: Path | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Fork a run before sub-problem N's routing with its system or difficulty forced (no call is
    made for anything before N), or from the selection with edited sub-problems; then run it."""
    from scale_graph.forks import fork
    from scale_graph.graph import build_graph
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runner import resume
    from scale_graph.runs import summary

    path = db_path(db)
    created: list[str] = []

    async def work() -> dict[str, Any]:
        require_database(path)
        edited = None
        if subproblems_file is not None:
            edited = [line for line in read_problem(None, subproblems_file, SUBPROBLEMS_FILE_MAX_CHARS).splitlines()
                      if line.strip()]
        async with open_async(path) as (saver, store):
            graph = build_graph(saver, store)
            new = await fork(graph, store, thread_id, at=at, system=system, difficulty=difficulty,  # type: ignore[arg-type]
                             subproblems=edited, new_thread_id=new_thread_id)
            created.append(new)
            err.print(f"[dim]fork {new} of run {thread_id} → {path}[/]", highlight=False, soft_wrap=True)
            if not run:
                return summary((await graph.aget_state({"configurable": {"thread_id": new}})).values, new, "forked")
            return summary(await resume(graph, store, new, on_event=print_progress), new)

    shown = run_guarded(work, thread_id=new_thread_id, db=db, saved=lambda: bool(created))
    emit(shown, as_json)


def runs_diff(first: str = typer.Argument(..., help="A run."), second: str = typer.Argument(..., help="Another run."),
              db: Path | None = DbOption, as_json: bool = JsonOption) -> None:
    """Where two runs diverge: sub-problems, difficulties, systems, tokens and answers side by side."""
    from scale_graph.graph import build_graph
    from scale_graph.persistence import db_path, open_async
    from scale_graph.runs import diff_runs

    path = db_path(db)

    async def work() -> dict[str, Any]:
        require_database(path)
        async with open_async(path) as (saver, store):
            return await diff_runs(build_graph(saver, store), store, first, second)

    shown = run_guarded(work)
    if as_json:
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"{first} (a) vs {second} (b)")
    for column in ("#", "sub-problem", "difficulty a/b", "system a/b", "tokens a/b", "result a/b", "differs"):
        table.add_column(column, overflow="fold")
    for row in shown["subproblems"]:
        a, b = row["a"] or {}, row["b"] or {}

        def pair(name: str, a: dict = a, b: dict = b) -> str:
            left, right = a.get(name), b.get(name)
            if isinstance(left, float) or isinstance(right, float):
                left, right = (f"{v:.2f}" if isinstance(v, float) else v for v in (left, right))
            return str(left) if left == right else f"{left} / {right}"

        style = "bold yellow" if row["index"] == shown["first_divergence"] else None
        table.add_row(str(row["index"]), pair("text"), pair("difficulty"), pair("system"), pair("completion_tokens"),
                      pair("result"), ", ".join(row["differs"]) or "-", style=style)
    out.print(table)
    where = shown["first_divergence"]
    out.print(f"first divergence: {'sub-problem ' + str(where) if where else 'none'}"
              + ("" if shown["same_problem"] else " (different problems)"), highlight=False)
    out.print(f"answer: {shown['answer']['a']} / {shown['answer']['b']}; completion tokens: "
              f"{shown['completion_tokens']['a']} / {shown['completion_tokens']['b']}", highlight=False)


def calibrate_command(
    eval_run: str = typer.Argument(..., help="A finished SCALE evaluation run (its name in the results database)."),
    sample: int | None = typer.Option(None, "--sample", help="Fork only K sub-problems, drawn at random (seeded)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Start no more forks once they have "
                                             "generated this many completion tokens in total."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Forks in flight."),
    bin_width: float = typer.Option(0.1, "--bin-width", help="Width of the difficulty bins."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --sample draw."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Folder for calibration.md/.json/.png and "
                                           "labels.jsonl (default: ./scale-calibrate/<run>)."),
    db: Path | None = typer.Option(None, "--db", help="SQLite checkpoint database of the evaluation "
                                      "(default: $SCALE_DB or ./scale.db)."),
    results_db: str | None = typer.Option(None, "--results-db", help="Results database: SQLAlchemy URL or SQLite "
                                             "path (default: $SCALE_RESULTS_DB or ./scale-results.db)."),
    as_json: bool = JsonOption,
) -> None:
    """Routing calibration: fork every sub-problem of a SCALE evaluation to the other system, grade
    the final answers, and report per difficulty bin P(correct | System 1/2), tokens and the best τ."""
    from scale_graph.calibrate import CalibrationOptions, calibrate
    from scale_graph.calibrate_report import print_calibration
    from scale_graph.persistence import db_path

    options = CalibrationOptions(sample=sample, max_tokens=max_tokens, concurrency=concurrency, bin_width=bin_width,
                                 seed=seed)
    folder = out_dir or Path("scale-calibrate") / "".join(c if c.isalnum() or c in "-_" else "_" for c in eval_run)
    shown = run_guarded(lambda: calibrate(eval_run, options, checkpoint_db=db_path(db), results_db=results_db,
                                          out_dir=folder, console=err))
    if as_json:
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
    else:
        print_calibration(shown, out)
    if shown["counts"]["failed"]:
        say_error(f"{shown['counts']['failed']} fork(s) failed (first: {shown['errors'][0]}); "
                  "re-run the same command to retry them (finished forks are kept)")
        raise typer.Exit(1)
