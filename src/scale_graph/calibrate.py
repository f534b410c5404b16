"""``scale calibrate``: would a sub-problem have gone better on the other system, and at what cost?

Over a finished SCALE evaluation run (results database + its checkpoint database), every solved
sub-problem i of every problem sample is *forked* (:mod:`scale_graph.forks`) to the other system:
the fork is the original run up to i, solves i on the other system and continues as SCALE would
(later sub-problems routed by the run's τ). Its final answer is graded against the gold answer.
Each forked sub-problem so has two labels — final correctness and tokens on System 1 and on
System 2 — one from the original run, one from the fork. :mod:`scale_graph.calibrate_report`
turns them into per-difficulty-bin statistics, the best τ and a plot; ``labels.jsonl`` holds
them for training a learned router.

Bounded work: ``--sample K`` forks K sub-problems drawn at random (seeded), ``--max-tokens B``
starts no fork once the forks have generated B completion tokens in total. Concurrent and
resumable like ``scale eval``: forks have deterministic thread ids (:func:`forks.fork_thread_id`),
so a re-run finds finished forks (no call) and continues interrupted ones from their checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from langgraph.store.base import GetOp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from scale_graph import journal, runner
from scale_graph.errors import ConfigError
from scale_graph.forks import ForkSpec, fork, fork_thread_id
from scale_graph.history import solution_texts
from scale_graph.runner import InputError, config_for, is_finished
from scale_graph.servers.chat import ChatReply
from scale_graph.state import total_usage


@dataclass(frozen=True)
class CalibrationOptions:
    sample: int | None = None  # fork only this many sub-problems (seeded draw)
    max_tokens: int | None = None  # start no fork once forks generated this many completion tokens
    concurrency: int = 8
    bin_width: float = 0.1
    seed: int = 0

    def check(self) -> None:
        for name in ("sample", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if not 0.0 < self.bin_width <= 1.0:
            raise ConfigError(f"--bin-width must be within (0, 1], got {self.bin_width}")


@dataclass
class Side:
    """One system's outcome for a sub-problem: the final answer's grade and the tokens."""

    system: Literal[1, 2]
    thread_id: str
    answer: str | None
    correct: bool
    ungraded: bool
    subproblem_tokens: int  # completion tokens of this sub-problem's solve calls
    run_tokens: int  # completion tokens of the whole run (the paper's Tok)


@dataclass
class Labelled:
    """A sub-problem of an evaluated problem sample, with its outcome on each system known so far."""

    problem_id: str
    sample: int
    index: int  # 0-based
    problem: str
    subproblem: str
    previous: list[dict[str, Any]]  # C_i: the earlier sub-problems, their solutions and boxed results
    difficulty: float
    sides: dict[int, Side] = field(default_factory=dict)

    def paired(self) -> bool:
        return {1, 2} <= set(self.sides) and not any(side.ungraded for side in self.sides.values())


@dataclass
class _Job:
    label: Labelled
    parent: str
    gold: str
    system: Literal[1, 2]
    thread_id: str


async def calibrate(eval_run: str, options: CalibrationOptions, *, checkpoint_db: Path, results_db: str | None,
                    out_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Fork, grade, write ``out_dir``/calibration.{md,json,png} and labels.jsonl; returns the report."""
    from scale_graph.calibrate_report import report, write_outputs
    from scale_graph.evaluation import grading
    from scale_graph.evaluation.methods import thread_id
    from scale_graph.evaluation.store import ResultsStore
    from scale_graph.graph import build_graph
    from scale_graph.persistence import open_async

    options.check()
    with ResultsStore(results_db, must_exist=True, run_db=checkpoint_db) as store:
        run = store.runs([eval_run])[0]
    if run.method != "scale":
        raise InputError(f"evaluation run {eval_run!r} is a {run.method} run; calibration forks SCALE runs")
    results = [r for r in run.results if r.error is None]
    if not results:
        raise InputError(f"evaluation run {eval_run!r} has no finished problem sample")
    if not checkpoint_db.exists():
        raise InputError(f"checkpoint database {checkpoint_db} does not exist (give the one `scale eval` used, --db)")
    grading.warm_up()
    counts = {"forks": 0, "made": 0, "reused": 0, "skipped_budget": 0, "busy": 0, "failed": 0, "not_finished": 0}
    errors: list[str] = []
    async with open_async(checkpoint_db) as (saver, cstore):
        graph = build_graph(saver, cstore)
        labels: list[Labelled] = []
        jobs: list[_Job] = []
        found = 0
        for result in results:
            parent = thread_id(run.name, result.problem_id, result.sample)
            snapshot = await graph.aget_state(config_for(parent))
            found += bool(snapshot.values)
            if not is_finished(snapshot):
                counts["not_finished"] += 1
                continue
            solutions = await _solutions(cstore, parent, snapshot.values)
            for label in _labels(result, parent, snapshot.values, solutions):
                labels.append(label)
                (own,) = label.sides.values()
                other: Literal[1, 2] = 2 if own.system == 1 else 1
                jobs.append(_Job(label, parent, result.gold, other,
                                 fork_thread_id(parent, ForkSpec(at=label.index + 1, system=other))))
        _refuse_nothing_to_fork(eval_run, checkpoint_db, len(results), found, labels)
        if options.sample is not None and options.sample < len(jobs):
            chosen = set(map(id, random.Random(options.seed).sample(jobs, options.sample)))
            jobs = [job for job in jobs if id(job) in chosen]
        counts["forks"] = len(jobs)
        # forks finished by an earlier invocation count first: they cost nothing now, and a re-run
        # with the same budget then picks the same forks
        done = [job for job in jobs if is_finished(await graph.aget_state(config_for(job.thread_id)))]
        spent = [sum([await journal.agenerated_tokens(cstore, job.thread_id) for job in done])]
        semaphore = asyncio.Semaphore(options.concurrency)
        progress = Progress(TextColumn(f"[bold]calibrate {eval_run}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=console, disable=console is None)
        task = progress.add_task("forks", total=len(jobs))

        async def one(job: _Job, finished: bool) -> None:
            async with semaphore:
                if not finished and options.max_tokens is not None and spent[0] >= options.max_tokens:
                    counts["skipped_budget"] += 1
                    return
                try:
                    new = await fork(graph, cstore, job.parent, at=job.label.index + 1, system=job.system,
                                     new_thread_id=job.thread_id)
                    values = await runner.resume(graph, cstore, new)
                except runner.RunBusy:  # another calibration works on it; a re-run picks it up
                    counts["busy"] += 1
                    return
                except ConfigError:  # the settings are wrong for every fork: stop
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded; a re-run retries it from its checkpoints
                    counts["failed"] += 1
                    errors.append(f"{job.thread_id}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                    return
                if not finished:
                    generated = await journal.agenerated_tokens(cstore, new)
                    spent[0] += generated
                    counts["made"] += 1
                else:
                    counts["reused"] += 1
            grade = await asyncio.to_thread(grading.grade, job.gold, values.get("answer"))
            job.label.sides[job.system] = _side(job.system, new, values, job.label.index, grade)
            progress.advance(task)

        finished_ids = {job.thread_id for job in done}
        with progress:
            await asyncio.gather(*(one(job, job.thread_id in finished_ids) for job in jobs))
    shown = report(labels, options.bin_width)
    shown.update(eval_run=eval_run, counts=counts, generated_tokens=spent[0], errors=errors[:20])
    shown["written"] = [str(path) for path in write_outputs(shown, labels, out_dir)]
    return shown


def _refuse_nothing_to_fork(eval_run: str, checkpoint_db: Path, samples: int, found: int,
                            labels: list[Labelled]) -> None:
    """InputError when there is no sub-problem to fork: a report of nothing would overwrite the
    outputs of an earlier calibration with empty ones (the usual cause: another run database)."""
    if labels:
        return
    if not found:
        raise InputError(f"checkpoint database {checkpoint_db} holds none of the {samples} runs of evaluation "
                         f"{eval_run!r}: give the run database `scale eval` used (--db); nothing written")
    raise InputError(f"evaluation run {eval_run!r} has no finished run with a solved sub-problem in "
                     f"{checkpoint_db}: nothing to calibrate; nothing written")


async def _solutions(store: Any, thread: str, values: dict[str, Any]) -> list[str]:
    """The full solution text of each sub-problem of run ``thread``, from its journal."""
    namespace, texts = journal.calls_namespace(thread), []
    for step in values.get("steps", []):
        items = await store.abatch([GetOp(namespace, key) for key in step.get("call_keys", [])])
        texts.append(solution_texts([ChatReply.from_dict(item.value) for item in items if item is not None])[0])
    return texts


def _labels(result: Any, parent: str, values: dict[str, Any], solutions: list[str]) -> list[Labelled]:
    """One label per solved sub-problem of a finished run, with the run's own side filled in;
    its context C_i is the problem and the earlier sub-problems with their solutions."""
    labels = []
    steps = [step for step in values.get("steps", []) if step.get("system") in (1, 2)]
    run_tokens = total_usage(values.get("usage", {})).get("completion_tokens", 0)
    for step in steps:
        index = step["index"]
        label = Labelled(result.problem_id, result.sample, index, values.get("problem", ""), step.get("text", ""),
                         [{"subproblem": s.get("text", ""), "solution": solutions[s["index"]], "result": s.get("result")}
                          for s in steps[:index]],
                         float(step.get("difficulty", 1.0)))
        label.sides[step["system"]] = Side(step["system"], parent, values.get("answer"), bool(result.correct),
                                           bool(result.ungraded), step.get("completion_tokens", 0), run_tokens)
        labels.append(label)
    return labels


def _side(system: Literal[1, 2], thread: str, values: dict[str, Any], index: int, grade: Any) -> Side:
    steps = values.get("steps", [])
    tokens = steps[index].get("completion_tokens", 0) if index < len(steps) else 0
    return Side(system, thread, values.get("answer"), grade.correct, grade.ungraded, tokens,
                total_usage(values.get("usage", {})).get("completion_tokens", 0))


def label_rows(labels: list[Labelled], eval_run: str) -> list[dict[str, Any]]:
    """The JSONL rows: one per (sub-problem, system) outcome known — training data for a router."""
    rows = []
    for label in labels:
        for side in sorted(label.sides.values(), key=lambda s: s.system):
            rows.append({"eval_run": eval_run, "problem_id": label.problem_id, "sample": label.sample,
                         "index": label.index, "problem": label.problem, "previous": label.previous,
                         "subproblem": label.subproblem, "difficulty": label.difficulty, "paired": label.paired(),
                         **{k: v for k, v in asdict(side).items()}})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
