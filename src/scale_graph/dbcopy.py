"""``scale db copy SRC DST``: runs and results from SQLite files to a PostgreSQL server.

For a user who started on one machine and grows: every run's checkpoints (its whole history,
so ``runs show`` lists the same steps and a stopped run resumes where it stopped), its store
items (call journal, run record, shared call cache) and the evaluation results. Leases are not
copied (a copy is taken from a database nobody works on). Copying again is safe: runs already
in the destination are skipped, and store items are upserts of the same values.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.store.base import PutOp

from scale_graph.persistence import DatabaseError, db_path, open_async
from scale_graph.postgres import PostgresUrl

PAGE = 500


@dataclass
class Copied:
    runs: int = 0
    checkpoints: int = 0
    items: int = 0
    skipped_runs: list[str] = field(default_factory=list)
    results: int = 0
    skipped_results: list[str] = field(default_factory=list)


def destination(value: str) -> PostgresUrl:
    target = db_path(value)
    if not isinstance(target, PostgresUrl):
        raise DatabaseError(f"destination {value} is not a PostgreSQL URL (postgresql://user:password@host:port/db)")
    return target


def source(value: str | Path) -> Path:
    origin = db_path(value)
    if isinstance(origin, PostgresUrl):
        raise DatabaseError(f"source {origin} is not a SQLite file (scale db copy moves runs from SQLite to PostgreSQL)")
    if not origin.is_file():
        raise DatabaseError(f"source database {origin} does not exist")
    return origin


async def copy_runs(origin: Path, target: PostgresUrl, copied: Copied) -> None:
    """Checkpoints (oldest first, with their pending writes) and every store item."""
    async with open_async(origin) as (src_saver, src_store), open_async(target) as (dst_saver, dst_store):
        by_thread: dict[str, list[Any]] = defaultdict(list)
        async for saved in src_saver.alist(None):
            by_thread[saved.config["configurable"]["thread_id"]].append(saved)
        for thread, history in by_thread.items():
            if await dst_saver.aget_tuple({"configurable": {"thread_id": thread}}) is not None:
                copied.skipped_runs.append(thread)
                continue
            for saved in sorted(history, key=lambda t: t.checkpoint["id"]):  # ids are time-ordered (uuid6)
                await _copy_checkpoint(dst_saver, saved)
                copied.checkpoints += 1
            copied.runs += 1
        for namespace in await src_store.alist_namespaces(limit=10**9):
            offset = 0
            while items := await src_store.asearch(namespace, limit=PAGE, offset=offset):
                # exact namespace only: asearch takes a prefix, and deeper namespaces come on their own turn
                ops = [PutOp(item.namespace, item.key, item.value, index=False)
                       for item in items if item.namespace == namespace]
                await dst_store.abatch(ops)
                copied.items += len(ops)
                offset += len(items)


async def _copy_checkpoint(saver: Any, saved: Any) -> None:
    configurable = saved.config["configurable"]
    parent = (saved.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    config = {"configurable": {"thread_id": configurable["thread_id"],
                               "checkpoint_ns": configurable.get("checkpoint_ns", ""),
                               **({"checkpoint_id": parent} if parent else {})}}
    stored = await saver.aput(config, saved.checkpoint, saved.metadata, saved.checkpoint["channel_versions"])
    writes: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for task_id, channel, value in saved.pending_writes or []:
        writes[task_id].append((channel, value))
    for task_id, task_writes in writes.items():
        await saver.aput_writes(stored, task_writes, task_id)


def copy_results(results_from: str, results_to: str, copied: Copied) -> None:
    from scale_graph.evaluation.store import ResultsStore

    with ResultsStore(results_from, must_exist=True) as src, ResultsStore(results_to) as dst:
        for run in src.runs():
            if dst.import_run(run):
                copied.results += len(run.results)
            else:
                copied.skipped_results.append(run.name)


async def copy(src: str | Path, dst: str, results_from: str | None, results_to: str | None) -> Copied:
    """Runs of SQLite file ``src`` to PostgreSQL ``dst``; results too when ``results_from`` is given."""
    origin, target = source(src), destination(dst)
    copied = Copied()
    await copy_runs(origin, target, copied)
    if results_from is not None:
        copy_results(results_from, results_to or target.url, copied)
    return copied
