"""The run list of `scale ui`: filtered, sorted and paginated in SQL, so 10,000 runs answer at once.

A SQLite run database is filtered, counted, sorted and cut into pages with plain SQL over the
tables :mod:`scale_graph.listing` reads (run records in the store, the ``finished`` channel and
errors in ``writes``, the leases); the caller then asks LangGraph for the state of the page's runs only
(answer, sub-problems, tokens, where a stopped run stopped), as ``scale runs list`` does for all.
Any other database (PostgreSQL) takes :func:`scale_graph.runs.list_runs` and is
paginated here, in Python.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scale_graph.leases import Lease

State = Literal["done", "running", "stopped", "failed", "not started"]
STATES: tuple[State, ...] = ("done", "running", "stopped", "failed", "not started")
SORTS = ("created", "status", "thread_id", "problem")
PER_PAGE_MAX = 200


@dataclass(frozen=True)
class Query:
    """What the list shows: a text filter (run id or problem), a state, the order and the page (1-based)."""

    text: str = ""
    state: str = ""
    sort: str = "created"
    descending: bool = True
    page: int = 1
    per_page: int = 50

    def checked(self) -> Query:
        """The query with out-of-range values replaced by the defaults (a URL is typed by hand)."""
        return Query(self.text[:200], self.state if self.state in STATES else "",
                     self.sort if self.sort in SORTS else "created", self.descending, max(1, self.page),
                     min(max(1, self.per_page), PER_PAGE_MAX))


@dataclass
class Page:
    """One page of runs, the number matching the filter, and how many runs are in each state."""

    rows: list[dict[str, Any]]
    total: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self, query: Query) -> dict[str, Any]:
        return {"rows": self.rows, "total": self.total, "counts": self.counts, "page": query.page,
                "per_page": query.per_page, "pages": max(1, -(-self.total // query.per_page)),
                "query": {"text": query.text, "state": query.state, "sort": query.sort,
                          "descending": query.descending}}


def state_of(status: str, failed: bool = False) -> State:
    """The state a status line belongs to ("running (pid 7)" → running, "stopped before assess" → stopped,
    or failed when its last step ended in an error)."""
    for state in ("done", "running", "not started"):
        if status.startswith(state):
            return state  # type: ignore[return-value]
    return "failed" if failed else "stopped"


# Every lookup goes down a primary-key index, a few rows a run (never a scan of a run's writes): the
# newest checkpoint (index max); done = `finalize` wrote finished=True in the step that made it
# (writes keyed by its parent checkpoint); failed = the newest checkpoint holds a task's error.
_RUNS = """
WITH records AS (
  SELECT s.key AS thread_id, s.value AS value,
         (SELECT MAX(c.checkpoint_id) FROM checkpoints c WHERE c.thread_id = s.key AND c.checkpoint_ns = '') AS last
  FROM store s WHERE s.prefix = 'scale.runs'),
runs AS (
  SELECT thread_id,
         json_extract(value, '$.created') AS created,
         COALESCE(json_extract(value, '$.problem'), '') AS problem,
         CASE
           WHEN last IS NULL THEN
             CASE WHEN EXISTS (SELECT 1 FROM scale_leases l WHERE l.thread_id = records.thread_id AND l.expires >= :now)
                  THEN 'running' ELSE 'not started' END
           WHEN EXISTS (SELECT 1 FROM writes w WHERE w.thread_id = records.thread_id AND w.checkpoint_ns = ''
                        AND w.checkpoint_id = (SELECT c.parent_checkpoint_id FROM checkpoints c
                                               WHERE c.thread_id = records.thread_id AND c.checkpoint_ns = ''
                                               AND c.checkpoint_id = last)
                        AND w.channel = 'finished' AND w.value = X'c3') THEN 'done'
           WHEN EXISTS (SELECT 1 FROM scale_leases l WHERE l.thread_id = records.thread_id AND l.expires >= :now) THEN 'running'
           WHEN EXISTS (SELECT 1 FROM writes w WHERE w.thread_id = records.thread_id AND w.checkpoint_ns = ''
                        AND w.checkpoint_id = last AND w.channel = '__error__') THEN 'failed'
           ELSE 'stopped' END AS state
  FROM records)
