"""How every ``scale`` command talks: the two consoles, and failures turned into one line and an exit code.

Exit codes: 2 bad input (options, files, settings, unknown run, unusable database), 1 a failed
run (it stays resumable), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from scale_graph.errors import ConfigError, InputError, UnknownRun

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


