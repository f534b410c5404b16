"""Driver of the concurrency test: one process, N problems in flight at once on one database.

    python tests/support/drivers/concurrency.py DB PREFIX COUNT

Endpoints come from the environment (SCALE_SYSTEM{1,2}_*). Prints one JSON line:
``{"done": [...thread ids...], "failures": ["Type: message", ...], "seconds": …}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from scale_graph import build_graph
from scale_graph.setup import resolve
from scale_graph.persistence import open_async
from scale_graph.runner import start


async def main(db: str, prefix: str, count: int) -> dict:
    context = resolve().context
    started = time.monotonic()
    async with open_async(db) as (saver, store):
        graph = build_graph(saver, store)
        threads = [f"{prefix}-{i:02d}" for i in range(count)]
        results = await asyncio.gather(
            *(start(graph, store, f"Problem {thread}: what is {i} + {i}?", context, thread)
              for i, thread in enumerate(threads)),
            return_exceptions=True)
    done = [t for t, r in zip(threads, results) if not isinstance(r, BaseException) and r.get("answer") is not None]
    failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {"done": done, "failures": failures, "seconds": round(time.monotonic() - started, 2)}


if __name__ == "__main__":
    db, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(asyncio.run(main(db, prefix, count))), flush=True)
