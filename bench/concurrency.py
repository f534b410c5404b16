"""Problems in flight: wall time of N SCALE problems run together (``asyncio.gather`` of
``runner.start``, one shared ``open_async`` saver/store per N) relative to one problem alone.

The fake server answers every call after a fixed latency (default 200 ms) and gives System 2
(thinking) calls 30 KB of reasoning, so one problem is ~18 sequential calls ≈ 3.6 s of waiting;
an orchestrator that only waits finishes N problems in about that time. Target: 128 in flight
≤ 1.2× one problem.

Variants (package code only):
  as-is          the package: runner.start on persistence.open_async (SQLite checkpoints and
                 call journal), the chat layer's aiohttp transport
  memjournal     diagnostic: SQLite checkpoints, call journal in an InMemoryStore
  nopersist      diagnostic: no checkpointer, journal in memory (graph + HTTP only)
  direct-httpx   the recorded request bodies replayed with openai.AsyncOpenAI over an
                 httpx.AsyncClient with 1024 connections (the transport the package used before)
  direct-aio     the same with openai.DefaultAioHttpClient (the package's transport): the floor

A plan item is SERVER:VARIANT:N,N,... with SERVER "process" (fake server in its own process)
or "inprocess" (its event loop shares this process's GIL). Per item: wall, ratio to the same
variant's N=1 (else the first N=1 of that server), CPU of this process per call actually made,
per-problem latency and errors.

    python bench/concurrency.py                # default plan, ~2 min
    python bench/concurrency.py --plan full    # every variant, both server kinds, ~8 min
    python bench/concurrency.py --plan "process:as-is:1,8,32,128;inprocess:as-is:1,128"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from overhead import replay_kwargs  # noqa: E402


async def timed(coro) -> tuple[float, BaseException | None]:
    started = time.perf_counter()
    try:
        await coro
        return time.perf_counter() - started, None
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return time.perf_counter() - started, exc


GRAPH_VARIANTS = ("as-is", "memjournal", "nopersist")
DIRECT_VARIANTS = ("direct-httpx", "direct-aio")
DEFAULT_PLAN = "process:as-is:1,8,32,128;process:direct-aio:128"
PLANS = {
    "full": ("process:as-is:1,8,32,128;process:memjournal:128;process:nopersist:1,128;process:direct-httpx:128;"
             "process:direct-aio:1,128;inprocess:as-is:1,128;inprocess:direct-aio:128"),
}


async def run_graph(variant: str, count: int, context, db: Path) -> dict:
    from langgraph.store.memory import InMemoryStore

    from scale_graph import build_graph
    from scale_graph.persistence import open_async
    from scale_graph.runner import start

    async with open_async(db) as (saver, store):
        if variant == "memjournal":
            store = InMemoryStore()
        if variant == "nopersist":
            graph = build_graph(None, InMemoryStore())

            def one(i: int):
                return graph.ainvoke({"problem": common.PROBLEM}, {"configurable": {"thread_id": f"p{i}"}}, context=context)
        else:
            graph = build_graph(saver, store)

            def one(i: int):
                return start(graph, store, common.PROBLEM, context, f"p{i}")
        cpu = time.process_time()
        started = time.perf_counter()
        results = await asyncio.gather(*(timed(one(i)) for i in range(count)))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await asyncio.sleep(0.05)  # let the store's batch task settle before the connection closes
    return summarise(wall, cpu, results)


async def run_direct(variant: str, count: int, base_url: str, bodies: list[dict]) -> dict:
    import httpx
    import openai

    http = (openai.DefaultAioHttpClient() if variant == "direct-aio" else
            httpx.AsyncClient(limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256)))
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, http_client=http)

    async def one_problem() -> None:
        for body in bodies:
            await client.chat.completions.create(**replay_kwargs(body))

    cpu = time.process_time()
    started = time.perf_counter()
    results = await asyncio.gather(*(timed(one_problem()) for _ in range(count)))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await client.close()
    return summarise(wall, cpu, results)


def summarise(wall: float, cpu: float, results: list[tuple[float, BaseException | None]]) -> dict:
    errors = [f"{type(e).__name__}: {e}"[:100] for _, e in results if e is not None]
    latencies = [t for t, _ in results]
    return {"wall": wall, "cpu": cpu, "mean": sum(latencies) / len(latencies), "max": max(latencies), "errors": errors}


def show(label: str, count: int, row: dict, base_wall: float, calls_made: int) -> None:
    errors = f"{len(row['errors'])} failed" + (f" ({row['errors'][0]})" if row["errors"] else "")
    print(f"   {label:<15} {count:>4} {row['wall']:7.2f} s {row['wall'] / base_wall:6.2f}× "
          f"{row['cpu']:7.2f} s {row['cpu'] * 1000 / max(calls_made, 1):7.2f} {calls_made:>6} "
          f"{row['mean']:6.2f} s {row['max']:6.2f} s  {errors}", flush=True)


async def bench_server(args: argparse.Namespace, kind: str, items: list[tuple[str, list[int]]], scratch: Path) -> list[dict]:
    rows = []
    with common.fake_server(kind, latency=args.latency, reasoning_bytes=args.reasoning_bytes,
                            subproblem_count=args.subproblems, difficulties=[0.1, 0.8]) as fake:
        context = common.make_context(fake.base_url, candidates=args.candidates, max_subproblems=max(12, args.subproblems))
        # Warm-up (imports, connection pools) and the request bodies of one problem.
        fake.configure(latency=0)
        await run_graph("as-is", 1, context, scratch / f"{kind}-warm.db")
        fake.reset()
        await run_graph("as-is", 1, context, scratch / f"{kind}-record.db")
        bodies = [entry["body"] for entry in fake.stats()["log"]]
        calls = len(bodies)
        fake.configure(latency=args.latency)
        fake.reset()
        print(f"\n   server: {kind}; one problem = {calls} calls, {args.subproblems} sub-problems, k={args.candidates}, "
              f"latency {args.latency * 1000:.0f} ms, {args.reasoning_bytes} B reasoning on System 2 calls; "
              f"floor {calls * args.latency:.2f} s per problem")
        print(f"   {'variant':<15} {'N':>4} {'wall':>9} {'vs 1':>7} {'CPU':>9} {'CPU ms/call':>7} {'calls':>6} "
              f"{'mean':>8} {'max':>8}")
        first_base = None
        for variant, counts in items:
            base = None
            for count in counts:
                if variant in DIRECT_VARIANTS:
                    row = await run_direct(variant, count, fake.base_url, bodies)
                else:
                    row = await run_graph(variant, count, context, scratch / f"{kind}-{variant}-{count}.db")
                made = fake.stats()["requests"]
                fake.reset()  # the server's request log would otherwise grow without bound
                if count == 1:
                    base = base or row["wall"]
                    first_base = first_base or row["wall"]
                reference = base or first_base or row["wall"]
                show(variant, count, row, reference, made)
                rows.append({"server": kind, "variant": variant, "n": count, "ratio": row["wall"] / reference, **row})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=DEFAULT_PLAN, help="SERVER:VARIANT:N,N;... (see above), or 'full' (~8 min)")
    parser.add_argument("--subproblems", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--reasoning-bytes", type=int, default=30_000)
    args = parser.parse_args()
    plan: dict[str, list[tuple[str, list[int]]]] = {}
    for item in filter(None, (part.strip() for part in PLANS.get(args.plan, args.plan).split(";"))):
        kind, variant, counts = item.split(":")
        if kind not in ("process", "inprocess") or variant not in GRAPH_VARIANTS + DIRECT_VARIANTS:
            parser.error(f"bad plan item {item!r}")
        plan.setdefault(kind, []).append((variant, [int(c) for c in counts.split(",")]))
    scratch = common.clean_environment()
    common.header("concurrency: N problems in flight vs one")
    for kind, items in plan.items():
        asyncio.run(bench_server(args, kind, items, scratch))
    print("\n   target: N=128 ≤ 1.20× N=1 (wall). The client runs on one core (GIL): N=128 needs CPU/call ≲ 2 ms "
          "(1.2 × one problem's wall / (128 × calls)); a busy machine stretches CPU into more wall time.")


if __name__ == "__main__":
    main()
