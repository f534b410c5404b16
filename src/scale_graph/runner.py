"""Start and resume checkpointed SCALE runs: the one code path behind the CLI and evaluations."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, StateSnapshot

from scale_graph import leases
from scale_graph.context import Context
from scale_graph.errors import InputError, UnknownRun
from scale_graph.identity import latest_models, refusal
from scale_graph.journal import RUNS_NAMESPACE, asave_run
from scale_graph.nodes.review import reviewed_subproblems
from scale_graph.servers import identity
from scale_graph.setup import build

EventHandler = Callable[[dict[str, Any]], None]


class RunExists(InputError):
    """A new run was asked for under a thread id that already has one."""


class RunBusy(InputError):
    """Another live process works on this run (it holds the run's lease)."""

    def __init__(self, lease: leases.Lease, lost: bool = False, removed: bool = False) -> None:
        wait = max(0, round(lease.expires - time.time()))
        if removed:  # our own row vanished: nobody took it, so no taker is named
            message = (f"run {lease.thread_id} lost its lease and stopped: another process took the run over "
                       f"while this one stalled and has released it since, or the run was deleted")
        else:
            what = "was taken over by" if lost else "is being worked on by"
            message = (f"run {lease.thread_id} {what} {lease.holder_words()}; "
                       f"try again after it stops, or in {wait} s if that process died")
        super().__init__(message)
        self.lease = lease


def is_finished(snapshot: StateSnapshot) -> bool:
    """The run reached its end: ``finalize`` recorded it.

    Not "``next`` is empty": LangGraph leaves out of ``next`` a task whose writes were saved,
    so a run killed between those writes and the next checkpoint would look finished. Runs
    stored before the marker existed count as finished when no task is left at all.
    """
    values = snapshot.values or {}
    if "finished" in values:
        return bool(values["finished"])
    return bool(values) and "answer" in values and not snapshot.tasks


@dataclass(frozen=True)
class Position:
    """Where a stopped run picks up: the node(s) to run, and the sub-problem they work on."""

    nodes: tuple[str, ...]
    subproblem: int | None  # 1-based, when the node works on one sub-problem
    subproblems: int  # planned so far (0 before the decomposition is chosen)
    saved: bool = False  # ``nodes`` finished and their writes are saved; their checkpoint is not

    def describe(self) -> str:
        """E.g. "sub-problem 3 of 5 (assess)", "select" or "after solve_system2"."""
        nodes = ("after " if self.saved else "") + (", ".join(self.nodes) or "the end")
        if self.subproblem is None:
            return nodes
        return f"sub-problem {self.subproblem} of {self.subproblems} ({nodes})"


def position(snapshot: StateSnapshot) -> Position:
    """Where ``snapshot``'s run continues: its next nodes, or those whose writes are saved."""
    values = snapshot.values or {}
    saved = not snapshot.next and bool(snapshot.tasks)
    nodes = tuple(snapshot.next) or tuple(task.name for task in snapshot.tasks)
    steps, planned = len(values.get("steps", [])), len(values.get("subproblems", []) or [])
    subproblem = None
    if "assess" in nodes:  # assess adds the record of its sub-problem (to values, once saved)
        subproblem = steps if saved else steps + 1
    elif any(node.startswith("solve") for node in nodes):
        subproblem = steps
    return Position(nodes, subproblem, planned, saved)


def validate_problem(problem: str | None, context: Context) -> str:
    """The problem text, stripped; InputError when empty or too long."""
    text = (problem or "").strip()
    if not text:
        raise InputError("the problem is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the command line (surrogate escapes)
        raise InputError("the problem is not valid UTF-8 text") from None
    if len(text) > context.max_problem_chars:
        raise InputError(f"the problem has {len(text):,} characters, more than max_problem_chars "
                         f"({context.max_problem_chars:,}); raise it with SCALE_MAX_PROBLEM_CHARS if intended")
    return text


async def awaiting_review(graph: CompiledStateGraph, thread_id: str) -> list[str] | None:
    """The decomposition a paused run shows for review, or None when it is not paused."""
    snapshot = await graph.aget_state(config_for(thread_id))
    return snapshot.interrupts[0].value["subproblems"] if snapshot.interrupts else None


THREAD_ID = re.compile(r"[^\s.]{1,200}")


def validate_thread_id(thread_id: str) -> str:
    """A thread id usable in checkpoints and the store (no '.', which store namespaces refuse)."""
    if not THREAD_ID.fullmatch(thread_id):
        raise InputError(f"thread id {thread_id!r} must be 1-200 characters without '.' or spaces")
    return thread_id


def config_for(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def start(graph: CompiledStateGraph, store: BaseStore, problem: str, context: Context, thread_id: str,
                on_event: EventHandler | None = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a new problem as thread ``thread_id``; its parameters are saved first so any crash is resumable,
    with the model identity of its endpoints (``record`` adds or replaces fields of that run record)."""
    problem = validate_problem(problem, context)
    validate_thread_id(thread_id)
    await _refuse_existing(graph, thread_id)  # before the lease too: a refused start writes nothing
    async with holding(graph, thread_id):
        await _refuse_existing(graph, thread_id)  # again under the lease: two starts of one new id
        models = await asyncio.to_thread(identity.models, context)  # probed at the command's start: no request
        await asave_run(store, thread_id, problem, context, {"models": models, **(record or {})})
        return await _drive(graph, {"problem": problem}, thread_id, context, on_event)


async def _refuse_existing(graph: CompiledStateGraph, thread_id: str) -> None:
    if (await graph.aget_state(config_for(thread_id))).values:
        raise RunExists(f"run {thread_id} already exists; resume it with `scale runs resume {thread_id}`")


async def resume(graph: CompiledStateGraph, store: BaseStore, thread_id: str,
                 on_event: EventHandler | None = None, review: Any = None, allow_model_change: bool = False,
                 **overrides: Any) -> dict[str, Any]:
    """Continue run ``thread_id`` after its last finished node, with its saved parameters.

    Refused (InputError) when an endpoint now serves another model than the run ran on, unless
    ``allow_model_change``: then the change is recorded in the run record (``model_changes``).

    A run paused for review continues with ``review`` ("accept" or edited sub-problems).
    ``on_event`` first gets ``{"event": "resuming", "at": "sub-problem 3 of 5 (assess)", ...}``
    (see :class:`Position`) when the run is not finished. :class:`RunBusy` when another live
    process works on the run.
    """
    record = await store.aget(RUNS_NAMESPACE, thread_id)
    snapshot = await graph.aget_state(config_for(thread_id))
    if record is None and not snapshot.values:
        raise UnknownRun(f"no run {thread_id!r} in this database (see `scale runs list`)")
    context = build(saved=record.value["params"] if record else {}, request=overrides).context
    if is_finished(snapshot) and not snapshot.tasks:
        return snapshot.values  # finished and fully checkpointed: nothing to do, no lease needed
    async with holding(graph, thread_id):
        snapshot = await graph.aget_state(config_for(thread_id))  # another worker may have moved it on
        if is_finished(snapshot) and not snapshot.tasks:
            return snapshot.values
        if record is not None:
            await _check_models(store, thread_id, record.value, context, allow_model_change)
        inputs: Any = None if snapshot.values else {"problem": record.value["problem"]}
        if snapshot.interrupts:
            if review is None:
                raise InputError(f"run {thread_id} is waiting for review of its decomposition: "
                                 f"resume with --accept or --subproblems-file FILE")
            # checked before it is stored: LangGraph keeps a resume value for the interrupt, so a
            # bad one would fail every later resume of the run, --accept included
            try:
                reviewed_subproblems(review, context)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            inputs = Command(resume=review)
        if on_event is not None and snapshot.values:
            at = position(snapshot)
            on_event({"event": "resuming", "at": at.describe(), "nodes": list(at.nodes),
                      "subproblem": at.subproblem, "subproblems": at.subproblems, "time": time.time()})
        # None continues after the last checkpoint: LangGraph first applies writes saved there
        # by tasks that finished before a crash, so no finished node runs again
        return await _drive(graph, inputs, thread_id, context, on_event)


async def _check_models(store: BaseStore, thread_id: str, record: dict[str, Any], context: Context,
                        allow: bool) -> None:
    """Refuse to continue a run on another model than it ran on, unless ``allow`` (then recorded)."""
    now = await asyncio.to_thread(identity.models, context)
    found = identity.model_differences(latest_models(record), now)
    if not found:
        return
    if not allow:
        raise InputError(refusal(f"run {thread_id}", found, "its endpoint now serves another model; resume with "
                                 "--allow-model-change to continue it on the new one (recorded in the run)",
                                 verb="was made with"))
    changes = [*(record.get("model_changes") or []), {"time": time.time(), "models": now}]
    await store.aput(RUNS_NAMESPACE, thread_id, {**record, "model_changes": changes}, index=False)


@asynccontextmanager
async def holding(graph: CompiledStateGraph, thread_id: str) -> AsyncIterator[leases.Lease]:
    """This process's lease on ``thread_id`` for the body; :class:`RunBusy` when another live one holds it."""
    try:
        async with leases.held(leases.backend_for(graph.checkpointer), thread_id) as lease:
            yield lease
    except leases.LeaseHeld as exc:
        raise RunBusy(exc.lease, exc.lost, exc.removed) from None


async def _drive(graph: CompiledStateGraph, inputs: dict | None, thread_id: str, context: Context,
                 on_event: EventHandler | None) -> dict[str, Any]:
    config = config_for(thread_id)
    async for event in graph.astream(inputs, config, context=context, stream_mode="custom", durability="sync"):
        if on_event is not None:
            on_event(event)
    return (await graph.aget_state(config)).values
