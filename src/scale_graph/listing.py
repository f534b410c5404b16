"""`scale runs list` without LangGraph: the run database read with plain SQL, so it answers at once.

Importing LangGraph costs seconds; listing needs only a few values per run. They are read from
the tables the SQLite saver and store keep: the run records (store, JSON), the channels
``finished``/``answer``/``solved`` as the nodes wrote them (``writes``, msgpack scalars), the
call journal's token counts (store, JSON) and the leases. When a database does not look
exactly like that (another layout, an older run without the ``finished`` channel, a value
that is not a plain scalar), :func:`quick_list` returns None and the caller takes the full path
(:func:`scale_graph.runs.list_runs`), which asks LangGraph.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from scale_graph.leases import Lease

_CHANNELS = ("finished", "answer", "solved")
_WRITES = ("SELECT thread_id, channel, type, value FROM writes WHERE checkpoint_ns = '' AND channel IN "
           "('finished', 'answer', 'solved') ORDER BY thread_id, checkpoint_id, idx")
_TOKENS = ("SELECT prefix, SUM(json_extract(value, '$.completion_tokens')), "
           "COUNT(DISTINCT CASE WHEN key LIKE 'solve/%' THEN substr(key, 7, instr(substr(key, 7), '/') - 1) END) "
           "FROM store WHERE prefix LIKE 'scale.%.calls' GROUP BY prefix")


class _NotPlain(Exception):
    """A stored value this reader does not decode: leave it to LangGraph."""


def quick_list(path: Path) -> list[dict[str, Any]] | None:
    """Every run in the SQLite database at ``path``, newest first, or None when only the full path can say."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"store", "writes", "scale_leases"} <= tables:
                return None
            records = conn.execute("SELECT key, value FROM store WHERE prefix = 'scale.runs'").fetchall()
            channels: dict[str, dict[str, Any]] = {}
            for thread, channel, kind, value in conn.execute(_WRITES):
                channels.setdefault(thread, {})[channel] = _decoded(kind, value)
            tokens = {prefix[len("scale."):-len(".calls")]: (total or 0, solved)
                      for prefix, total, solved in conn.execute(_TOKENS)}
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
        else:
            status = "stopped" if written else "not started"
        total, solved = tokens.get(thread, (0, 0))
        rows.append({"thread_id": thread, "created": record.get("created"), "status": status,
                     "problem": record.get("problem", ""), "answer": written.get("answer"),
                     "subproblems": written.get("solved", solved), "tokens": total})
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
