"""The run list of `scale ui`: filtered, sorted and paginated in SQL, so 10,000 runs answer at once.

A SQLite run database is read with plain SQL over the tables :mod:`scale_graph.listing` reads (run
records in the store, the ``finished`` channel and errors in ``writes``, the leases) into an index
kept up to date in memory (:class:`SqliteCatalog`), which filters, counts, sorts and pages; the
caller then asks LangGraph for the state of the page's runs only (answer, sub-problems, tokens,
where a stopped run stopped), as ``scale runs list`` does for all.
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


#: Each run's record (decoded only when new or changed) and newest checkpoint (an index max).
_RECORDS = ("SELECT s.key, s.updated_at, length(s.value), (SELECT MAX(c.checkpoint_id) FROM checkpoints c "
            "WHERE c.thread_id = s.key AND c.checkpoint_ns = '') FROM store s WHERE s.prefix = 'scale.runs'")
_RECORD = "SELECT value FROM store WHERE prefix = 'scale.runs' AND key = ?"
# done: `finalize` wrote finished=True in the step that made the newest checkpoint (writes are keyed by
# the checkpoint a step started from: the newest one's parent); failed: a task's error at the newest one.
_FINISHED = ("SELECT 1 FROM writes w WHERE w.thread_id = :thread AND w.checkpoint_ns = '' AND w.checkpoint_id = "
             "(SELECT c.parent_checkpoint_id FROM checkpoints c WHERE c.thread_id = :thread AND c.checkpoint_ns = '' "
             "AND c.checkpoint_id = :last) AND w.channel = 'finished' AND w.value = X'c3'")
_FAILED = ("SELECT 1 FROM writes w WHERE w.thread_id = :thread AND w.checkpoint_ns = '' AND w.checkpoint_id = :last "
           "AND w.channel = '__error__'")
_LEASES = "SELECT thread_id, holder, host, pid, expires FROM scale_leases WHERE expires >= ?"


@dataclass
class _Entry:
    """What the list knows of one run without LangGraph."""

    version: tuple[Any, ...]  # (updated_at, length) of its record: decoded again when it changes
    created: float
    problem: str
    searched: str  # thread id and problem, lower case: what the text filter looks in
    threshold: float | None
    models: str
    fork_of: str | None
    origin: dict[str, Any]  # the record's fork_of: parent, checkpoint, what the fork changes
    last: str | None = None  # its newest checkpoint
    core: State = "not started"  # its state apart from a live lease


class SqliteCatalog:
    """The run list of one SQLite database, kept in memory and brought up to date before each page:
    a run's record is decoded once (again when it changes) and its state computed again only when
    its newest checkpoint changed, or while it is not done — every lookup goes down a primary-key
    index, a few rows a run, never a scan of a run's writes. Nothing changed in the database since
    the last page (SQLite's ``data_version``) means nothing to read. Filtering, counting, sorting
    and paging 10,000 runs then takes milliseconds."""

    def __init__(self, path: Path) -> None:
        # read-write but query-only: the last connection to close tidies the WAL files away, as
        # every other command's connections do (a read-only one would leave them behind)
        self.conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
        self.conn.execute("PRAGMA query_only = ON")
        self.lock = threading.Lock()
        self.entries: dict[str, _Entry] = {}
        self.data_version: int | None = None

    def close(self) -> None:
        self.conn.close()

    def page(self, query: Query) -> Page:
        """One page of the runs (sqlite3.Error when the database cannot be read)."""
        now = time.time()
        with self.lock:
            self._refresh()
            leases = {row[0]: Lease(*row) for row in self.conn.execute(_LEASES, (now,))}
            entries = list(self.entries.items())
        text = query.text.lower()
        rows = []
        for thread, entry in entries:
            if text and text not in entry.searched:
                continue
            lease = leases.get(thread)
            status = lease.describe() if entry.core != "done" and lease is not None and lease.live(now) else entry.core
            rows.append((thread, entry, status, state_of(status, entry.core == "failed")))
        counts = dict.fromkeys(STATES, 0)
        for *_, state in rows:
            counts[state] += 1
        if query.state:
            rows = [row for row in rows if row[3] == query.state]
        key = {"created": lambda row: (row[1].created, row[0]), "status": lambda row: (row[3], row[0]),
               "thread_id": lambda row: row[0], "problem": lambda row: (row[1].problem, row[0])}[query.sort]
        rows.sort(key=key, reverse=query.descending)
        start = (query.page - 1) * query.per_page
        shown = [{"thread_id": thread, "created": entry.created, "status": status, "state": state,
                  "problem": entry.problem, "answer": None, "subproblems": 0, "tokens": 0,
                  "threshold": entry.threshold, "models": entry.models, "fork_of": entry.fork_of}
                 for thread, entry, status, state in rows[start:start + query.per_page]]
        return Page(shown, len(rows), counts)

    def children(self, parent: str) -> list[tuple[str, dict[str, Any]]]:
        """(thread id, fork origin) of every run forked from run ``parent``."""
        with self.lock:
            self._refresh()
            return [(thread, entry.origin) for thread, entry in self.entries.items() if entry.fork_of == parent]

    def _refresh(self) -> None:
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self.data_version:
            return
        self.data_version = version  # read first: a commit while this runs is seen by the next page
        present = set()
        for thread, updated, length, last in self.conn.execute(_RECORDS).fetchall():
            present.add(thread)
            entry = self.entries.get(thread)
            if entry is None or entry.version != (updated, length):
                row = self.conn.execute(_RECORD, (thread,)).fetchone()
                if row is None:
                    continue  # deleted meanwhile
                entry = self.entries[thread] = _entry(thread, json.loads(row[0]), (updated, length))
            if last != entry.last or entry.core != "done":
                entry.last, entry.core = last, self._core_state(thread, last)
        for gone in set(self.entries) - present:
            del self.entries[gone]

    def _core_state(self, thread: str, last: str | None) -> State:
        if last is None:
            return "not started"
        params = {"thread": thread, "last": last}
        if self.conn.execute(_FINISHED, params).fetchone():
            return "done"
        return "failed" if self.conn.execute(_FAILED, params).fetchone() else "stopped"


def _entry(thread: str, record: dict[str, Any], version: tuple[Any, ...]) -> _Entry:
    params = record.get("params") or {}
    problem = str(record.get("problem") or "")
    return _Entry(version, float(record.get("created") or 0), problem, f"{thread}\n{problem}".lower(),
                  params.get("threshold"), _models(params), (record.get("fork_of") or {}).get("thread_id"),
                  record.get("fork_of") or {})


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
