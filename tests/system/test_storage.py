"""Checkpoints stay small: long reasoning is stored once, not copied into every snapshot."""

import asyncio
import sqlite3

from scale_graph import Context, build_graph
from scale_graph.persistence import open_async
from scale_graph.runner import start
from tests.support.fake_openai import FakeOpenAIServer


def test_database_grows_with_the_text_not_with_its_square(tmp_path):
    db = tmp_path / "runs.db"
    with FakeOpenAIServer(reasoning_bytes=30_000, subproblem_count=12, difficulties=[0.9]) as server:
        context = Context(system1_base_url=server.base_url, system1_model="scale-system1",
                          system2_base_url=server.base_url, system2_model="scale-system2",
                          candidates=2, max_subproblems=12)

        async def main():
            async with open_async(db) as (saver, store):
                return await start(build_graph(saver, store), store, "What is 1+1?", context, "big")

        values = asyncio.run(main())
    assert len(values["steps"]) == 12
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = conn.execute("SELECT value FROM store WHERE prefix LIKE 'scale.big.calls%'").fetchall()
        sizes = [row[0] for row in conn.execute("SELECT length(checkpoint) FROM checkpoints ORDER BY checkpoint_id")]
    journal_bytes = sum(len(v[0]) for v in stored)
    reasoning = 12 * 30_000
    assert journal_bytes >= reasoning  # the traces are kept …
    after_planning = sizes[4:-1]  # snapshots taken while sub-problems are solved (the last adds answer and marker)
    assert max(after_planning) < 1.25 * min(after_planning)  # … and snapshots do not grow with them
    assert max(sizes) < 10_000
    assert db.stat().st_size < 2 * reasoning
