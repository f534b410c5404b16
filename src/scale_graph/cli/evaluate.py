"""``scale eval`` and ``scale report``: typer command functions the main CLI registers with
``app.command("eval")(eval_command)`` and ``app.command("report")(report_command)``.

Errors follow the main CLI: one red line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from scale_graph.errors import InputError
from scale_graph.evaluation import DEFAULT_CONCURRENCY
from scale_graph.cli.common import DbOption

# The harness (LangGraph, the chat layer, SQLAlchemy, matplotlib) is imported by the commands
# themselves: `scale --help` must not pay for it.

out = Console()
err = Console(stderr=True)

ResultsDbOption = typer.Option(None, "--results-db", help="Results database: SQLAlchemy URL or SQLite path "
                               "(default: $SCALE_RESULTS_DB or ./scale-results.db).")
RayOption = typer.Option(None, "--ray", metavar="ADDRESS", help="Compute the problem samples on the Ray cluster at "
                         "ADDRESS: auto (the cluster this machine belongs to, or $RAY_ADDRESS), HOST:PORT or "
                         "ray://HOST:10001. Needs the run database on PostgreSQL (--db); results default to it too. "
                         "--concurrency is then per worker.")
RayWorkersOption = typer.Option(None, "--ray-workers", help="With --ray: worker actors (default one per node with a CPU).")
#: Most samples per problem (``--samples``): it multiplies every run's work, like ``context.MAXIMA``
#: (the paper uses 8); a typo of a few zeros must not plan a billion samples.
MAX_SAMPLES = 1024
ConcurrencyOption = typer.Option(DEFAULT_CONCURRENCY, "--concurrency", "-c", help="Problem samples in flight.")
LimitOption = typer.Option(None, "--limit", help="Only the first N problems of each dataset.")
ReplaceOption = typer.Option(False, "--replace", help="Discard the stored results and SCALE threads of the runs this "
                             "command names, then compute them anew (needed to reuse a name with other parameters "
                             "or another model).")
DataDirOption = typer.Option(None, "--data-dir", help="Folder holding <preset>.jsonl "
                             "(default: $SCALE_DATA_DIR, else the Hugging Face hub).")


@dataclass(frozen=True)
class Where:
    """Where an evaluation reads its problems, runs and keeps its results (the shared options)."""

    limit: int | None
    data_dir: Path | None
    db: Path | None
    results_db: str | None
    ray: str | None
    ray_workers: int | None


def with_where(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options every evaluation shares (``--limit``, ``--data-dir``, ``--db``,
    ``--results-db``, ``--ray``, ``--ray-workers``), handed to it as one ``where: Where``; typer reads
    the signature, so the options are declared once here, not in each command."""
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, option, kind in (("limit", LimitOption, Optional[int]), ("data_dir", DataDirOption, Optional[Path]),
                                         ("db", DbOption, Optional[Path]), ("results_db", ResultsDbOption, Optional[str]),
                                         ("ray", RayOption, Optional[str]), ("ray_workers", RayWorkersOption, Optional[int]))]
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "where"]

    @functools.wraps(command)
    def wrapper(**options: Any) -> None:
        where = Where(**{p.name: options.pop(p.name) for p in shared})
        command(where=where, **options)

    wrapper.__signature__ = inspect.Signature([*own, *shared], return_annotation=None)  # type: ignore[attr-defined]
    return wrapper


async def run_evaluation(where: Where, build_plans: Callable[[Callable[[str], Any]], list[Any]], *, samples: int,
                         concurrency: int, replace: bool = False) -> tuple[Any, list[Any], str]:
    """Check the options, plan (``build_plans`` gets a loader that applies ``--limit``), evaluate
    every plan and read its stored runs back: the body shared by ``eval`` and ``traces generate``."""
    from scale_graph.evaluation import datasets
    from scale_graph.evaluation.runner import evaluate
    from scale_graph.evaluation.store import ResultsStore

    if where.limit is not None and where.limit < 1:
        raise InputError(f"--limit must be at least 1, got {where.limit}")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if samples > MAX_SAMPLES:
        raise InputError(f"--samples must be at most {MAX_SAMPLES:,}, got {samples:,}")
    checkpoint_db, executor, results = executor_for(where.ray, where.ray_workers, where.db, where.results_db)
    from scale_graph.servers.endpoints import install_keys, read_keys

    install_keys(read_keys())  # the entry point reads the API keys once, not each LLM call

    def load(source: str) -> datasets.Dataset:
        loaded = datasets.load(source, where.data_dir)
        return loaded if where.limit is None else datasets.Dataset(loaded.name, loaded.problems[:where.limit])

    plans = build_plans(load)
    with ResultsStore(results) as store:
        totals = await evaluate(plans, store, samples=samples, checkpoint_db=checkpoint_db,
                                concurrency=concurrency, console=err, executor=executor, replace_runs=replace)
        return totals, store.runs([p.name for p in plans]), checkpoint_db


