"""`scale runs list` without LangGraph: the run database read with plain SQL, so it answers at once.

Importing LangGraph costs seconds; listing needs only a few values per run. They are read from
the tables the SQLite saver and store keep: the run records (store, JSON), the channels
``finished``/``answer``/``solved`` as the nodes wrote them (``writes``, msgpack scalars), the
token usage of each run's latest checkpoint (what ``runs show`` counts: a fork's includes what it
inherited from its parent), the call journal's solved sub-problems (store, JSON) and the leases. That answers for runs that are done, running or not started;
when any run stopped half-way (only LangGraph can say before which node), or the database does
not look exactly as expected (another layout, an older run without the ``finished`` channel, a
value that is not a plain scalar), :func:`quick_list` returns None and the caller takes the full
path (:func:`scale_graph.runs.list_runs`), which asks LangGraph.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from scale_graph.database import SCHEMA_VERSION
from scale_graph.leases import Lease

_WRITES = ("SELECT thread_id, channel, type, value FROM writes WHERE checkpoint_ns = '' AND channel IN "
           "('finished', 'answer', 'solved') ORDER BY thread_id, checkpoint_id, idx")
_LATEST = ("SELECT thread_id, type, checkpoint FROM checkpoints AS c WHERE checkpoint_ns = '' AND checkpoint_id = "
           "(SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id = c.thread_id AND checkpoint_ns = '')")
_SOLVED = ("SELECT prefix, "
           "COUNT(DISTINCT CASE WHEN key LIKE 'solve/%' THEN substr(key, 7, instr(substr(key, 7), '/') - 1) END) "
           "FROM store WHERE prefix LIKE 'scale.%.calls' GROUP BY prefix")


class _NotPlain(Exception):
    """A stored value this reader does not decode: leave it to LangGraph."""


def quick_list(path: Path) -> list[dict[str, Any]] | None:
    """Every run in the SQLite database at ``path``, newest first, or None when only the full path
    can say — including every database the full path refuses (read-only, foreign, other schema)."""
    if not os.access(path, os.W_OK):
        return None
    try:
        # read-write but query-only: the last connection to close tidies the WAL files away, as
        # every other command's connections do (a read-only one would leave them behind)
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            conn.execute("PRAGMA query_only = ON")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"store", "writes", "checkpoints", "scale_leases", "scale_meta"} <= tables:
                return None
            version = conn.execute("SELECT value FROM scale_meta WHERE key = 'schema_version'").fetchone()
            if version is None or version[0] != str(SCHEMA_VERSION):
                return None
            records = conn.execute("SELECT key, value FROM store WHERE prefix = 'scale.runs'").fetchall()
            channels: dict[str, dict[str, Any]] = {}
            for thread, channel, kind, value in conn.execute(_WRITES):
                channels.setdefault(thread, {})[channel] = _decoded(kind, value)
            solved_calls = {prefix[len("scale."):-len(".calls")]: solved for prefix, solved in conn.execute(_SOLVED)}
            tokens = {thread: _completion_tokens(kind, blob) for thread, kind, blob in conn.execute(_LATEST)}
            checkpointed = {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
            leases = {row[0]: Lease(*row) for row in
                      conn.execute("SELECT thread_id, holder, host, pid, expires FROM scale_leases")}
    except (sqlite3.Error, _NotPlain, TypeError, ValueError):
        return None
    rows = []
    now = time.time()
    for thread, value in records:
        record = json.loads(value)
        written = channels.get(thread, {})
        if written and "finished" not in written:
            return None  # written before runs recorded `finished`: LangGraph must judge
        lease = leases.get(thread)
        if written.get("finished"):
            status = "done"
        elif lease is not None and lease.live(now):
            status = lease.describe()
        elif written or thread in checkpointed:
            return None  # stopped: only LangGraph can say where (before which node, awaiting review)
        else:
            status = "not started"
        rows.append({"thread_id": thread, "created": record.get("created"), "status": status,
                     "problem": record.get("problem", ""), "answer": written.get("answer"),
                     "subproblems": written.get("solved", solved_calls.get(thread, 0)),
                     "tokens": tokens.get(thread, 0),
                     "fork_of": (record.get("fork_of") or {}).get("thread_id")})
    return sorted(rows, key=lambda row: row["created"] or 0, reverse=True)


def _decoded(kind: str | None, value: bytes | None) -> Any:
    if kind == "null":
        return None
    if kind != "msgpack" or value is None:
        raise _NotPlain(kind)
    import ormsgpack  # LangGraph's own encoder of checkpoint values; imports in milliseconds

    decoded = ormsgpack.unpackb(value)
    if not isinstance(decoded, (str, int, float, bool)) and decoded is not None:
        raise _NotPlain(type(decoded).__name__)
    return decoded


def _completion_tokens(kind: str | None, blob: bytes | None) -> int:
    """The completion tokens of a checkpoint's ``usage`` channel (per stage, summed), as LangGraph
    reads it: values that are not LangGraph's plain msgpack are left to LangGraph."""
    if kind != "msgpack" or blob is None:
        raise _NotPlain(kind)
    import ormsgpack

    # other channels may hold LangGraph's own types (msgpack extensions): only `usage` is read
    checkpoint = ormsgpack.unpackb(blob, ext_hook=lambda code, data: _NotPlain)
    usage = checkpoint.get("channel_values", {}).get("usage", {}) if isinstance(checkpoint, dict) else None
    if not isinstance(usage, dict) or not all(isinstance(stage, dict) for stage in usage.values()):
        raise _NotPlain("usage")
    counts = [stage.get("completion_tokens", 0) for stage in usage.values()]
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
        raise _NotPlain("usage")
    return sum(counts)
