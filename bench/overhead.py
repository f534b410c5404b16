"""Orchestration overhead per LLM call: SCALE through LangGraph with sync SQLite checkpoints vs
the same LLM calls made directly with ``openai.AsyncOpenAI``.

Against a zero-latency fake server, one problem (default 8 sub-problems, k=8 candidates) is run
four ways, interleaved ``--repeats`` times (medians reported, the machine is noisy):

  A direct   the exact request bodies the graph sent (from the fake server's log), replayed in
             order with ``AsyncOpenAI().chat.completions.create``
  B chat     the same logical calls through the package's chat layer (``Systems.acall``:
             langchain-openai ``ChatOpenAI.agenerate`` + reasoning/usage parsing)
  C graph    ``graph.ainvoke`` without checkpointer, journal in an ``InMemoryStore``
  C2 +ckpt   ``runner.start`` with the SQLite checkpointer but the journal in memory
  D full     ``runner.start`` on ``persistence.open_async`` (sync durability, SQLite
             checkpoints + SQLite call journal): what users run
  P batched  D with a prototype fix (bench/_prototypes.py): a history ``Load`` is one
             ``store.abatch`` instead of one ``store.aget`` per journal entry
  F fixed    D with every prototype fix: saver and store on one connection, aiohttp transport,
             batched Load, ChatCall.journal_key computed once
  N0, N1     C and D with the chat layer replaced by canned replies (no HTTP): the
             orchestration's own cost, free of network and server noise

Overhead per call = (D - A) / calls; B-A, C-B, C2-C and D-C2 split it into chat layer, graph,
checkpoints and journal. Wall and CPU time (this process, all threads) are both reported.
Then counts of aiosqlite statements per problem and a cProfile (CPU-time timer) of D.

    python bench/overhead.py                 # ~1 min
    python bench/overhead.py --repeats 15 --subproblems 16 --server inprocess
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


async def run_direct(client, bodies: list[dict]) -> float:
    started = time.perf_counter()
    for body in bodies:
        await client.chat.completions.create(**replay_kwargs(body))
    return time.perf_counter() - started


async def run_chat(systems, calls: list) -> float:
    started = time.perf_counter()
    for call in calls:
        await systems.acall(call)
    return time.perf_counter() - started


async def run_graph_memory(context, problem: str, thread: str) -> float:
    from langgraph.store.memory import InMemoryStore

    from scale_graph import build_graph

    graph = build_graph(None, InMemoryStore())
    started = time.perf_counter()
    await graph.ainvoke({"problem": problem}, {"configurable": {"thread_id": thread}}, context=context)
    return time.perf_counter() - started


async def run_full(graph, store, context, problem: str, thread: str) -> float:
    from scale_graph.runner import start

    started = time.perf_counter()
    await start(graph, store, problem, context, thread)
    return time.perf_counter() - started


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


async def main_async(args: argparse.Namespace, fake: common.Fake, scratch: Path) -> None:
    import openai
    from langgraph.store.memory import InMemoryStore

    from scale_graph import build_graph
    from scale_graph.journal import systems_for
    from scale_graph.persistence import open_async
    from scale_graph.servers import chat

    import _prototypes

    context = common.make_context(fake.base_url, candidates=args.candidates, max_subproblems=max(12, args.subproblems))
    problem = common.PROBLEM
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="EMPTY", max_retries=0)

    async with open_async(scratch / "overhead.db") as (saver, store):
        graph = build_graph(saver, store)
        graph_ckpt_only = build_graph(saver, InMemoryStore())
        graph_batched = _prototypes.batched_load_graph(saver, store)
        shared = _prototypes.open_async_shared(scratch / "overhead-shared.db")
        shared_saver, shared_store = await shared.__aenter__()
        graph_fixed = _prototypes.batched_load_graph(shared_saver, shared_store)
        transport = _prototypes.AiohttpTransport()

        async def run_fixed(r):
            transport.enable()
            try:
                with _prototypes.cached_journal_key():
                    return await run_full(graph_fixed, shared_store, context, problem, f"fixed-{r}")
            finally:
                transport.disable()

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

        async def without_http(run):
            chat.Systems.acall = canned
            try:
                return await run
            finally:
                chat.Systems.acall = original

        chat.Systems.acall = recording
        fake.reset()
        try:
            await run_full(graph, store, context, problem, "record")
        finally:
            chat.Systems.acall = original
        log = fake.stats()["log"]
        bodies = [entry["body"] for entry in log]
        calls = len(bodies)
        assert calls == len(recorded), (calls, len(recorded))
        systems = systems_for(context)
        n_system2 = sum(1 for c in recorded if c.thinking)
        print(f"   one problem = {calls} LLM calls ({n_system2} System 2 with {args.reasoning_bytes} B reasoning), "
              f"{args.subproblems} sub-problems, k={args.candidates}; server: {fake.kind}, latency 0")

        memory_store = InMemoryStore()
        variants = {
            "A direct": lambda r: run_direct(client, bodies),
            "B chat": lambda r: run_chat(systems, recorded),
            "C graph": lambda r: run_graph_memory(context, problem, f"mem-{r}"),
            "C2 +ckpt": lambda r: run_full(graph_ckpt_only, memory_store, context, problem, f"ckpt-{r}"),
            "D full": lambda r: run_full(graph, store, context, problem, f"full-{r}"),
            "P batched": lambda r: run_full(graph_batched, store, context, problem, f"batched-{r}"),
            "F fixed": run_fixed,
            "N0 nullmem": lambda r: without_http(run_graph_memory(context, problem, f"nmem-{r}")),
            "N1 nullfull": lambda r: without_http(run_full(graph, store, context, problem, f"nfull-{r}")),
        }
        for name, run in variants.items():  # warm-up every path once
            await run("warm")

        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, run in variants.items():
                cpu_start = time.process_time()
                times[name].append(await run(r))
                cpu[name].append(time.process_time() - cpu_start)

        print(f"\n   per problem, median [min–max] of {args.repeats} interleaved repeats; "
              f"CPU = this process (all threads; the fake server runs {'elsewhere' if fake.kind == 'process' else 'here too'})")
        print(f"   {'variant':<10} {'wall ms/problem':>26} {'wall ms/call':>12} {'CPU ms/call':>12}")
        med, cpu_med = {}, {}
        for name, values in times.items():
            ms = [v * 1000 for v in values]
            med[name] = common.median(ms)
            cpu_med[name] = common.median([v * 1000 for v in cpu[name]])
            print(f"   {name:<10} {common.spread(ms):>26} {med[name] / calls:12.2f} {cpu_med[name] / calls:12.2f}")

        best = {name: min(values) * 1000 for name, values in times.items()}

        def per_call(a: str, b: str) -> str:
            return (f"{(med[a] - med[b]) / calls:6.2f} ms wall (min-based {(best[a] - best[b]) / calls:6.2f}), "
                    f"{(cpu_med[a] - cpu_med[b]) / calls:6.2f} ms CPU")

        over = (med["D full"] - med["A direct"]) / calls
        print("\n   overhead per LLM call (differences of medians):")
        print(f"     chat layer     B-A   {per_call('B chat', 'A direct')}  (langchain-openai + reply parsing)")
        print(f"     graph+journal  C-B   {per_call('C graph', 'B chat')}  (LangGraph, journal in memory)")
        print(f"     checkpoints    C2-C  {per_call('C2 +ckpt', 'C graph')}  (AsyncSqliteSaver, durability sync)")
        print(f"     SQLite journal D-C2  {per_call('D full', 'C2 +ckpt')}  (AsyncSqliteStore gets/puts)")
        print(f"     total          D-A   {per_call('D full', 'A direct')}   target ≤ 2 ms; "
              f"ratio D/A = {med['D full'] / med['A direct']:.2f}")
        print(f"     what-if: Load as one store.abatch (bench/_prototypes.py): P-A {per_call('P batched', 'A direct')}")
        print(f"     what-if: all prototype fixes (one connection, aiohttp, batched Load, journal_key cached): "
              f"F-A {per_call('F fixed', 'A direct')}")
        print(f"     without HTTP (canned replies): graph+memory journal {med['N0 nullmem'] / calls:.2f} ms wall, "
              f"{cpu_med['N0 nullmem'] / calls:.2f} ms CPU per call; graph+SQLite {med['N1 nullfull'] / calls:.2f} ms wall, "
              f"{cpu_med['N1 nullfull'] / calls:.2f} ms CPU per call")
        paired = [(d - a) * 1000 / calls for d, a in zip(times["D full"], times["A direct"])]
        print(f"     paired D-A per repeat: {common.spread(paired)} ms per call")
        real_ms = args.real_call_s * 1000
        print(f"     share of a real call: {over / real_ms:.2%} of {args.real_call_s:g} s per call "
              f"(assumption: a System 2 call on a GPU vLLM; target ≤ 1 %)")

        for name, g, s in (("D full", graph, store), ("P batched", graph_batched, store)):
            with SqlCounter() as counter:
                await run_full(g, s, context, problem, "count-" + name.replace(" ", "-"))
            c = counter.counts
            nodes = 2 + 2 * args.subproblems + 1
            print(f"   aiosqlite calls per problem, {name} ({nodes} nodes, {calls} LLM calls): {c['execute']} execute, "
                  f"{c['commit']} commit (the store runs BEGIN/…/COMMIT as executes: every store get is a transaction)")

        await transport.aclose()
        await shared.__aexit__(None, None, None)

        if args.profile:
            profiler = cProfile.Profile(time.thread_time)  # CPU of the event-loop thread only
            profiler.enable()
            for r in range(args.profile):
                await run_full(graph, store, context, problem, f"prof-{r}")
            profiler.disable()
            print_profile(profiler, args.profile * calls)


def print_profile(profiler: cProfile.Profile, calls: int, top: int = 15) -> None:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, filename, line, func))
    print(f"\n   cProfile of D, timer = CPU time of the event-loop thread (aiosqlite's worker thread not included): "
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
    parser.add_argument("--reasoning-bytes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--server", choices=("process", "inprocess"), default="process")
    parser.add_argument("--profile", type=int, default=3, help="problems to run under cProfile (0: skip)")
    parser.add_argument("--real-call-s", type=float, default=2.0,
                        help="assumed duration of a real System 2 call (GPU vLLM) for the %% figure")
    args = parser.parse_args()
    scratch = common.clean_environment()
    common.header("overhead: orchestration cost per LLM call")
    with common.fake_server(args.server, latency=0, subproblem_count=args.subproblems,
                            reasoning_bytes=args.reasoning_bytes, difficulties=[0.1, 0.8]) as fake:
        asyncio.run(main_async(args, fake, scratch))


if __name__ == "__main__":
    main()
