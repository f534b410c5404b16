"""Orchestrator CPU per LLM call: SCALE through LangGraph with sync SQLite checkpoints vs the
same LLM calls made directly with ``openai.AsyncOpenAI``.

Against a zero-latency fake server (System 2 calls carry ``--reasoning-bytes`` of reasoning,
default 30 KB), N problems run together (``asyncio.gather``; default N = 1 and N = 128, problems
of 8 sub-problems, k = 8 candidates) in each of these ways, interleaved ``--repeats`` times:

  A direct   the exact request bodies the graph sent (from the fake server's log), replayed in
             order with ``AsyncOpenAI().chat.completions.create`` (aiohttp transport, as the
             package uses it)
  B chat     the same logical calls through the package's chat layer (``Systems.acall``:
             langchain-openai ``ChatOpenAI.agenerate`` + reasoning/usage parsing)
  C graph    ``graph.ainvoke`` without checkpointer, journal in an ``InMemoryStore``
  C2 +ckpt   ``runner.start`` with the SQLite checkpointer, journal in memory
  D full     ``runner.start`` on ``persistence.open_async`` (sync durability, SQLite
             checkpoints + SQLite call journal): what users run
  N0, N1     C and D with the chat layer replaced by canned replies (no HTTP): the
             orchestration's own cost, free of network and server noise (``--no-http``)

CPU is the whole process (``time.process_time``: every thread, incl. aiosqlite's), per LLM
call. **Orchestrator CPU per call = (D − A) / calls**: what SCALE-Graph spends beyond making
the same requests; B−A, C−B, C2−C and D−C2 split it into chat layer, graph (LangGraph + node
and journal logic), checkpoints and SQLite journal. Figures are medians of the repeats with
[min–max]; compare ratios within one run (the machine is shared). Then the aiosqlite statements
per problem and a cProfile (CPU-time timer) of D.

    python bench/overhead.py                         # N = 1 and 128, ~6 min
    python bench/overhead.py --inflight 1,32 --repeats 5 --no-http
    python bench/overhead.py --inflight 1 --reasoning-bytes 2000 --profile 4
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TYPED = {"model", "messages", "max_completion_tokens", "max_tokens", "n", "seed", "temperature", "top_p",
         "response_format", "stream"}


def replay_kwargs(body: dict) -> dict:
    """``chat.completions.create`` kwargs reproducing ``body`` byte for byte (non-OpenAI fields
    such as ``chat_template_kwargs`` and ``top_k`` go through ``extra_body``)."""
    kwargs = {k: v for k, v in body.items() if k in TYPED}
    extra = {k: v for k, v in body.items() if k not in TYPED}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


async def in_flight(count: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """``count`` problems together; the first failure propagates (a benchmark must not hide one)."""
    await asyncio.gather(*(one(i) for i in range(count)))


class SqlCounter:
    """Counts aiosqlite statements and commits (patched on the class while active)."""

    def __init__(self) -> None:
        import aiosqlite

        self.cls = aiosqlite.Connection
        self.counts = {"execute": 0, "executemany": 0, "commit": 0, "executescript": 0}

    def __enter__(self) -> "SqlCounter":
        self.saved = {name: getattr(self.cls, name) for name in self.counts}
        for name, original in self.saved.items():
            def make(name=name, original=original):
                def counted(conn, *args, **kwargs):
                    self.counts[name] += 1
                    return original(conn, *args, **kwargs)
                return counted
            setattr(self.cls, name, make())
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self.saved.items():
            setattr(self.cls, name, original)


SPLIT = (("chat layer", "B chat", "A direct", "langchain-openai + reply parsing"),
         ("graph", "C graph", "B chat", "LangGraph + node/journal logic, journal in memory"),
         ("checkpoints", "C2 +ckpt", "C graph", "AsyncSqliteSaver, durability sync"),
         ("journal", "D full", "C2 +ckpt", "AsyncSqliteStore gets/puts"))


async def main_async(args: argparse.Namespace, fake: common.Fake, scratch: Path) -> None:
    import openai
    from langgraph.store.memory import InMemoryStore

    from scale_graph import build_graph
    from scale_graph.journal import systems_for
    from scale_graph.persistence import open_async
    from scale_graph.runner import start
    from scale_graph.servers import chat

    context = common.make_context(fake.base_url, candidates=args.candidates, max_subproblems=max(12, args.subproblems))
    problem = common.PROBLEM
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="EMPTY", max_retries=0,
                                http_client=openai.DefaultAioHttpClient())

    async with open_async(scratch / "overhead.db") as (saver, store):
        graph = build_graph(saver, store)
        memory_store = InMemoryStore()
        graph_ckpt_only = build_graph(saver, memory_store)
        graph_memory = build_graph(None, InMemoryStore())

        # Record one run: the request bodies (server log) and the logical calls (chat layer).
        recorded: list = []
        replies: dict = {}
        original = chat.Systems.acall

        async def recording(self, call):
            recorded.append(call)
            replies[call.key] = reply = await original(self, call)
            return reply

        async def canned(self, call):  # no HTTP at all: the orchestration alone
            return replies[call.key]

        chat.Systems.acall = recording
        fake.reset()
        try:
            await start(graph, store, problem, context, "record")
        finally:
            chat.Systems.acall = original
        bodies = [entry["body"] for entry in fake.stats()["log"]]
        calls = len(bodies)
        assert calls == len(recorded), (calls, len(recorded))
        systems = systems_for(context)
        n_system2 = sum(1 for c in recorded if c.thinking)
        print(f"   one problem = {calls} LLM calls ({n_system2} System 2 with {args.reasoning_bytes:,} B reasoning), "
              f"{args.subproblems} sub-problems, k={args.candidates}; server: {fake.kind}, latency 0")

        async def direct(i: int) -> None:
            for body in bodies:
                await client.chat.completions.create(**replay_kwargs(body))

        async def through_chat(i: int) -> None:
            for call in recorded:
                await systems.acall(call)

        def without_http(run: Callable[[str], Awaitable[Any]]) -> Callable[[str], Awaitable[Any]]:
            async def patched(tag: str) -> Any:
                chat.Systems.acall = canned
                try:
                    return await run(tag)
                finally:
                    chat.Systems.acall = original
            return patched

        def variants(count: int) -> dict[str, Callable[[str], Awaitable[Any]]]:
            def threads(tag: str, i: int) -> str:
                return f"{tag}-{count}-{i}"

            def memory(tag: str) -> Awaitable[Any]:
                return in_flight(count, lambda i: graph_memory.ainvoke(
                    {"problem": problem}, {"configurable": {"thread_id": threads(tag, i)}}, context=context))

            def full(g, s, tag: str) -> Awaitable[Any]:
                return in_flight(count, lambda i: start(g, s, problem, context, threads(tag, i)))

            chosen = {
                "A direct": lambda tag: in_flight(count, direct),
                "B chat": lambda tag: in_flight(count, through_chat),
                "C graph": lambda tag: memory("mem" + tag),
                "C2 +ckpt": lambda tag: full(graph_ckpt_only, memory_store, "ckpt" + tag),
                "D full": lambda tag: full(graph, store, "full" + tag),
            }
            if args.no_http:
                chosen["N0 nullmem"] = without_http(lambda tag: memory("nmem" + tag))
                chosen["N1 nullfull"] = without_http(lambda tag: full(graph, store, "nfull" + tag))
            return chosen

        for name, run in variants(1).items():  # warm-up every path once
            await run("warm")

        for count in args.inflight:
            measure(await timed_variants(variants(count), args.repeats), calls * count, count, args)

        for name, g, s in (("D full", graph, store),):
            with SqlCounter() as counter:
                await start(g, s, problem, context, "count")
            c = counter.counts
            nodes = 2 + 2 * args.subproblems + 1
            print(f"\n   aiosqlite calls per problem, {name} ({nodes} nodes, {calls} LLM calls): {c['execute']} execute, "
                  f"{c['commit']} commit (the store runs BEGIN/…/COMMIT as executes: every store get is a transaction)")

        if args.profile:
            profiler = cProfile.Profile(time.thread_time)  # CPU of the event-loop thread only
            profiler.enable()
            await in_flight(args.profile, lambda i: start(graph, store, problem, context, f"prof-{i}"))
            profiler.disable()
            print_profile(profiler, args.profile * calls, args.profile)
    await client.close()


async def timed_variants(variants: dict[str, Callable[[str], Awaitable[Any]]], repeats: int
                         ) -> dict[str, tuple[list[float], list[float]]]:
    """Per variant: (wall s, process CPU s) of each repeat, the variants interleaved."""
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    for r in range(repeats):
        for name, run in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            await run(f"r{r}")
            results[name][0].append(time.perf_counter() - wall)
            results[name][1].append(time.process_time() - cpu)
    return results


def measure(results: dict[str, tuple[list[float], list[float]]], calls: int, count: int, args: argparse.Namespace) -> None:
    """Print wall and CPU per call, the orchestrator's CPU (D − A) and its split."""
    print(f"\n   ── {count} problem{'s' if count > 1 else ''} in flight, {calls} LLM calls per repeat; "
          f"median [min–max] of {args.repeats} interleaved repeats, ms per LLM call")
    print(f"   {'variant':<12} {'wall':>26} {'CPU (process, all threads)':>30}")
    wall = {name: [v * 1000 / calls for v in w] for name, (w, _) in results.items()}
    cpu = {name: [v * 1000 / calls for v in c] for name, (_, c) in results.items()}
    for name in results:
        print(f"   {name:<12} {common.spread(wall[name]):>26} {common.spread(cpu[name]):>30}")

    def paired(a: str, b: str, figures: dict[str, list[float]]) -> list[float]:
        return [x - y for x, y in zip(figures[a], figures[b])]  # same repeat: same machine moment

    over_cpu = paired("D full", "A direct", cpu)
    print(f"   orchestrator CPU per LLM call  D−A  {common.spread(over_cpu)} ms   (target ≤ 5 ms at 128 in flight) "
          f"· CPU ratio D/A {common.median(cpu['D full']) / common.median(cpu['A direct']):.2f}")
    print(f"   orchestrator wall per LLM call D−A  {common.spread(paired('D full', 'A direct', wall))} ms "
          f"· wall ratio D/A {common.median(wall['D full']) / common.median(wall['A direct']):.2f}")
    total = common.median(over_cpu) or float("nan")
    print("   split of the orchestrator CPU (paired differences, median [min–max] ms per call, share of D−A):")
    for label, a, b, what in SPLIT:
        part = paired(a, b, cpu)
        print(f"     {label:<12} {a.split()[0]}−{b.split()[0]:<3} {common.spread(part):>24}  {common.median(part) / total:6.1%}  ({what})")
    if "N1 nullfull" in results:
        print(f"   without HTTP (canned replies): graph + memory journal {common.median(cpu['N0 nullmem']):.2f} ms CPU, "
              f"graph + SQLite {common.median(cpu['N1 nullfull']):.2f} ms CPU per call")
    real_ms = args.real_call_s * 1000
    print(f"   share of a real call: {common.median(paired('D full', 'A direct', wall)) / real_ms:.2%} of "
          f"{args.real_call_s:g} s per call (assumption: a System 2 call on a GPU vLLM)")


