"""Evaluation runs: plan them (methods × datasets × swept values) and execute every problem
sample with bounded concurrency, resuming where an earlier invocation stopped.

All runs of one command share one semaphore, so the endpoints see a steady number of requests
in flight, and — for SCALE — one checkpoint database (one shared async saver). A sample whose
result is stored is skipped; one that failed is stored with its error and retried first next
time (SCALE then resumes it from its checkpoints). The grader is warmed in the background at
the start, so its slow first call does not run into a grading deadline.

Where a sample is computed is the ``executor``'s business: :func:`local_solver` (this process,
the default) or a Ray cluster (:mod:`scale_graph.evaluation.distributed`); either way the same
per-sample function (:func:`methods.solve`) computes it and this module grades, stores and
shows it, so a distributed evaluation gives the same results and reports as a local one.

Every run is bound to its identity (:mod:`scale_graph.identity`): its parameters and the model
behind each endpoint, read once per invocation. Before any work, a run whose stored identity
differs — in the results store, or in the SCALE threads of the run database, which another
``--results-db`` does not hide — is refused with one line naming what differs; ``replace``
discards its results and threads (checkpoints, call journals) and computes it anew.

Runs whose context names a ``reuse_group`` share identical calls through the checkpoint
database's store (:mod:`scale_graph.reuse`), baselines included; :class:`Totals` counts the
completion tokens of the samples computed now and the part of them generated now.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, AsyncContextManager, AsyncIterator, Awaitable, Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from scale_graph.context import ENDPOINT_FIELDS
from scale_graph.evaluation import DEFAULT_CONCURRENCY, grading
from scale_graph.evaluation.binding import bind
from scale_graph.evaluation.datasets import Dataset, Problem
from scale_graph.evaluation.grading import Grade
from scale_graph.evaluation.claims import solve_claimed
from scale_graph.evaluation.methods import METHODS, Outcome, Setup, problem_samples
from scale_graph.evaluation.store import ResultsStore
from scale_graph.graph import build_graph
from scale_graph.persistence import Database, open_async
from scale_graph.runner import InputError, RunBusy
from scale_graph.servers import identity
from scale_graph.servers.endpoints import endpoints, with_context_window
from scale_graph.settings import ConfigError
from scale_graph.setup import resolve
from scale_graph.state import total_usage

#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_LINE_INTERVAL_S = 30.0


@dataclass
class RunPlan:
    """One run: a method with fixed parameters on a dataset."""

    name: str
    method: str
    dataset: Dataset
    setup: Setup


#: Whether a sample still needs computing: False once any worker stored its result.
Pending = Callable[[], Awaitable[bool]]
#: Computes one sample of a run once it has a slot, if ``Pending`` then says it is still needed
#: (None when not: another worker of a shared evaluation stored it meanwhile); ``RunBusy`` when
#: another live process holds it.
Solve = Callable[[RunPlan, Problem, int, Pending], Awaitable["Outcome | None"]]
#: Given the runs, their checkpoint database and ``concurrency``: a context that provides a :data:`Solve`.
Executor = Callable[[Sequence[RunPlan], Database, int], AsyncContextManager[Solve]]


@dataclass
class Totals:
    """What one invocation did."""

    done: int = 0  # samples computed now
    skipped: int = 0  # samples already stored
    failed: int = 0
    ungraded: int = 0  # samples computed now whose answer the grader could not decide
    degraded: int = 0  # samples computed now that ran with a feature the server refused
    retried: int = 0  # samples that had failed before and were computed again now
    tokens: int = 0  # completion tokens of the samples computed now: the sum of their Tok
    generated: int = 0  # of those, generated for them (not reused from another run)
    first_error: str | None = None


@dataclass
class _Tally:
    """A run's progress figures, shown by the progress bar."""

    correct: int = 0
    attempted: int = 0  # the accuracy's denominator: every sample, failed or not
    failed: int = 0
    tokens: int = 0  # completion tokens produced by this invocation


