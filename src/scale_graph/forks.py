"""Forks: a new run from a past checkpoint of another, with one choice changed (LangGraph time travel).

``fork(graph, store, parent, at=N, system=2)`` starts a run that is the parent up to sub-problem
N's routing and then solves sub-problem N on System 2 (or with difficulty ``D`` routed by the
parent's τ, or — with ``subproblems`` — with an edited decomposition from the selection on), and
continues normally: a new thread id, its own lease, resumable like any run.

**Where a fork starts.** Sub-problem forks start from the parent's checkpoint *right after
assess of sub-problem N* (next node ``solve_system1/2``, ``solved == N-1``): the parent's
difficulty d_N is kept (``assessed_difficulty`` when ``--difficulty`` replaces it) and nothing
before N's solve is computed again. Decomposition forks start from the checkpoint after
``select`` (next ``review`` or ``assess``) and apply the edit as the ``review`` node would.

**How.** LangGraph has no cross-thread fork, so the parent's state values at that checkpoint
are written to a fresh thread with ``aupdate_state(..., as_node=<the node that produced them>)``
— the same writers and edges run, so the fork's next node is what the graph says. The forced
route is recorded in the step (``forced_system``; :func:`scale_graph.nodes.route.route` honours
it). The parent's journal entries the fork reads (the solutions of sub-problems before N, the
selection) are copied into the fork's journal marked ``reused``, so the fork makes no call for
them and counts them as not generated for it; its Tok still counts them (what it costs alone).
The parent thread and checkpoint are recorded in the new checkpoint's metadata (Studio shows
them) and in the run record (``fork_of``).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore, GetOp, PutOp
from langgraph.types import StateSnapshot

from scale_graph import runner
from scale_graph.context import Context
from scale_graph.identity import latest_models
from scale_graph.journal import RUNS_NAMESPACE, calls_namespace, new_run_id
from scale_graph.nodes.review import reviewed_subproblems
from scale_graph.nodes.route import system_for
from scale_graph.runner import InputError, RunExists, UnknownRun, config_for, holding

SOLVE_NODES = ("solve_system1", "solve_system2")


@dataclass(frozen=True)
class ForkSpec:
    """What a fork changes: sub-problem ``at`` (1-based) forced to ``system`` or given ``difficulty``,
    or the decomposition replaced by ``subproblems``."""

    at: int | None = None
    system: Literal[1, 2] | None = None
    difficulty: float | None = None
    subproblems: list[str] | None = None

    def check(self) -> None:
        """InputError unless exactly one change is asked for, well-formed."""
        if self.subproblems is not None:
            if self.at is not None or self.system is not None or self.difficulty is not None:
                raise InputError("give either an edited list of sub-problems, or --at N with --system/--difficulty")
            if not any(text.strip() for text in self.subproblems):
                raise InputError("the edited list of sub-problems is empty")
            return
        if self.at is None or self.at < 1:
            raise InputError(f"--at must be a sub-problem number (1 or more), got {self.at}")
        if (self.system is None) == (self.difficulty is None):
            raise InputError("give exactly one of --system 1|2 and --difficulty D")
        if self.system is not None and self.system not in (1, 2):
            raise InputError(f"--system must be 1 or 2, got {self.system}")
        if self.difficulty is not None and not 0.0 <= self.difficulty <= 1.0:
            raise InputError(f"--difficulty must be within [0, 1], got {self.difficulty}")


def fork_thread_id(parent: str, spec: ForkSpec) -> str:
    """A stable thread id for ``spec`` applied to ``parent`` (so a re-run finds the fork it made):
    the parent's id shortened, the change, and a digest of both."""
    change = (f"{spec.at}s{spec.system}" if spec.system is not None
              else f"{spec.at}d{spec.difficulty:g}" if spec.difficulty is not None else "edit")
    digest = hashlib.sha256(repr((parent, asdict(spec))).encode()).hexdigest()[:10]
    readable = re.sub(r"[\s.]", "_", parent)[:150]
    return f"fork/{readable}/{change}#{digest}".replace(".", "_")


