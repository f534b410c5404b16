"""``scale traces generate`` and ``scale traces export``: typer command functions, grouped in
:data:`traces_app`, which the main CLI registers with ``app.add_typer(traces_app, name="traces")``.

``generate`` is a SCALE evaluation run under another name: it delegates to
:mod:`scale_graph.evaluation` (resumable, concurrent, progress bar, SQLAlchemy results store,
every final answer graded against the reference). ``export`` turns a stored run into
fine-tuning data (:mod:`scale_graph.traces.export`). Errors follow the main CLI: one red line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from scale_graph.errors import InputError
from scale_graph.cli.evaluate import (ConcurrencyOption, ReplaceOption, ResultsDbOption, Where, _run,
                                        exit_if_failed, run_evaluation, with_where)
from scale_graph.cli.common import DbOption
from scale_graph.traces.render import FORMATS

out = Console()
err = Console(stderr=True)

traces_app = typer.Typer(help="Generate SCALE traces and export them as fine-tuning data (paper Setting 2).",
                         no_args_is_help=True, pretty_exceptions_enable=False)

@with_where
def generate_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Preset (aime24, aime25, amc23) or a JSONL path "
                                "({\"id\",\"problem\",\"answer\"})."),
    out_run: str = typer.Option(..., "--out", "-o", help="Name of the run that stores the traces; "
                                "`scale traces export` reads it. Re-running the same command resumes."),
    samples: int = typer.Option(1, "--samples", "-n", help="SCALE runs (traces) per problem, each with its own seed."),
    concurrency: int = ConcurrencyOption,
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="τ: difficulty above it goes to "
                                              "System 2 (default 0.2)."),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-k", help="Candidate decompositions (default 8)."),
    replace: bool = ReplaceOption,
    *,
    where: Where,
) -> None:
    """Run SCALE over a problem set and store every trace, graded against the reference answers."""
    from scale_graph.evaluation.metrics import compute
    from scale_graph.evaluation.runner import plan

    def build_plans(load: Callable[[str], Any]) -> list[Any]:
        if not out_run.strip():
            raise InputError("--out: the run name is empty")
        return plan([load(dataset)], ["scale"], params={} if candidates is None else {"candidates": candidates},
                    thresholds=[] if threshold is None else [threshold], name=out_run)

    totals, (run,), checkpoint_db = _run(lambda: run_evaluation(where, build_plans, samples=samples,
                                                                concurrency=concurrency, replace=replace))
    shown = compute(run.results)
    err.print(f"[dim]{totals.done} trace(s) generated now, {totals.skipped} already stored[/]")
    table = Table(title=f"traces run {run.name} ({run.dataset})")
    for column in ("problems", "traces", "correct", "failed", "acc %", "tokens/trace", "System 2 %"):
        table.add_column(column, justify="right")
    correct = sum(r.correct for r in run.results if r.error is None)
    table.add_row(str(shown.problems), str(shown.samples), str(correct), str(shown.failed), _fmt(shown.accuracy),
                  _fmt(shown.tok, 0), _fmt(shown.hard))
    out.print(table)
    options = [f"--db {checkpoint_db}"] if where.db else []  # a PostgreSQL URL's str masks its password
    options += [f"--results-db {where.results_db}"] if where.results_db else []
    err.print(f"[dim]next: scale traces export {run.name} --out {run.name}.jsonl --correct-only "
              f"{' '.join(options)}[/]".rstrip(), highlight=False, soft_wrap=True)
    exit_if_failed(totals)


def export_command(
    run: str = typer.Argument(..., help="Run name given to `scale traces generate --out` (or a `scale eval` SCALE run)."),
    fmt: str = typer.Option("messages", "--format", "-f", help=f"One of {', '.join(FORMATS)}: TRL chat messages, "
                            "LLaMA-Factory ShareGPT, or Alpaca instruction/input/output."),
    out_file: Path = typer.Option(..., "--out", "-o", help="JSONL file to write (statistics go beside it, "
                                  "as <stem>.stats.json)."),
    correct_only: bool = typer.Option(False, "--correct-only", help="Keep only traces whose final answer is "
                                      "equivalent to the reference (the paper's filter)."),
    include_reasoning: bool = typer.Option(False, "--include-reasoning", help="Put each System 2 sub-problem's "
                                           "thinking in a <think>…</think> block before its solution."),
    max_per_problem: Optional[int] = typer.Option(None, "--max-per-problem", help="Keep at most N traces per "
                                                  "problem: correct first, then shorter."),
    dedup: bool = typer.Option(False, "--dedup", help="Drop a problem's traces whose response repeats an "
                               "earlier one (whitespace-insensitive)."),
    results_db: Optional[str] = ResultsDbOption,
    db: Optional[Path] = DbOption,
) -> None:
    """Export a stored SCALE run as fine-tuning data (one JSON object per line), with statistics."""
    from scale_graph.traces.export import ExportOptions, export

    async def work() -> Any:
        options = ExportOptions(format=fmt, correct_only=correct_only, include_reasoning=include_reasoning,
                                max_per_problem=max_per_problem, dedup=dedup)
        return await export(run, out_file, options, results_db=results_db, checkpoint_db=db)

    exported = _run(work)
    if exported.issues:
        for issue in exported.issues[:5]:
            err.print(f"  {issue}", highlight=False, soft_wrap=True)
        err.print(f"[bold red]error:[/] the export failed its checks ({len(exported.issues)} issue(s)); "
                  f"nothing was written to {exported.path}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    print_statistics(exported.stats, out)
    err.print(f"[dim]wrote {exported.stats['kept']} trace(s) to {exported.path} and statistics to "
              f"{exported.stats_path}[/]", highlight=False, soft_wrap=True)
    if not exported.stats["kept"]:
        err.print("[yellow]warning:[/] no trace was kept (see the dropped counts)", highlight=False)


def print_statistics(stats: dict[str, Any], console: Console) -> None:
    """The export statistics as a two-column table."""
    from scale_graph.traces.export import DROP_REASONS
    table = Table(title=f"traces of {stats['run']} → {stats['file']} ({stats['options']['format']})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [("problems", stats["problems"]), ("problems with a kept trace", stats["problems_kept"]),
            ("traces", stats["traces"]), ("kept after filtering", stats["kept"])]
    if stats["unanswered"]:
        rows.append(("  kept without a final answer", stats["unanswered"]))
    rows += [(f"  dropped: {reason.replace('_', ' ')}", stats["dropped"][reason])
             for reason in DROP_REASONS if stats["dropped"][reason]]
    rows += [("mean completion tokens (whole run)", _fmt(stats["mean_completion_tokens"], 0)),
             ("mean solve tokens (sub-problems)", _fmt(stats["mean_solve_tokens"], 0)),
             ("mean characters (assistant turn)", _fmt(stats["mean_assistant_chars"], 0)),
             ("mean sub-problems", _fmt(stats["mean_subproblems"])),
             ("System 2 share of sub-problems", _percent(stats["system2_share"])),
             ("answer agreement with reference", _percent(stats["answer_agreement"]))]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


traces_app.command("generate")(generate_command)
traces_app.command("export")(export_command)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"
