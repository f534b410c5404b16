"""The ``scale`` command tree: each verb's module registered on one typer app, and ``main``."""

from __future__ import annotations

import sys

import typer
try:  # typer vendors click since 0.2x
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef]

from scale_graph.cli.common import (out, say_error)
from scale_graph.cli.db import db_copy
from scale_graph.cli.runs import runs_delete, runs_list, runs_resume, runs_show
from scale_graph.cli.serve import serve_command
from scale_graph.cli.servers import app as servers_app
from scale_graph.cli.solve import solve

# Heavy modules (LangGraph, the chat layer, the evaluation harness) are imported inside the
# commands that need them, so `scale --help`, `runs list` and usage errors answer at once.
app = typer.Typer(help="SCALE: selective test-time compute for math reasoning, as a LangGraph workflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
runs_app = typer.Typer(help="Inspect, resume and delete stored runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(servers_app, name="servers", help="Start, check and stop vLLM servers for System 1/2.")

app.command()(solve)
for verb, command in (("list", runs_list), ("show", runs_show), ("resume", runs_resume), ("delete", runs_delete)):
    runs_app.command(verb)(command)
app.command("serve", help="Serve SCALE as an OpenAI-compatible chat endpoint.")(serve_command)
db_app = typer.Typer(help="Move run databases between backends.", no_args_is_help=True)
app.add_typer(db_app, name="db")
db_app.command("copy")(db_copy)


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
