"""The JSON behind each page of `scale ui`, built from the CLI's own read paths so both agree.

A run is :func:`scale_graph.runs.show_run` (what ``scale runs show --json`` prints) plus its forks
and the equivalent CLI commands; a diff is :func:`scale_graph.runs.diff_runs` (``scale runs diff``);
an evaluation's tables are those of ``scale report`` (:mod:`scale_graph.evaluation.report`), with
each run's metrics for the charts; calibration is ``scale calibrate``'s ``calibration.json``.
Nothing here writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import sqlite3
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import StateSnapshot

from scale_graph.context import Context
from scale_graph.errors import InputError, UnknownRun
from scale_graph.evaluation import report
from scale_graph.evaluation.methods import thread_id as sample_thread_id
from scale_graph.evaluation.metrics import run_metrics
from scale_graph.journal import RUNS_NAMESPACE
from scale_graph.redact import MASK, redact
from scale_graph import leases
from scale_graph.runner import config_for, validate_thread_id
from scale_graph.runs import PAGE, diff_runs, show_run, status_of
from scale_graph.state import total_usage
from scale_graph.ui.catalog import SqliteCatalog, state_of

_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s\"']+:)[^@/\s\"']+@")
#: Forks of one run listed on its page; more are counted, not listed.
CHILDREN_MAX = 200


class NotFound(Exception):
    """A run, evaluation or page that does not exist (or an id that cannot name one): a 404."""


def masked(text: str) -> str:
    """``text`` with every API key, bearer token and URL password masked."""
    return redact(_PASSWORD_IN_URL.sub(lambda m: m.group(1) + MASK + "@", text))


def scrubbed(value: Any) -> str:
    """``value`` as JSON text, masked (:func:`masked`)."""
    return masked(json.dumps(value, ensure_ascii=False, default=str))


def checked_id(thread_id: str | None) -> str:
    """A thread id that can name a run, else NotFound (never a traceback)."""
    try:
        return validate_thread_id(thread_id or "")
    except InputError as exc:
        raise NotFound(str(exc)) from None


async def require_run(graph: CompiledStateGraph, store: BaseStore, thread_id: str | None) -> None:
    """NotFound unless ``thread_id`` names a run of this database (a record or a checkpoint)."""
    thread_id = checked_id(thread_id)
    if await store.aget(RUNS_NAMESPACE, thread_id) is None and \
            await graph.checkpointer.aget_tuple(config_for(thread_id)) is None:
        raise NotFound(f"no run {thread_id!r} in this database")


async def fill_rows(graph: CompiledStateGraph, rows: list[dict[str, Any]]) -> None:
    """Answer, sub-problems, tokens and status of each listed run from its state, as ``scale runs list``
    computes them (:func:`scale_graph.runs.list_runs`); only the rows of one page are asked."""
    held = await leases.current(leases.backend_for(graph.checkpointer))
    for row in rows:
        snapshot = await graph.aget_state(config_for(row["thread_id"]))
        values = snapshot.values or {}
        row.update(status=status_of(snapshot, held.get(row["thread_id"])), answer=values.get("answer"),
                   subproblems=values.get("solved", len(values.get("steps", []))),
                   tokens=total_usage(values.get("usage", {})).get("completion_tokens", 0))
        row["state"] = state_of(row["status"], bool(failure(snapshot)))


def failure(snapshot: StateSnapshot) -> str | None:
    """The error its last step ended with (a run that failed, resumable), else None."""
    return next((str(task.error) for task in snapshot.tasks if task.error is not None), None)


async def run_view(graph: CompiledStateGraph, store: BaseStore, thread_id: str, *, db: str | None,
                   catalog: SqliteCatalog | None) -> dict[str, Any]:
    """``scale runs show --json`` of one run, plus its state, forks, parameter origins and CLI commands."""
    thread_id = checked_id(thread_id)
    try:
        shown = await show_run(graph, store, thread_id)
    except UnknownRun as exc:
        raise NotFound(str(exc)) from None
    shown["error"] = failure(await graph.aget_state(config_for(thread_id)))
    shown["state"] = state_of(shown["status"], bool(shown["error"]))
    shown["children"] = await children(store, thread_id, catalog)
    shown["parameters"] = parameter_rows(shown.get("params") or {})
    shown["commands"] = commands(thread_id, db, shown)
    return shown


def parameter_rows(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stored parameter with its documented default and whether the run changed it."""
    defaults = {name: info.default for name, info in Context.model_fields.items()}
    return [{"name": name, "value": value, "default": defaults.get(name),
             "origin": "default" if name in defaults and defaults[name] == value else "set for this run"}
            for name, value in params.items()]


