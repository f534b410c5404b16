"""How every ``scale`` command talks: the two consoles, and failures turned into one line and an exit code.

Exit codes: 2 bad input (options, files, settings, unknown run, unusable database), 1 a failed
run (it stays resumable), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.markup import escape

from scale_graph.errors import ConfigError, InputError, UnknownRun
from scale_graph.files import not_regular

# Not a terminal (a log file, a pipe): no wrapping at 80 columns, so lines and tables stay whole.
out = Console(soft_wrap=not sys.stdout.isatty(), width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty(), width=None if sys.stderr.isatty() else 1000)


def say_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # "[redacted]" must show


def fail(message: str, code: int) -> None:
    say_error(message)
    raise typer.Exit(code)


def run_guarded(work: Callable[[], Any], *, thread_id: str | None = None, db: Path | None = None,
                saved: Callable[[], bool] = lambda: True) -> Any:
    """Run a coroutine factory, turning every expected failure into one line and an exit code.

    ``saved()`` tells whether the run exists yet: only then does the message say how to resume.
    """
    async def closing() -> Any:
        try:
            return await work()
        finally:
            await close_clients()

    from scale_graph.persistence import DatabaseError, db_path  # db_path: a URL's password is masked
    from scale_graph.servers.chat import EndpointError, close_clients

    def resume_hint() -> str:
        if not thread_id or not saved():
            return ""
        return f"; the run is saved: resume with `scale runs resume {thread_id}" + (f" --db {db_path(db)}`" if db else "`")

    try:
        return asyncio.run(closing())
    except (ConfigError, InputError, UnknownRun, DatabaseError) as exc:
        fail(str(exc), 2)
    except EndpointError as exc:
        fail(f"{exc}{resume_hint()}", 1)
    except KeyboardInterrupt:
        fail(f"interrupted{resume_hint()}", 130)
    except Exception as exc:  # a bug: still one line, and the run stays resumable
        if os.environ.get("SCALE_DEBUG"):
            raise
        fail(f"unexpected {type(exc).__name__}: {exc}{resume_hint()} (set SCALE_DEBUG=1 for a traceback)", 1)


# ---- what the commands share -------------------------------------------------------------
SUBPROBLEMS_FILE_MAX_CHARS = 200_000


DbOption = typer.Option(None, "--db", help="Run database: a SQLite file or a postgresql:// URL "
                        "(default: $SCALE_DB or ./scale.db).")
JsonOption = typer.Option(False, "--json", help="Print one JSON object instead of tables.")


def print_progress(event: dict[str, Any]) -> None:
    from scale_graph.progress import progress_line

    line = progress_line(event)
    if line:
        err.print(line.rstrip("\n"), style="dim", highlight=False, markup=False, soft_wrap=True)


def print_summary(shown: dict[str, Any]) -> None:
    table = Table(title=f"run {shown['thread_id']} ({shown['status']})", show_lines=False)
    for column in ("#", "sub-problem", "difficulty", "system", "tokens", "result"):
        table.add_column(column, overflow="fold")
    for row in shown["subproblems"]:
        difficulty = f"{row['difficulty']:.2f}" if row["difficulty"] is not None else "-"
        system = (f"{row['system']}" + (" (forced answer)" if row.get("forced_answer") else "")
                  + (" (reused)" if row.get("reused") else "")
                  + (" (routed by budget)" if row.get("routed_by_budget") else "")) if row["system"] else "-"
        table.add_row(str(row["index"] + 1), row["text"] or "", difficulty, system,
                      str(row["completion_tokens"]), str(row["result"]))
    out.print(table)
    if shown.get("fork_of"):
        fork = shown["fork_of"]
        out.print(f"forked from run {fork.get('thread_id')} at sub-problem {fork.get('at')}", highlight=False)
    total = shown["usage"]["total"]
    out.print(f"answer: [bold]{shown['answer']}[/]", highlight=False)
    out.print(f"usage: {total['calls']} calls, {total['prompt_tokens']} prompt + "
              f"{total['completion_tokens']} completion tokens ({total['reasoning_tokens']} reasoning)")
    budget = (shown.get("params") or {}).get("budget")
    if budget:
        out.print(f"budget: {budget:,} tokens per problem (τ {shown['params'].get('threshold')}), "
                  f"{max(0, budget - total['completion_tokens']):,} left"
                  + (", reached" if shown.get("budget_reached") else ""), highlight=False)
    for warning in shown["warnings"]:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)


def read_problem(problem: Optional[str], problem_file: Optional[Path], max_chars: int) -> str:
    from scale_graph.errors import InputError

    if problem_file is not None:
        if problem:
            raise InputError("give the problem either as an argument or with --problem-file, not both")
        if kind := not_regular(problem_file):  # a FIFO would wait for a writer forever
            raise InputError(f"cannot read problem file {problem_file}: it is {kind}, not a regular file")
        try:
            with problem_file.open("rb") as handle:  # bounded: --problem-file /dev/zero must not fill memory
                data = handle.read(4 * max_chars + 1)  # UTF-8 needs at most 4 bytes a character
        except OSError as exc:
            raise InputError(f"cannot read problem file {problem_file}: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if len(data) > 4 * max_chars:
                text = "x" * (max_chars + 1)  # too long whatever it holds
            else:
                raise InputError(f"problem file {problem_file} is not UTF-8 text") from None
        if len(text) > max_chars:
            raise InputError(f"problem file {problem_file} has more than max_problem_chars ({max_chars:,}) "
                             f"characters; raise it with SCALE_MAX_PROBLEM_CHARS if intended")
        return text
    if problem is None:
        raise InputError("no problem given: pass it as an argument or with --problem-file")
    return problem


def emit(shown: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
    else:
        print_summary(shown)


def require_database(path: Path) -> None:
    from scale_graph.persistence import DatabaseError

    if not path.exists():
        raise DatabaseError(f"database {path} does not exist (runs are stored where `scale solve` ran, or in --db/SCALE_DB)")