def exit_if_failed(totals: Any) -> None:
    """Name the failed problem samples and exit 1; a re-run retries them."""
    if totals.failed:
        err.print(f"[bold red]error:[/] {totals.failed} problem sample(s) failed (first: {totals.first_error}); "
                  "re-run the same command to retry them", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@with_where
def eval_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Preset (aime24, aime25, amc23) or a JSONL path; "
                                "comma-separated for several."),
    method: str = typer.Option("scale", "--method", "-m", help="scale, cot, majority (the paper's: one vote "
                               "over --votes samples per problem, whatever -n), majority-repeated (-n votes per problem) "
                               "or inftythink; comma-separated for several."),
    samples: int = typer.Option(8, "--samples", "-n", help="Samples per problem (Acc = pass@1 averaged over them)."),
    threshold: Optional[str] = typer.Option(None, "--threshold", "-t", help="SCALE's τ (default 0.2); a comma "
                                            "list such as 0.2,0.3 sweeps: one run per value."),
    system2_max_tokens: Optional[str] = typer.Option(None, "--system2-max-tokens", help="Thinking budget per call of "
                                                     "every method (SCALE sub-problem, CoT/majority sample, InftyThink "
                                                     "iteration); a comma list sweeps."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Per-problem token budget every method keeps "
                                         "(all completion tokens of a sample; default off); a comma list such as "
                                         "4096,8192,16384 sweeps: one run per value, compared by `scale report`."),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-k", help="SCALE: candidate decompositions (default 8)."),
    votes: Optional[int] = typer.Option(None, "--votes", help="Majority voting: samples voted on per problem sample "
                                        "(k, default 8)."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help="Source of the sampling defaults: paper (T 0.6, "
                                           "top-p 0.95 for every model; default) or authors (their code: T 0.7, top-p "
                                           "0.8 for the non-thinking System 1)."),
    system_message: Optional[str] = typer.Option(None, "--system-message", help="System message sent first in every "
                                                 "call of every method (default none, as in the paper)."),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="InftyThink: most iterations per "
                                                 "problem sample (default 50, the official cap)."),
    inftythink_max_tokens: Optional[int] = typer.Option(None, "--inftythink-max-tokens", help="InftyThink: thinking "
                                                        "budget per iteration (default 8192, the official value)."),
    force_answer: Optional[bool] = typer.Option(None, "--force-answer/--no-force-answer", help="Forced-answer policy "
                                                "for every method: a thinking call cut without an answer gets a short "
                                                "non-thinking follow-up (default on)."),
    reuse: bool = typer.Option(True, "--reuse/--no-reuse", help="Share identical calls between the runs of this "
                               "evaluation (per-run results unchanged, fewer tokens generated); --no-reuse for "
                               "independent runs."),
    reuse_group: Optional[str] = typer.Option(None, "--reuse-group", help="Share identical calls with every run naming "
                                              "this group, across commands (default: one group per evaluation name)."),
    concurrency: int = ConcurrencyOption,
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default <method>-<dataset>, suffixed per "
                                       "swept value). Re-running the same command resumes; the same name with other "
                                       "parameters or another model behind an endpoint is refused."),
    replace: bool = ReplaceOption,
    *,
    where: Where,
) -> None:
    """Evaluate SCALE and baselines on math benchmarks; results are stored and a re-run resumes."""
    from scale_graph.evaluation.report import generated_line, report
    from scale_graph.evaluation.runner import plan

    def build_plans(load: Callable[[str], Any]) -> list[Any]:
        loaded = [load(source) for source in _split(dataset, "--dataset")]
        methods = _split(method, "--method")
        given = {"candidates": candidates, "votes": votes, "inftythink_max_iterations": max_iterations,
                 "inftythink_max_tokens": inftythink_max_tokens, "force_answer": force_answer,
                 "sampling": sampling, "system_message": system_message,
                 "reuse_group": _reuse_group(reuse, reuse_group, name, methods, loaded)}
        budgets = [_number(v, int, "--system2-max-tokens") for v in _split(system2_max_tokens, "--system2-max-tokens")]
        if budgets and inftythink_max_tokens is not None:
            raise InputError("give either --system2-max-tokens (every method's per-call budget, InftyThink's "
                             "per-iteration one included) or --inftythink-max-tokens, not both")
        return plan(loaded, methods, params={k: v for k, v in given.items() if v is not None},
                    thresholds=[_number(v, float, "--threshold") for v in _split(threshold, "--threshold")],
                    budgets=budgets, token_budgets=[_number(v, int, "--budget") for v in _split(budget, "--budget")],
                    name=name)

    totals, runs, _ = _run(lambda: run_evaluation(where, build_plans, samples=samples, concurrency=concurrency,
                                                  replace=replace))
    extras = [f"{count} {what}" for count, what in ((totals.retried, "retried after an earlier failure"),
                                                   (totals.ungraded, "ungraded (the grader could not decide)"),
                                                   (totals.degraded, "degraded (a feature the server refused)"))
              if count]
    err.print(f"[dim]{totals.done} problem sample(s) evaluated now, {totals.skipped} already stored"
              f"{'; ' + ', '.join(extras) if extras else ''}[/]", highlight=False, soft_wrap=True)
    if totals.tokens:
        err.print(f"[dim]{generated_line(totals.generated, totals.tokens, 'now')}[/]", highlight=False, soft_wrap=True)
    report(runs, console=out)
    exit_if_failed(totals)