def commands(thread_id: str, db: str | None, shown: dict[str, Any]) -> dict[str, str]:
    """The CLI commands that do from a terminal what a person looking at this run may want next."""
    where = f" --db {shlex.quote(db)}" if db else ""
    run = shlex.quote(thread_id)
    found = {"show": f"scale runs show {run}{where}", "resume": f"scale runs resume {run}{where}",
             "fork": f"scale runs fork {run} --at 1 --system 2{where}"}
    parent = (shown.get("fork_of") or {}).get("thread_id")
    if parent:
        found["diff"] = f"scale runs diff {shlex.quote(parent)} {run}{where}"
    return found


async def children(store: BaseStore, thread_id: str, catalog: SqliteCatalog | None) -> list[dict[str, Any]]:
    """The forks made from run ``thread_id``: id, where they fork and what they change."""
    if catalog is not None:
        try:
            found = await asyncio.to_thread(catalog.children, thread_id)
            return [_child(key, origin) for key, origin in found][:CHILDREN_MAX]
        except sqlite3.Error:
            pass  # the store says it too, slower
    found, offset = [], 0
    while items := await store.asearch(RUNS_NAMESPACE, limit=PAGE, offset=offset):
        found += [_child(item.key, item.value.get("fork_of") or {}) for item in items
                  if (item.value.get("fork_of") or {}).get("thread_id") == thread_id]
        offset += len(items)
    return found[:CHILDREN_MAX]


def _child(key: str, origin: dict[str, Any]) -> dict[str, Any]:
    change = ("edited decomposition" if origin.get("subproblems") else
              f"sub-problem {origin.get('at')} on System {origin['system']}" if origin.get("system") else
              f"sub-problem {origin.get('at')} with difficulty {origin.get('difficulty')}")
    return {"thread_id": key, "at": origin.get("at"), "change": change}


async def diff_view(graph: CompiledStateGraph, store: BaseStore, first: str, second: str) -> dict[str, Any]:
    """``scale runs diff`` of two runs (NotFound when either does not exist)."""
    try:
        return await diff_runs(graph, store, checked_id(first), checked_id(second))
    except UnknownRun as exc:
        raise NotFound(str(exc)) from None


# ---- evaluations ---------------------------------------------------------------------------
def evaluations_view(runs: list[Any]) -> dict[str, Any]:
    """The tables and notes of ``scale report`` over ``runs`` (store.Run), and each run's metrics."""
    metrics = [run_metrics(run) for run in runs]
    generated = [report.generated_of(run) for run in runs]
    tables = [report.runs_table(metrics, [g[0] / g[2] if g else None for g in generated]),
              report.comparison_table(metrics), report.threshold_table(metrics)]
    return {"tables": [dataclasses.asdict(table) for table in tables if table.rows],
            "notes": report.notes(metrics),
            "metrics": [{**m.to_dict(), "label": label} for m, label in zip(metrics, report.labels(metrics))]}


def grid_view(run: Any) -> dict[str, Any]:
    """One evaluation run's problem × sample grid: each cell correct / wrong / ungraded / failed,
    with the checkpoint thread of a SCALE sample (its run page)."""
    samples = sorted({result.sample for result in run.results})
    problems: dict[str, dict[int, dict[str, Any]]] = {}
    for result in run.results:
        outcome = ("failed" if result.error is not None else "ungraded" if result.ungraded
                   else "correct" if result.correct else "wrong")
        problems.setdefault(result.problem_id, {})[result.sample] = {
            "outcome": outcome, "answer": result.answer, "gold": result.gold, "tokens": result.completion_tokens,
            "error": result.error,
            "thread_id": sample_thread_id(run.name, result.problem_id, result.sample) if run.method == "scale" else None}
    return {"name": run.name, "method": run.method, "dataset": run.dataset, "samples": samples,
            "metrics": run_metrics(run).to_dict(),
            "rows": [{"problem_id": problem, "cells": [cells.get(sample) for sample in samples]}
                     for problem, cells in problems.items()]}


def calibration_view(folder: Path) -> list[dict[str, Any]]:
    """Every ``calibration.json`` that ``scale calibrate`` wrote under ``folder`` (one per evaluation)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*/calibration.json"))[:50]:
        try:
            found.append({"folder": path.parent.name, **json.loads(path.read_text(encoding="utf-8"))})
        except (OSError, ValueError):
            found.append({"folder": path.parent.name, "error": f"{path} is not readable JSON"})
    return found