def print_profile(profiler: cProfile.Profile, calls: int, problems: int, top: int = 15) -> None:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, filename, line, func))
    print(f"\n   cProfile of D with {problems} problems in flight, timer = CPU time of the event-loop thread "
          f"(aiosqlite's worker thread not included): "
          f"{total * 1000 / calls:.2f} ms per LLM call under the profiler (it inflates small calls ~3-5x; read shares)")
    groups: dict[str, float] = {}
    for tt, ct, nc, filename, line, func in rows:
        groups[group_of(filename, func)] = groups.get(group_of(filename, func), 0.0) + tt
    print("   own CPU time by package (share of the profiled total):")
    for name, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        print(f"     {tt / total:6.1%}  {name}")
    print(f"   top {top} functions by own time (share | calls per LLM call, coroutine resumptions count):")
    for tt, ct, nc, filename, line, func in sorted(rows, reverse=True)[:top]:
        print(f"     {tt / total:6.1%} | {nc / calls:7.1f} | {short(filename)}:{line} {func}")
    print("   selected cumulative shares (inclusive, same profile):")
    wanted = [("langchain_openai/chat_models/base.py", "_agenerate", "langchain-openai agenerate (HTTP incl.)"),
              ("openai/_utils/_transform.py", "async_transform", "openai request-param transform"),
              ("langgraph/checkpoint/sqlite/aio.py", "aput", "checkpoint aput"),
              ("langgraph/checkpoint/sqlite/aio.py", "aput_writes", "checkpoint aput_writes"),
              ("langgraph/store/sqlite/aio.py", "abatch", "SQLite store abatch (get/put)"),
              ("langgraph/pregel/main.py", "aget_state", "graph.aget_state (runner)"),
              ("langgraph/checkpoint/serde/jsonplus.py", "dumps_typed", "checkpoint serialisation")]
    for path, func_name, label in wanted:
        ct = sum(r[1] for r in rows if r[3].endswith(path) and r[5] == func_name)
        print(f"     {ct / total:6.1%}  {label}")


