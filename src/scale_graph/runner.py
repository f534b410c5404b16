"""Start and resume checkpointed SCALE runs: the one code path behind the CLI and evaluations."""

from __future__ import annotations

import re
from typing import Any, Callable

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command

from scale_graph.context import Context
from scale_graph.journal import RUNS_NAMESPACE, asave_run
from scale_graph.settings import resume_context

EventHandler = Callable[[dict[str, Any]], None]


class InputError(ValueError):
    """Bad input from the user; one line."""


class UnknownRun(LookupError):
    """No run with this id in the database."""


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
                on_event: EventHandler | None = None) -> dict[str, Any]:
    """Run a new problem as thread ``thread_id``; its parameters are saved first so any crash is resumable."""
    problem = validate_problem(problem, context)
    validate_thread_id(thread_id)
    if (await graph.aget_state(config_for(thread_id))).values:
        raise InputError(f"run {thread_id} already exists; resume it with `scale runs resume {thread_id}`")
    await asave_run(store, thread_id, problem, context)
    return await _drive(graph, {"problem": problem}, thread_id, context, on_event)


async def resume(graph: CompiledStateGraph, store: BaseStore, thread_id: str,
                 on_event: EventHandler | None = None, review: Any = None, **overrides: Any) -> dict[str, Any]:
    """Continue run ``thread_id`` after its last finished node, with its saved parameters.

    A run paused for review continues with ``review`` ("accept" or edited sub-problems).
    """
    record = await store.aget(RUNS_NAMESPACE, thread_id)
    snapshot = await graph.aget_state(config_for(thread_id))
    if record is None and not snapshot.values:
        raise UnknownRun(f"no run {thread_id!r} in this database (see `scale runs list`)")
    context = resume_context(record.value["params"] if record else {}, overrides)
    if snapshot.values and not snapshot.next:
        return snapshot.values  # already finished
    inputs: Any = None if snapshot.values else {"problem": record.value["problem"]}
    if snapshot.interrupts:
        if review is None:
            raise InputError(f"run {thread_id} is waiting for review of its decomposition: "
                             f"resume with --accept or --subproblems-file FILE")
        inputs = Command(resume=review)
    return await _drive(graph, inputs, thread_id, context, on_event)


async def _drive(graph: CompiledStateGraph, inputs: dict | None, thread_id: str, context: Context,
                 on_event: EventHandler | None) -> dict[str, Any]:
    config = config_for(thread_id)
    async for event in graph.astream(inputs, config, context=context, stream_mode="custom", durability="sync"):
        if on_event is not None:
            on_event(event)
    return (await graph.aget_state(config)).values
