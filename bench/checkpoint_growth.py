"""SQLite bytes per solved problem vs the text the server produced.

For each (sub-problem count, reasoning size) one problem is solved through ``runner.start`` on a
fresh ``persistence.open_async`` file against the in-process fake server (zero latency, half
the sub-problems hard, so System 2 calls return ``--reasoning`` bytes of thinking). Then:

  produced  sum of content + reasoning of every choice of every call, read back from the call
            journal (cross-checked with the server's completion_tokens × 4)
  file      database size after ``PRAGMA wal_checkpoint(TRUNCATE)`` (WAL folded in, -wal empty),
            minus the size of the same file with the schema only; then again after ``VACUUM``
  tables    pages per table (``dbstat``; indexes counted with their table) and payload bytes
            (sum of blob lengths: checkpoint blobs, pending writes, store values)

Target: bytes grow linearly with produced text; file ≤ 2× produced at 30 KB for every count.
Baseline from DESIGN.md ("records kept in state"): 34–50× at 32 sub-problems × 30 KB.

    python bench/checkpoint_growth.py                      # ~20 s
    python bench/checkpoint_growth.py --counts 2,8,32,64 --reasoning 2000,30000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

DESIGN_BASELINE = "34–50× (records kept in state, 32 sub-problems × 30 KB; DESIGN.md)"


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.name.endswith(".db") and p.exists()) \
        + (Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0)


def fold_wal(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return file_bytes(path)


def vacuum(path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return file_bytes(path)


def table_pages(path: Path) -> dict[str, int]:
    """Bytes of pages per table, its indexes included (dbstat)."""
    with sqlite3.connect(path) as conn:
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table','index')"))
        sizes: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            sizes[table] = sizes.get(table, 0) + size
    return sizes


def payloads(path: Path) -> dict[str, int]:
    """Logical payload bytes: checkpoint blobs + metadata, pending writes, store values."""
    with sqlite3.connect(path) as conn:
        result = {}
        queries = {"checkpoints": "SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0), COUNT(*) FROM checkpoints",
                   "writes": "SELECT COALESCE(SUM(LENGTH(value)), 0), COUNT(*) FROM writes",
                   "store": "SELECT COALESCE(SUM(LENGTH(value)), 0), COUNT(*) FROM store"}
        for table, query in queries.items():
            try:
                result[table] = conn.execute(query).fetchone()
            except sqlite3.OperationalError:
                result[table] = (0, 0)
        biggest = conn.execute("SELECT COALESCE(MAX(LENGTH(checkpoint)), 0) FROM checkpoints").fetchone()[0]
    result["largest_checkpoint"] = (biggest, 1)
    return result


def channel_bytes(path: Path) -> dict[str, int]:
    """Serialized bytes per state channel summed over every checkpoint row (what each channel
    costs because the saver stores every channel's value again at every step)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    totals: dict[str, int] = {}
    with sqlite3.connect(path) as conn:
        for kind, blob in conn.execute("SELECT type, checkpoint FROM checkpoints"):
            checkpoint = serde.loads_typed((kind, blob))
            for channel, value in checkpoint.get("channel_values", {}).items():
                totals[channel] = totals.get(channel, 0) + len(serde.dumps_typed(value)[1])
            rest = {k: v for k, v in checkpoint.items() if k != "channel_values"}
            totals["(versions, ids)"] = totals.get("(versions, ids)", 0) + len(serde.dumps_typed(rest)[1])
    return totals


def produced_text(path: Path, run_id: str) -> tuple[int, int]:
    """(characters of content + reasoning over all journalled calls, number of calls)."""
    total = calls = 0
    with sqlite3.connect(path) as conn:
        for (value,) in conn.execute("SELECT value FROM store WHERE prefix = ?", (f"scale.{run_id}.calls",)):
            reply = json.loads(value)
            calls += 1
            for choice in reply["choices"]:
                total += len((choice.get("content") or "").encode()) + len((choice.get("reasoning") or "").encode())
    return total, calls


async def solve_one(base_url: str, db: Path, count: int, candidates: int) -> dict:
    from scale_graph import build_graph
    from scale_graph.persistence import open_async
    from scale_graph.runner import start
    from scale_graph.state import total_usage

    context = common.make_context(base_url, candidates=candidates, max_subproblems=max(12, count))
    async with open_async(db) as (saver, store):
        graph = build_graph(saver, store)
        values = await start(graph, store, common.PROBLEM, context, "growth")
    return {"usage": total_usage(values.get("usage", {})), "steps": len(values.get("steps", [])),
            "hard": sum(1 for s in values.get("steps", []) if s.get("system") == 2)}


async def empty_size(db: Path) -> int:
    from scale_graph.persistence import open_async

    async with open_async(db):
        pass
    return fold_wal(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="2,8,32")
    parser.add_argument("--reasoning", default="2000,30000", help="reasoning bytes per System 2 call")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--tables", action="store_true", help="also print pages per table after VACUUM")
    args = parser.parse_args()
    scratch = common.clean_environment()
    common.header("checkpoint growth: SQLite bytes per solved problem vs produced text")
    empty = asyncio.run(empty_size(scratch / "empty.db"))
    print(f"   schema-only file: {empty:,} B (subtracted below); k={args.candidates} candidates; "
          f"half the sub-problems hard (System 2)")
    print(f"\n   {'subs':>4} {'reason':>6} {'calls':>5} {'produced':>10} {'file':>11} {'×':>6} {'vacuum':>11} {'×':>6} "
          f"| {'ckpt pages':>10} {'writes pg':>10} {'store pg':>10} | {'#ckpt':>5} {'ckpt blob':>10} {'max blob':>9} "
          f"{'store val':>10} {'s':>5} {'w/o cand':>8}")
    rows = []
    for reasoning in (int(r) for r in args.reasoning.split(",")):
        for count in (int(c) for c in args.counts.split(",")):
            db = scratch / f"growth-{count}-{reasoning}.db"
            with common.fake_server("inprocess", latency=0, subproblem_count=count, reasoning_bytes=reasoning,
                                    difficulties=[0.1, 0.8]) as fake:
                started = time.perf_counter()
                info = asyncio.run(solve_one(fake.base_url, db, count, args.candidates))
                seconds = time.perf_counter() - started
            produced, calls = produced_text(db, "growth")
            size = fold_wal(db) - empty
            pages = table_pages(db)
            load = payloads(db)
            channels = channel_bytes(db)
            vac = vacuum(db) - empty
            vac_pages = table_pages(db)
            check = info["usage"].get("completion_tokens", 0) * 4
            row = {"count": count, "reasoning": reasoning, "produced": produced, "file": size, "vacuum": vac,
                   "ratio": size / produced, "vacuum_ratio": vac / produced, "pages": pages, "vac_pages": vac_pages,
                   "payload": load, "calls": calls, "channels": channels,
                   "whatif": (size - channels.get("candidates", 0)) / produced}
            rows.append(row)
            print(f"   {count:>4} {reasoning:>6} {calls:>5} {produced:>10,} {size:>11,} {size / produced:6.2f} "
                  f"{vac:>11,} {vac / produced:6.2f} | {pages.get('checkpoints', 0):>10,} {pages.get('writes', 0):>10,} "
                  f"{pages.get('store', 0):>10,} | {load['checkpoints'][1]:>5} {load['checkpoints'][0]:>10,} "
                  f"{load['largest_checkpoint'][0]:>9,} {load['store'][0]:>10,} {seconds:5.1f} {row['whatif']:7.2f}×"
                  + ("" if abs(check - produced) <= 0.05 * produced + 64 * calls else f"  (server tokens×4 = {check:,})"))
            if info["steps"] != count:
                print(f"     note: {info['steps']} steps solved, expected {count}")
            if args.tables:
                print("     after VACUUM, bytes per table:", ", ".join(f"{k} {v:,}" for k, v in sorted(vac_pages.items())))
    print("\n   × = (file − schema-only file) / produced text; target ≤ 2.00 at 30 KB for every count")
    print("   w/o cand = estimate of × if `candidates` (k decompositions, needed only by select) were not kept in\n"
          "              state: file minus that channel's serialized bytes over all checkpoints")
    print(f"   baseline: {DESIGN_BASELINE}")
    for reasoning in sorted({r["reasoning"] for r in rows}):
        series = [r for r in rows if r["reasoning"] == reasoning]
        if len(series) >= 2:
            first, last = series[0], series[-1]
            print(f"   linearity at {reasoning} B: {first['count']}→{last['count']} sub-problems: produced ×"
                  f"{last['produced'] / first['produced']:.1f}, file ×{last['file'] / first['file']:.1f}, "
                  f"after VACUUM ×{last['vacuum'] / first['vacuum']:.1f}")
        worst = max(series, key=lambda r: r["ratio"])
        print(f"   worst at {reasoning} B: {worst['ratio']:.2f}× ({worst['count']} sub-problems)"
              + (f" — target {'met' if worst['ratio'] <= 2 else 'MISSED'}" if reasoning >= 30_000 else ""))
    # Where the bytes are in the largest case.
    big = max(rows, key=lambda r: (r["count"], r["reasoning"]))
    total_pages = sum(big["pages"].values()) or 1
    print(f"\n   largest case ({big['count']} sub-problems, {big['reasoning']} B): pages by table before VACUUM: "
          + ", ".join(f"{k} {v / total_pages:.0%}" for k, v in sorted(big["pages"].items(), key=lambda kv: -kv[1]) if v))
    p = big["payload"]
    channels = sorted(big["channels"].items(), key=lambda kv: -kv[1])
    print("   checkpoint bytes by state channel, summed over all checkpoints: "
          + ", ".join(f"{k} {v:,}" for k, v in channels if v >= 1000))
    print(f"   payload: checkpoints {p['checkpoints'][0]:,} B in {p['checkpoints'][1]} rows "
          f"(largest {p['largest_checkpoint'][0]:,} B), writes {p['writes'][0]:,} B in {p['writes'][1]} rows, "
          f"store {p['store'][0]:,} B in {p['store'][1]} rows; produced {big['produced']:,} B")
    os.chdir("/")


if __name__ == "__main__":
    main()