def group_of(filename: str, func: str) -> str:
    if filename == "~":
        if "epoll" in func or "select" in func:
            return "epoll wait (idle)"
        return "builtins (C)"
    if "site-packages/" in filename:
        rest = filename.split("site-packages/", 1)[1].split("/")
        return "/".join(rest[:3]) if rest[0] in ("langgraph", "langchain_core") else rest[0]
    if "/src/scale_graph/" in filename:
        return "scale_graph"
    if "/asyncio/" in filename or filename.endswith("selectors.py"):
        return "asyncio (stdlib)"
    return "stdlib: " + Path(filename).name


def short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subproblems", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--reasoning-bytes", type=int, default=30_000)
    parser.add_argument("--inflight", default="1,128", help="problems in flight, comma-separated (default 1,128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="add N0/N1: the graph with canned replies")
    parser.add_argument("--server", choices=("process", "inprocess"), default="process")
    parser.add_argument("--profile", type=int, default=0, help="problems in flight under cProfile (0: skip)")
    parser.add_argument("--real-call-s", type=float, default=2.0,
                        help="assumed duration of a real System 2 call (GPU vLLM) for the %% figure")
    args = parser.parse_args()
    try:
        args.inflight = [int(n) for n in args.inflight.split(",")]
    except ValueError:
        parser.error(f"--inflight: expected numbers like 1,128, got {args.inflight!r}")
    scratch = common.clean_environment()
    common.header("overhead: orchestrator CPU per LLM call")
    with common.fake_server(args.server, latency=0, subproblem_count=args.subproblems,
                            reasoning_bytes=args.reasoning_bytes, difficulties=[0.1, 0.8]) as fake:
        asyncio.run(main_async(args, fake, scratch))


if __name__ == "__main__":
    main()
