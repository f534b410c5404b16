"""Inspecting stored runs: list, show (every step, from the checkpoints), delete."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import StateSnapshot

from scale_graph import leases
from scale_graph.history import solution_texts
from scale_graph.journal import RUNS_NAMESPACE, calls_namespace
from scale_graph.runner import RunBusy, UnknownRun, config_for, is_finished, position
from scale_graph.servers.chat import ChatReply
from scale_graph.state import total_usage

PAGE = 1000


def status_of(snapshot: StateSnapshot, lease: leases.Lease | None = None) -> str:
    """"done", "running (pid N)" while a live process holds the run, else where it stopped."""
    if is_finished(snapshot):
        return "done"
    if lease is not None and lease.live():
        return lease.describe()
    if not snapshot.values:
        return "not started"
    at = position(snapshot)
    return ("stopped after " if at.saved else "stopped before ") + ", ".join(at.nodes)


def summary(values: dict[str, Any], thread_id: str, status: str = "done") -> dict[str, Any]:
    """The JSON a user reads: answer, per-sub-problem rows and total usage."""
    usage = values.get("usage", {})
    return {
        "thread_id": thread_id,
        "status": status,
        "problem": values.get("problem"),
        "answer": values.get("answer"),
        "subproblems": [
            {"index": s["index"], "text": s.get("text"), "difficulty": s.get("difficulty"), "system": s.get("system"),
             "result": s.get("result"), "prompt_tokens": s.get("prompt_tokens", 0),
             "completion_tokens": s.get("completion_tokens", 0), "reasoning_tokens": s.get("reasoning_tokens", 0),
             "assess_tokens": s.get("assess_tokens", 0), "forced_answer": s.get("forced_answer", False),
             "forced_system": s.get("forced_system"), "assessed_difficulty": s.get("assessed_difficulty"),
             "latency_s": s.get("latency_s"), "warnings": s.get("warnings", []),
             **{key: s[key] for key in ("allowance", "routed_by_budget") if key in s}}
            for s in values.get("steps", [])],
        "planned_subproblems": values.get("subproblems", []),
        "selection": values.get("selection"),
        "candidates": values.get("candidates", []),
        "usage": {"total": total_usage(usage), "by_stage": usage},
        "warnings": values.get("warnings", []),
        **({"budget_reached": True} if values.get("budget_reached") else {}),
    }


async def list_runs(graph: CompiledStateGraph, store: BaseStore) -> list[dict[str, Any]]:
    """Every run in the database, newest first."""
    items = await store.asearch(RUNS_NAMESPACE, limit=PAGE * 100)
    held = await leases.current(leases.backend_for(graph.checkpointer))
    rows = []
    for item in items:
        snapshot = await graph.aget_state(config_for(item.key))
        values = snapshot.values or {}
        rows.append({"thread_id": item.key, "created": item.value.get("created"),
                     "status": status_of(snapshot, held.get(item.key)), "problem": item.value.get("problem", ""),
                     "answer": values.get("answer"), "subproblems": values.get("solved", len(values.get("steps", []))),
                     "tokens": total_usage(values.get("usage", {})).get("completion_tokens", 0),
                     "fork_of": (item.value.get("fork_of") or {}).get("thread_id")})
    return sorted(rows, key=lambda r: r["created"] or 0, reverse=True)


async def show_run(graph: CompiledStateGraph, store: BaseStore, thread_id: str, *, texts: bool = True) -> dict[str, Any]:
    """Summary, every checkpointed step, and (``texts``) each sub-problem's full solution and reasoning."""
    config = config_for(thread_id)
    snapshot = await graph.aget_state(config)
    record = await store.aget(RUNS_NAMESPACE, thread_id)
    if not snapshot.values and record is None:
        raise UnknownRun(f"no run {thread_id!r} in this database (see `scale runs list`)")
    values = snapshot.values or {"problem": record.value.get("problem") if record else None}
    lease = (await leases.current(leases.backend_for(graph.checkpointer))).get(thread_id)
    shown = summary(values, thread_id, status_of(snapshot, lease))
    shown["params"] = record.value.get("params") if record else None
    shown["fork_of"] = record.value.get("fork_of") if record else None
    shown["models"] = record.value.get("models") if record else None  # what it started on (servers/identity.py)
    shown["model_changes"] = record.value.get("model_changes", []) if record else []  # resumes on another model
    shown["evaluation"] = record.value.get("evaluation") if record else None
    shown["calls"] = await journal_calls(store, thread_id)
    shown["generated_tokens"] = sum(c["completion_tokens"] for c in shown["calls"] if not c["reused"])
    shown["checkpoints"] = [
        {"step": s.metadata.get("step"), "source": s.metadata.get("source"), "next": list(s.next),
         "created_at": s.created_at, "checkpoint_id": s.config["configurable"].get("checkpoint_id")}
        for s in reversed([s async for s in graph.aget_state_history(config)])]
    if texts:
        namespace = calls_namespace(thread_id)
        for row, step in zip(shown["subproblems"], values.get("steps", [])):
            replies = [ChatReply.from_dict(item.value) for key in step.get("call_keys", [])
                       if (item := await store.aget(namespace, key)) is not None]
            row["solution"], row["reasoning"] = solution_texts(replies)
            row["reused"] = bool(replies) and all(reply.reused for reply in replies)
    return shown


