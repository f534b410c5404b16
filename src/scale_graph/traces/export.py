"""Training data from a SCALE run stored by ``scale traces generate`` (or ``scale eval --method scale``).

Each stored result (one problem sample) links to its checkpointed run through
:func:`scale_graph.evaluation.methods.thread_id` (the results store does not keep the thread
id; the evaluation derives it from run name, problem id and sample, and so does the export).
The run's sub-problems, solutions and reasoning come from the checkpoint database through
:func:`scale_graph.runs.show_run`, the reference answer and grade from the results store.

Selection, in order:

1. results that failed, or whose checkpoints are missing, are dropped;
2. incomplete traces (no sub-problem, or one never solved) are dropped;
3. ``correct_only``: traces whose answer is not equivalent to the reference are dropped (the
   paper's Setting 2 filter) — among them every trace without a final answer, which is kept
   otherwise (rendered ending "No final answer was reached.", counted as ``unanswered``) —
   and so are ungraded ones (the grader could not decide), counted as ``ungraded``: an export
   never fails on them;
4. ``dedup``: per problem, a response identical to an earlier one up to whitespace is dropped;
5. ``max_per_problem``: per problem, the best N are kept — correct before wrong, then shorter
   responses (characters), then lower sample numbers.

The file is written next to its final name, checked with :mod:`scale_graph.traces.validate`
and only then moved into place; statistics go to ``<stem>.stats.json`` beside it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Iterable, Sequence

from scale_graph.evaluation import grading
from scale_graph.evaluation.methods import thread_id
from scale_graph.evaluation.store import ResultsStore, Run
from scale_graph.graph import build_graph
from scale_graph.parsing import last_boxed
from scale_graph.persistence import DatabaseError, db_path, open_async
from scale_graph.errors import InputError, UnknownRun
from scale_graph.runs import show_run
from scale_graph.traces.render import FORMATS, Trace, normalised, record, render, trace_from_shown
from scale_graph.traces.validate import Issue, validate_file

#: Why traces were left out, in the order the filters apply.
DROP_REASONS = ("failed", "missing", "incomplete", "ungraded", "incorrect", "duplicate", "over_cap")


@dataclass(frozen=True)
class ExportOptions:
    format: str = "messages"
    correct_only: bool = False
    include_reasoning: bool = False
    max_per_problem: int | None = None
    dedup: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            raise InputError(f"--max-per-problem must be at least 1, got {self.max_per_problem}")


@dataclass(frozen=True)
class Kept:
    trace: Trace
    response: str  # the rendered assistant turn


@dataclass
class Selection:
    kept: list[Kept]
    dropped: Counter = field(default_factory=Counter)


@dataclass
class Exported:
    """What an export wrote and found."""

    path: Path
    stats_path: Path
    stats: dict[str, Any]
    issues: list[Issue]


def natural_key(text: str) -> tuple:
    """Sort key putting "2" before "10" (problem ids are often numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def select(traces: Iterable[Trace], options: ExportOptions, dropped: Counter | None = None) -> Selection:
    """The traces to write, rendered, in problem order then sample order (see the module doc)."""
    dropped = Counter(dropped or {})
    by_problem: dict[str, list[Kept]] = {}
    for trace in traces:
        if not trace.complete:
            dropped["incomplete"] += 1
            continue
        if options.correct_only and trace.ungraded:
            dropped["ungraded"] += 1
            continue
        if options.correct_only and not trace.correct:
            dropped["incorrect"] += 1
            continue
        by_problem.setdefault(trace.problem_id, []).append(
            Kept(trace, render(trace, include_reasoning=options.include_reasoning)))
    kept: list[Kept] = []
    for problem_id in sorted(by_problem, key=natural_key):
        ranked = sorted(by_problem[problem_id], key=lambda k: (not k.trace.correct, len(k.response), k.trace.sample))
        if options.dedup:
            seen: set[str] = set()
            unique = []
            for item in ranked:
                key = normalised(item.response)
                if key in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(key)
                unique.append(item)
            ranked = unique
        if options.max_per_problem is not None and len(ranked) > options.max_per_problem:
            dropped["over_cap"] += len(ranked) - options.max_per_problem
            ranked = ranked[: options.max_per_problem]
        kept += sorted(ranked, key=lambda k: k.trace.sample)
    return Selection(kept, dropped)


def statistics(selection: Selection, *, problems: int, traces: int, options: ExportOptions,
               run: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """The export's figures: counts, mean lengths, share of System 2 sub-problems, answer agreement."""
    kept = selection.kept
    subproblems = sum(len(k.trace.subproblems) for k in kept)
    # the response's final boxed answer; a trace without a final answer disagrees, whatever
    # intermediate result its last \boxed{} holds
    agreeing = sum(k.trace.answered and grading.grade(k.trace.gold, last_boxed(k.response)).correct for k in kept)
    return {
        "run": run,
        "file": str(path) if path else None,
        "options": asdict(options),
        "problems": problems,
        "problems_kept": len({k.trace.problem_id for k in kept}),
        "traces": traces,
        "kept": len(kept),
        "unanswered": sum(not k.trace.answered for k in kept),
        "dropped": {reason: selection.dropped.get(reason, 0) for reason in DROP_REASONS},
        "mean_completion_tokens": _mean(k.trace.completion_tokens for k in kept),
        "mean_solve_tokens": _mean(k.trace.solve_tokens for k in kept),
        "mean_assistant_chars": _mean(len(k.response) for k in kept),
        "mean_subproblems": _mean(len(k.trace.subproblems) for k in kept),
        "system2_share": round(sum(k.trace.hard for k in kept) / subproblems, 4) if subproblems else None,
        "answer_agreement": round(agreeing / len(kept), 4) if kept else None,
    }


def write(kept: Sequence[Kept], path: Path, fmt: str) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped)."""
    with path.open("w", encoding="utf-8") as handle:
        for item in kept:
            handle.write(json.dumps(record(item.trace.problem, item.response, fmt), ensure_ascii=False) + "\n")


async def load_traces(run: Run, checkpoint_db: Path) -> tuple[list[Trace], Counter]:
    """Every stored result of ``run`` with its checkpointed trace; counts of failed/missing ones."""
    dropped: Counter = Counter()
    traces: list[Trace] = []
    results = sorted(run.results, key=lambda r: (natural_key(r.problem_id), r.sample))
    if not any(r.error is None for r in results):
        dropped["failed"] = len(results)
        return traces, dropped
    if not checkpoint_db.is_file():
        raise DatabaseError(f"checkpoint database {checkpoint_db} does not exist (pass the --db that "
                            "`scale traces generate` used, or set SCALE_DB)")
    async with open_async(checkpoint_db) as (saver, store):
        graph = build_graph(saver, store)
        for result in results:
            if result.error is not None:
                dropped["failed"] += 1
                continue
            thread = thread_id(run.name, result.problem_id, result.sample)
            try:
                shown = await show_run(graph, store, thread)
            except UnknownRun:
                dropped["missing"] += 1
                continue
            traces.append(trace_from_shown(shown, problem_id=result.problem_id, sample=result.sample,
                                           gold=result.gold, correct=result.correct,
                                           completion_tokens=result.completion_tokens,
                                           ungraded=bool(result.ungraded)))
    return traces, dropped


def stats_path_for(path: Path) -> Path:
    """``traces.jsonl`` → ``traces.stats.json`` (beside it)."""
    return path.with_name(path.stem + ".stats.json") if path.suffix else path.with_name(path.name + ".stats.json")


async def export(run_name: str, out: Path, options: ExportOptions, *, results_db: str | None = None,
                 checkpoint_db: str | os.PathLike | None = None) -> Exported:
    """Export ``run_name``'s traces to ``out`` (see the module doc); InputError/DatabaseError when unusable."""
    with ResultsStore(results_db, must_exist=True, run_db=checkpoint_db) as store:
        stored = store.runs()
    run = next((run for run in stored if run.name == run_name), None)
    if run is None:
        raise InputError(f"no run named {run_name!r} in {store.shown} (runs: "
                         f"{', '.join(r.name for r in stored) or 'none'}; create one with `scale traces generate`)")
    if run.method != "scale":
        raise InputError(f"run {run_name!r} used method {run.method!r}; traces come from SCALE runs only")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    traces, dropped = await load_traces(run, db_path(checkpoint_db))
    selection = select(traces, options, dropped)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        write(selection.kept, partial, options.format)
        references = [k.trace.gold for k in selection.kept] if options.correct_only else None
        issues = validate_file(partial, options.format, references)
        if not issues:
            os.replace(partial, out)
    except OSError as exc:
        raise InputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    stats = statistics(selection, problems=len({r.problem_id for r in run.results}), traces=len(run.results),
                       options=options, run=run.name, path=out)
    stats_path = stats_path_for(out)
    if not issues:
        try:
            stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {stats_path}: {exc.strerror or exc}") from None
    return Exported(out, stats_path, stats, issues)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(fmean(values), 1) if values else None
