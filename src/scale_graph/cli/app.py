"""The ``scale`` command: solve problems, inspect/resume/delete runs, manage local servers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
try:  # typer vendors click since 0.2x
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef]
from rich.table import Table

from scale_graph.errors import ConfigError
from scale_graph.cli.common import (DbOption, JsonOption, SUBPROBLEMS_FILE_MAX_CHARS, emit, err, fail, out, print_progress,
                                  print_summary, read_problem, require_database, run_guarded, say_error)
from scale_graph.cli.servers import app as servers_app

# Heavy modules (LangGraph, the chat layer, the evaluation harness) are imported inside the
# commands that need them, so `scale --help`, `runs list` and usage errors answer at once.
app = typer.Typer(help="SCALE: selective test-time compute for math reasoning, as a LangGraph workflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
runs_app = typer.Typer(help="Inspect, resume and delete stored runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(servers_app, name="servers", help="Start, check and stop vLLM servers for System 1/2.")

@app.command()
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


@runs_app.command("list")
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


@runs_app.command("show")
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


@runs_app.command("resume")
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


@runs_app.command("delete")
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


@app.command("serve", help="Serve SCALE as an OpenAI-compatible chat endpoint.")
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


db_app = typer.Typer(help="Move run databases between backends.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("copy")
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


def _register_evaluation() -> None:
    # Imported here: the evaluation commands reuse this module's error handling.
    from scale_graph.cli.evaluate import eval_command, report_command

    app.command("eval", help="Evaluate SCALE and the baselines on a problem set (paper Tables 1-2, Figure 2).")(eval_command)
    app.command("report", help="Tables and plots from stored evaluation runs.")(report_command)

    from scale_graph.cli.traces import traces_app

    app.add_typer(traces_app, name="traces", help="Generate SCALE traces and export them as fine-tuning data.")


_register_evaluation()


def _register_whatif() -> None:
    from scale_graph.cli.whatif import calibrate_command, runs_diff, runs_fork

    runs_app.command("fork")(runs_fork)
    runs_app.command("diff")(runs_diff)
    app.command("calibrate", help="Routing calibration over a SCALE evaluation: each sub-problem forked to the "
                "other system.")(calibrate_command)


_register_whatif()

def _register_ui() -> None:
    from scale_graph.cli.ui import ui_command  # light: starlette and uvicorn load when it runs

    app.command("ui", help="A local web viewer of runs, forks and evaluations (no internet needed).")(ui_command)


_register_ui()


def main() -> None:
    """Console entry point: usage errors (unknown option, wrong type) also get one error line."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help() if exc.ctx else "")
        code = 0
    except ClickException as exc:
        say_error(exc.format_message())
        code = 2
    except typer.Abort:
        say_error("interrupted")
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