async def journal_calls(store: BaseStore, thread_id: str) -> list[dict[str, Any]]:
    """Every journalled call of a run: key, completion tokens, and ``reused`` — taken from another
    run's identical call (:mod:`scale_graph.reuse`) or from the run it was forked from, not generated for it."""
    namespace, calls, offset = calls_namespace(thread_id), [], 0
    while items := await store.asearch(namespace, limit=PAGE, offset=offset):
        calls += [(item.created_at, {"key": item.key, "completion_tokens": item.value.get("completion_tokens", 0),
                                     "reused": bool(item.value.get("reused"))}) for item in items]
        offset += len(items)
    return [call for _, call in sorted(calls, key=lambda pair: pair[0])]


async def delete_run(checkpointer: BaseCheckpointSaver, store: BaseStore, thread_id: str) -> int:
    """Remove a run's checkpoints, call journal and record; returns the journal entries removed.

    Under the run's lease: a run a live worker holds is refused (:class:`RunBusy`) — deleted under
    it, the worker would go on writing checkpoints of a run that no longer exists — and no worker
    can start on it while it is being deleted.
    """
    record = await store.aget(RUNS_NAMESPACE, thread_id)
    has_checkpoint = await checkpointer.aget_tuple(config_for(thread_id)) is not None
    if record is None and not has_checkpoint:
        raise UnknownRun(f"no run {thread_id!r} in this database (see `scale runs list`)")
    try:
        async with leases.held(leases.backend_for(checkpointer), thread_id):
            return await _delete_held(checkpointer, store, thread_id)
    except leases.LeaseHeld as exc:
        raise RunBusy(exc.lease, exc.lost, exc.removed) from None


async def _delete_held(checkpointer: BaseCheckpointSaver, store: BaseStore, thread_id: str) -> int:
    namespace = calls_namespace(thread_id)
    removed = 0
    while items := await store.asearch(namespace, limit=PAGE):
        for item in items:
            await store.adelete(namespace, item.key)
            removed += 1
    await store.adelete(RUNS_NAMESPACE, thread_id)
    await checkpointer.adelete_thread(thread_id)
    return removed


#: What `runs diff` compares per sub-problem; the first index where any differs is the divergence.
DIFF_FIELDS = ("text", "difficulty", "system", "result", "completion_tokens")


async def diff_runs(graph: CompiledStateGraph, store: BaseStore, first: str, second: str) -> dict[str, Any]:
    """Where runs ``first`` and ``second`` diverge: per sub-problem the fields of :data:`DIFF_FIELDS`
    side by side, the first sub-problem (1-based) where they differ, answers and total tokens."""
    a = await show_run(graph, store, first, texts=False)
    b = await show_run(graph, store, second, texts=False)
    rows, divergence = [], None
    for index in range(max(len(a["subproblems"]), len(b["subproblems"]))):
        left, right = (rows_of[index] if index < len(rows_of) else None
                       for rows_of in (a["subproblems"], b["subproblems"]))
        differs = [name for name in DIFF_FIELDS if (left or {}).get(name) != (right or {}).get(name)]
        if differs and divergence is None:
            divergence = index + 1
        rows.append({"index": index + 1, "differs": differs,
                     "a": {name: left.get(name) for name in DIFF_FIELDS} if left else None,
                     "b": {name: right.get(name) for name in DIFF_FIELDS} if right else None})
    tokens = [run["usage"]["total"].get("completion_tokens", 0) for run in (a, b)]
    return {"a": first, "b": second, "same_problem": a["problem"] == b["problem"],
            "first_divergence": divergence, "same_decomposition": a["planned_subproblems"] == b["planned_subproblems"],
            "subproblems": rows, "answer": {"a": a["answer"], "b": b["answer"]},
            "completion_tokens": {"a": tokens[0], "b": tokens[1]},
            "status": {"a": a["status"], "b": b["status"]}, "fork_of": {"a": a["fork_of"], "b": b["fork_of"]}}