async def fork(graph: CompiledStateGraph, store: BaseStore, thread_id: str, *, at: int | None = None,
               system: Literal[1, 2] | None = None, difficulty: float | None = None,
               subproblems: list[str] | None = None, new_thread_id: str | None = None) -> str:
    """Create a fork of run ``thread_id`` (see the module doc) and return its thread id; it has not
    run yet — continue it with :func:`scale_graph.runner.resume` (``scale runs resume``).

    With ``new_thread_id`` of this very fork (same parent, same change) that exists already, that
    fork is returned as it is; :class:`~scale_graph.runner.RunExists` when it names any other run.
    """
    spec = ForkSpec(at, system, difficulty, [s.strip() for s in subproblems if s.strip()] if subproblems else subproblems)
    spec.check()
    new_id = runner.validate_thread_id(new_thread_id or new_run_id())
    if new_id == thread_id:
        raise InputError("a fork needs a thread id of its own")
    record = await store.aget(RUNS_NAMESPACE, thread_id)
    if record is None:
        raise UnknownRun(f"no run {thread_id!r} in this database (see `scale runs list`)")
    async with holding(graph, new_id):
        existing = await store.aget(RUNS_NAMESPACE, new_id)
        has_state = bool((await graph.aget_state(config_for(new_id))).values)
        if existing is not None or has_state:
            if new_thread_id is None:
                raise InputError(f"run {new_id} already exists")
            # only this very fork may be found again: another run, or a fork of something else, is refused
            if not _is_fork_of(existing.value if existing else None, thread_id, spec):
                raise RunExists(f"run {new_id} already exists and is not this fork of run {thread_id}; "
                                f"give the fork a thread id of its own")
            if has_state:
                return new_id
        base = await _base_checkpoint(graph, thread_id, spec)
        values, as_node = _forked_values(base.values, spec, Context.from_dict(record.value.get("params", {})), new_id)
        await _copy_journal(store, thread_id, new_id, _needed_keys(base.values, spec))
        origin = {"thread_id": thread_id, "checkpoint_id": base.config["configurable"]["checkpoint_id"],
                  **{k: v for k, v in asdict(spec).items() if v is not None}}
        # the record first: a fork whose checkpoint is missing (a crash here) is made again by a re-run
        await store.aput(RUNS_NAMESPACE, new_id, {"problem": record.value.get("problem", ""),
                                                  "params": record.value.get("params", {}),
                                                  "created": time.time(), "fork_of": origin,
                                                  # its parent's models: a resume on another one is refused
                                                  "models": latest_models(record.value)}, index=False)
        # checkpoint metadata keeps scalars only: one flat key per field
        config = {**config_for(new_id), "metadata": {f"fork_of_{k}": v for k, v in origin.items() if k != "subproblems"}}
        await graph.aupdate_state(config, values, as_node=as_node)
    return new_id


def _is_fork_of(record: dict[str, Any] | None, parent: str, spec: ForkSpec) -> bool:
    """``record`` (a run record) is the fork ``spec`` of ``parent`` (its checkpoint aside)."""
    origin = dict((record or {}).get("fork_of") or {})
    origin.pop("checkpoint_id", None)
    return origin == {"thread_id": parent, **{k: v for k, v in asdict(spec).items() if v is not None}}


async def _base_checkpoint(graph: CompiledStateGraph, thread_id: str, spec: ForkSpec) -> StateSnapshot:
    """The newest checkpoint of ``thread_id`` a fork of ``spec`` starts from (InputError if none)."""
    async for snapshot in graph.aget_state_history(config_for(thread_id)):
        values = snapshot.values or {}
        if spec.subproblems is not None:
            if {"assess", "review"} & set(snapshot.next) and not values.get("steps"):
                return snapshot
        elif set(SOLVE_NODES) & set(snapshot.next) and values.get("solved", 0) == spec.at - 1:
            return snapshot
    if spec.subproblems is not None:
        raise InputError(f"run {thread_id} has not chosen its decomposition yet: nothing to fork from")
    raise InputError(f"run {thread_id} has no sub-problem {spec.at} assessed: nothing to fork from "
                     f"(see `scale runs show {thread_id}`)")


def _forked_values(values: dict[str, Any], spec: ForkSpec, context: Context,
                   new_id: str) -> tuple[dict[str, Any], str]:
    """The fork's first state and the node it is written as."""
    forked = {**values, "run_id": new_id, "finished": False, "answer": None}
    if spec.subproblems is not None:
        try:  # the limits a review's edit has
            forked["subproblems"] = reviewed_subproblems(spec.subproblems, context)
        except ValueError:
            raise InputError(f"the edited decomposition must have 1 to {context.max_subproblems} sub-problems, "
                             f"got {len(spec.subproblems)}") from None
        forked["selection"] = {**values.get("selection", {}), "method": "human"}
        return forked, "review"  # as the review node would: its edge goes on to assess
    steps = [dict(step) for step in values["steps"]]
    step = steps[spec.at - 1]
    if spec.difficulty is not None:
        step["assessed_difficulty"] = step["difficulty"]
        step["difficulty"] = spec.difficulty
        forced = system_for(spec.difficulty, context.threshold)
    else:
        forced = spec.system
    step["forced_system"] = forced
    forked["steps"] = steps
    return forked, "assess"


def _needed_keys(values: dict[str, Any], spec: ForkSpec) -> list[str]:
    """Journal keys the fork reads: the selection's calls and the solve calls of the sub-problems
    before the fork point (those of sub-problem N too: a fork that keeps N's system reuses them)."""
    keys = list((values.get("selection") or {}).get("call_keys", []))
    if spec.at is not None:
        for step in values.get("steps", [])[: spec.at]:
            keys += step.get("call_keys", [])
    return list(dict.fromkeys(keys))


async def _copy_journal(store: BaseStore, parent: str, child: str, keys: list[str]) -> None:
    """Copy the parent's journal entries ``keys`` to the child's journal, marked ``reused``."""
    if not keys:
        return
    source, target = calls_namespace(parent), calls_namespace(child)
    items = await store.abatch([GetOp(source, key) for key in keys])
    puts = [PutOp(target, item.key, {**item.value, "reused": True}, index=False) for item in items if item is not None]
    if puts:
        await store.abatch(puts)


async def fork_and_run(graph: CompiledStateGraph, store: BaseStore, thread_id: str, *,
                       on_event: runner.EventHandler | None = None, **change: Any) -> tuple[str, dict[str, Any]]:
    """:func:`fork`, then run the fork to its end: (fork's thread id, its final values)."""
    new_id = await fork(graph, store, thread_id, **change)
    return new_id, await runner.resume(graph, store, new_id, on_event=on_event)