def report_command(
    runs: Optional[list[str]] = typer.Argument(None, help="Run names or shell patterns such as 'scale-*' (default: all)."),
    results_db: Optional[str] = ResultsDbOption,
    out_dir: Path = typer.Option(Path("scale-report"), "--out", "-o", help="Folder for report.md and the PNG plots."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown tables instead of terminal tables."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write every run's metrics as CSV."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every run's metrics as JSON."),
) -> None:
    """Tables (paper Tables 1 and 2), plots (Figure 2 style) and exports of stored evaluation runs."""
    from scale_graph.evaluation.report import report
    from scale_graph.evaluation.store import ResultsStore

    async def work() -> list[Path]:
        with ResultsStore(results_db, must_exist=True) as store:
            chosen = store.runs(runs or [])
        if not chosen:
            raise InputError(f"no evaluation runs in {store.shown} (run `scale eval` first)")
        try:
            return report(chosen, console=out, out_dir=out_dir, markdown=markdown, csv_path=csv_path,
                          json_path=json_path)
        except OSError as exc:
            raise InputError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None

    written = _run(work)
    err.print(f"[dim]wrote {', '.join(str(p) for p in written)}[/]", highlight=False, soft_wrap=True)


def executor_for(ray: str | None, workers: int | None, db: Path | None,
                 results_db: str | None) -> tuple[Any, Any, str | None]:
    """The run database, the executor (None: this process) and the results database of an
    evaluation; with ``--ray`` checked before any work (PostgreSQL, Ray installed)."""
    from scale_graph.persistence import db_path

    checkpoint_db = db_path(db)
    if ray is None:
        if workers is not None:
            raise InputError("--ray-workers needs --ray ADDRESS")
        from scale_graph.database import results_db as results_rule

        return checkpoint_db, None, results_rule(results_db, checkpoint_db)
    if not ray.strip():
        raise InputError("--ray: the address is empty (use auto for the cluster this machine belongs to)")
    from scale_graph.evaluation.distributed import ray_executor, results_for_ray

    executor = ray_executor(ray.strip(), checkpoint_db, workers, console=err)
    return checkpoint_db, executor, results_for_ray(results_db, checkpoint_db)


def _run(work: Callable[[], Any]) -> Any:
    """The main CLI's runner: expected failures become one red line and an exit code."""
    from scale_graph.cli.common import run_guarded

    return run_guarded(work)


def _reuse_group(reuse: bool, group: str | None, name: str | None, methods: list[str],
                 loaded: list[Any]) -> str:
    """The evaluation's reuse group: ``--reuse-group``, else one named after the evaluation (stable, so a
    re-run of the same command finds the calls cached before it stopped), or "" with ``--no-reuse``."""
    if group is not None and not reuse:
        raise InputError("give either --reuse-group or --no-reuse, not both")
    if group is not None:
        if not group.strip():
            raise InputError("--reuse-group must not be empty (use --no-reuse for independent runs)")
        return group.strip()
    if not reuse:
        return ""
    return "eval/" + (name or "-".join([*dict.fromkeys(methods), *(d.name for d in loaded)]))


def _split(value: str | None, option: str) -> list[str]:
    items = [item.strip() for item in (value or "").split(",")]
    if value is not None and not all(items):
        raise InputError(f"{option}: empty item in {value!r}")
    return [item for item in items if item]


def _number(text: str, kind: type, option: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{option}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