"""
_FILTER = " WHERE (:text = '' OR instr(lower(thread_id), lower(:text)) > 0 OR instr(lower(problem), lower(:text)) > 0)"
_ORDER = {"created": "created", "status": "state", "thread_id": "thread_id", "problem": "problem"}


class SqliteCatalog:
    """The run list of one SQLite database, on one long-lived read connection: its page cache stays
    warm between requests (a fresh connection re-reads every page it needs)."""

    #: Page cache of the connection, KiB: room for 10,000 run records and the indexes the queries walk.
    CACHE_KIB = 32_768

    def __init__(self, path: Path) -> None:
        # read-write but query-only: the last connection to close tidies the WAL files away, as
        # every other command's connections do (a read-only one would leave them behind)
        self.conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.execute(f"PRAGMA cache_size = -{self.CACHE_KIB}")
        self.lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    def page(self, query: Query) -> Page:
        """One page of the runs (sqlite3.Error when the database cannot be read)."""
        params = {"now": time.time(), "text": query.text, "state": query.state,
                  "limit": query.per_page, "offset": (query.page - 1) * query.per_page}
        direction = "DESC" if query.descending else "ASC"
        with self.lock:
            counts = dict.fromkeys(STATES, 0)
            counts.update(self.conn.execute(_RUNS + "SELECT state, COUNT(*) FROM runs" + _FILTER + " GROUP BY state",
                                            params).fetchall())
            total = counts[query.state] if query.state else sum(counts.values())
            ids = self.conn.execute(
                _RUNS + "SELECT thread_id, created, problem, state FROM runs" + _FILTER +
                f" AND (:state = '' OR state = :state) ORDER BY {_ORDER[query.sort]} {direction}, "
                f"thread_id {direction} LIMIT :limit OFFSET :offset", params).fetchall()
            rows = [_details(self.conn, thread, created, problem, state) for thread, created, problem, state in ids]
        return Page(rows, total, counts)


def _details(conn: sqlite3.Connection, thread: str, created: float | None, problem: str, state: str) -> dict[str, Any]:
    """The columns of one shown row the SQL knows: parameters, model identity, fork parent, lease.
    Answer, sub-problems and tokens come from the run's state (the caller asks LangGraph)."""
    record = json.loads(conn.execute("SELECT value FROM store WHERE prefix = 'scale.runs' AND key = ?",
                                     (thread,)).fetchone()[0])
    params = record.get("params") or {}
    lease_row = conn.execute("SELECT thread_id, holder, host, pid, expires FROM scale_leases WHERE thread_id = ?",
                             (thread,)).fetchone()
    lease = Lease(*lease_row) if lease_row else None
    status = state
    if state == "running" and lease is not None:
        status = lease.describe() if lease.live() else "stopped"  # a dead process's lease not yet expired
    return {"thread_id": thread, "created": created, "status": status, "state": state_of(status, state == "failed"),
            "problem": problem, "answer": None, "subproblems": 0, "tokens": 0,
            "threshold": params.get("threshold"), "models": _models(params),
            "fork_of": (record.get("fork_of") or {}).get("thread_id")}


def _models(params: dict[str, Any]) -> str:
    """The model identity of a run: System 1 / System 2 model names as served."""
    first, second = params.get("system1_model") or "?", params.get("system2_model") or "?"
    return first if first == second else f"{first} / {second}"


def python_page(rows: list[dict[str, Any]], query: Query) -> Page:
    """One page of ``rows`` (from :func:`scale_graph.runs.list_runs`), filtered and sorted as the SQL would."""
    text = query.text.lower()
    for row in rows:
        row["state"] = state_of(row["status"])
    matching = [row for row in rows if not text or text in row["thread_id"].lower() or text in row["problem"].lower()]
    counts = dict.fromkeys(STATES, 0)
    for row in matching:
        counts[row["state"]] += 1
    if query.state:
        matching = [row for row in matching if row["state"] == query.state]
    key = {"status": "state"}.get(query.sort, query.sort)
    matching.sort(key=lambda row: (row.get(key) is not None, row.get(key) or 0 if key == "created"
                                   else str(row.get(key) or ""), row["thread_id"]), reverse=query.descending)
    start = (query.page - 1) * query.per_page
    return Page(matching[start:start + query.per_page], len(matching), counts)