def plan(datasets: Sequence[Dataset], methods: Sequence[str], *, params: dict[str, Any],
         thresholds: Sequence[float] = (), budgets: Sequence[int] = (), token_budgets: Sequence[int] = (),
         name: str | None = None) -> list[RunPlan]:
    """One run per dataset × method × System 2 budget × per-problem token budget (× threshold, for SCALE).

    A swept ``token_budgets`` value is every method's per-problem total (``budget``,
    :mod:`scale_graph.budget`): the equal-compute comparison; its runs end in ``-budget<N>``.

    ``params`` are Context fields (e.g. ``votes``, ``inftythink_max_iterations``). A swept
    budget is every method's per-call thinking budget: ``system2_max_tokens``, and for
    InftyThink also its per-iteration ``inftythink_max_tokens``. Names are ``<method>-<dataset>`` (``<name>`` when given, with the method and dataset added
    when there are several), plus ``-t<τ>`` / ``-b<budget>`` for each swept value.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method {', '.join(map(repr, unknown)) or '(none)'} "
                         f"(choose from {', '.join(METHODS)})")
    plans: dict[str, RunPlan] = {}
    for dataset in datasets:
        for method in dict.fromkeys(methods):
            for budget, total in ((b, t) for b in budgets or [None] for t in token_budgets or [None]):
                for threshold in (thresholds or [None]) if method == "scale" else [None]:
                    swept = {"system2_max_tokens": budget} if budget is not None else {}
                    if swept and method == "inftythink":
                        swept["inftythink_max_tokens"] = budget
                    if total is not None:
                        swept["budget"] = total
                    values = {**params, **({"threshold": threshold} if threshold is not None else {}), **swept}
                    parts = [name] if name else []
                    if not name or len(set(methods)) > 1:
                        parts.append(method)
                    if not name or len(datasets) > 1:
                        parts.append(dataset.name)
                    if threshold is not None and len(thresholds) > 1:
                        parts.append(f"t{threshold:g}")
                    if budget is not None and len(budgets) > 1:
                        parts.append(f"b{budget}")
                    if total is not None and len(token_budgets) > 1:
                        parts.append(f"budget{total}")
                    run = "-".join(parts)
                    plans[run] = RunPlan(run, method, dataset, Setup(run, resolve(values).context))
    return list(plans.values())


async def evaluate(plans: Sequence[RunPlan], store: ResultsStore, *, samples: int, checkpoint_db: Database,
                   concurrency: int = DEFAULT_CONCURRENCY, console: Console | None = None,
                   executor: Executor | None = None, replace_runs: bool = False) -> Totals:
    """Every missing (run, problem, sample) result, ``concurrency`` at a time (per worker, for an
    ``executor`` with workers); returns what was done. A run stored with another identity is
    refused (InputError), or with ``replace_runs`` discarded first, results and threads."""
    for name, value in (("samples", samples), ("concurrency", concurrency)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    windows: dict[tuple, int] = {}
    for run in plans:
        context = run.setup.context
        endpoints(context)  # fail before any work when an endpoint is not configured
        where = tuple(getattr(context, name) for name in ENDPOINT_FIELDS)
        if where not in windows:  # the servers' context windows and models, asked once per invocation
            windows[where] = with_context_window(context).context_window
        run.setup.context = context.replace(context_window=context.context_window or windows[where])
        run.setup.models = identity.models(context)  # as just probed: no request
    await bind(plans, store, checkpoint_db, samples, replace_runs)
    grading.warm_up()
    if console is not None:
        console.print(f"[dim]{len(plans)} run(s): {', '.join(run.name for run in plans)} → {store.shown} "
                      "(re-run the same command to resume)[/]", highlight=False)
    totals = Totals()
    async with AsyncExitStack() as stack:
        solver = await stack.enter_async_context((executor or local_solver)(plans, checkpoint_db, concurrency))
        progress = stack.enter_context(_progress(console))
        if console is not None and not console.is_terminal:  # a log file sees no bar: a line at intervals
            await stack.enter_async_context(_progress_lines(console, progress, PROGRESS_LINE_INTERVAL_S))
        jobs: list[tuple[bool, Any]] = []
        for run in plans:
            run_id = store.open_run(run.name, run.method, run.dataset.name, run.setup.config(run.method),
                                    run.setup.models)
            stored, failed = store.finished(run_id), store.failed(run_id)
            grid = [(problem, sample) for problem in run.dataset.problems
                    for sample in range(problem_samples(run.method, samples))]
            todo = [(p, s) for p, s in grid if (p.id, s) not in stored]
            previous = [stored[p.id, s] for p, s in grid if (p.id, s) in stored]
            totals.skipped += len(previous)
            totals.retried += sum((p.id, s) in failed for p, s in todo)
            tally = _Tally(correct=sum(g.correct for g in previous), attempted=len(previous))
            task = progress.add_task(run.name, total=len(grid), completed=len(previous), **asdict(tally))
            jobs += [((problem.id, sample) not in failed,
                      _one(run, run_id, problem, sample, store, solver, progress, task, tally, totals))
                     for problem, sample in todo]
        # samples that failed before, of every run, go first (the semaphore serves in order): a
        # re-run's first job is to complete every accuracy's denominator. Within that, an order of
        # this invocation's own: workers of a shared evaluation (same runs, same databases) then
        # seldom reach one sample together (the later one would pay a claim attempt and a
        # checkpoint read for nothing); one another worker stored costs one indexed read
        shuffle = random.Random()
        ordered = sorted(((first, shuffle.random(), job) for first, job in jobs), key=lambda item: item[:2])
        tasks = [asyncio.ensure_future(job) for _, _, job in ordered]
        try:
            await asyncio.gather(*tasks)
        finally:  # stopped (Ctrl-C, an error): every sample ends, releasing its claim, before the database closes
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
    return totals


@asynccontextmanager
async def local_solver(plans: Sequence[RunPlan], checkpoint_db: Database, concurrency: int) -> AsyncIterator[Solve]:
    """Samples computed in this process, ``concurrency`` at a time, on one shared checkpoint
    database (SCALE's checkpoints, the samples' claims, shared calls)."""
    async with AsyncExitStack() as stack:
        saver, checkpoint_store = await stack.enter_async_context(open_async(checkpoint_db))
        graph = build_graph(saver, checkpoint_store)
        for run in plans:
            run.setup.graph, run.setup.store = graph, checkpoint_store
        semaphore = asyncio.Semaphore(concurrency)

        async def one(run: RunPlan, problem: Problem, sample: int, pending: Pending) -> Outcome | None:
            async with semaphore:  # checked once a slot is free: another worker may have stored it meanwhile
                if not await pending():
                    return None
                return await solve_claimed(run.method, problem, sample, run.setup)

        yield one


async def _one(run: RunPlan, run_id: int, problem: Problem, sample: int, store: ResultsStore,
               solver: Solve, progress: Progress, task: Any, tally: _Tally, totals: Totals) -> None:
    async def pending() -> bool:
        # in the loop, like store.save: one short indexed read on the store's pooled connection
        # (from threads, concurrent reads would open and close overflow connections: a server
        # session each)
        return not store.is_stored(run_id, problem.id, sample)

    try:
        outcome = await solver(run, problem, sample, pending)
    except RunBusy:  # held by another live evaluation: left for it (or for a re-run), not stored as failed
        outcome = None
    if outcome is None:  # held or stored by another worker of a shared evaluation
        totals.skipped += 1
        return
    if outcome.error is None:
        grade = await asyncio.to_thread(grading.grade, problem.answer, outcome.answer)
    else:
        grade = Grade(False, "failed")
        totals.failed += 1
        totals.first_error = totals.first_error or f"{run.name} {problem.id} sample {sample}: {outcome.error}"
    store.save(run_id, problem, sample, outcome, grade, thinking_flag=run.setup.context.thinking_flag)
    totals.done += 1
    totals.ungraded += grade.ungraded
    totals.degraded += bool(outcome.degraded)
    if outcome.error is None:
        totals.tokens += total_usage(outcome.usage)["completion_tokens"]
        totals.generated += outcome.generated or 0
    tally.correct += grade.correct
    tally.attempted += 1
    tally.failed += outcome.error is not None
    tally.tokens += total_usage(outcome.usage)["completion_tokens"]
    progress.update(task, advance=1, **asdict(tally))


class _Accuracy(ProgressColumn):
    def render(self, task: Task) -> Text:
        attempted, failed = task.fields["attempted"], task.fields["failed"]
        shown = f"acc {100 * task.fields['correct'] / attempted:5.1f}%" if attempted else "acc    – "
        return Text(shown + (f" ({failed} failed)" if failed else ""), style="green" if not failed else "yellow")


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.fields["tokens"] / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="cyan")


@asynccontextmanager
async def _progress_lines(console: Console, progress: Progress, every: float) -> AsyncIterator[None]:
    """While the body runs, one plain line per run every ``every`` seconds (for stderr that is
    not a terminal, where the live bar shows nothing until the end)."""
    async def tick() -> None:
        while True:
            await asyncio.sleep(every)
            for task in progress.tasks:
                fields = task.fields
                accuracy = f"acc {100 * fields['correct'] / fields['attempted']:.1f}%" if fields["attempted"] else "acc –"
                elapsed = task.elapsed or 0.0
                console.print(f"progress {task.description}: {int(task.completed)}/{int(task.total or 0)} samples, "
                              f"{accuracy}, {fields['failed']} failed, "
                              f"{fields['tokens'] / elapsed if elapsed > 0 else 0:,.0f} tok/s, {elapsed:,.0f} s",
                              highlight=False, markup=False, soft_wrap=True)

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Accuracy(),
                    _TokensPerSecond(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=console is None, refresh_per_second=4)


