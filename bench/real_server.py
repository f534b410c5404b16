"""SCALE vs CoT against real (vLLM) servers: wall time, calls, tokens, prefix-cache hit rate,
and the share of wall time spent outside LLM calls.

Endpoints are resolved exactly as the package resolves them: ``SCALE_SYSTEM{1,2}_BASE_URL`` /
``_MODEL``, else the config file, else the servers recorded by ``scale servers up``. Without
endpoints, or when they do not answer ``GET /models``, the benchmark prints SKIP and exits 0.

The problems (`--data FILE.jsonl`, required: {"id","problem","answer"} lines; the first 3) are solved one after the
other by each method through the package's evaluation methods (``scale`` = the checkpointed
workflow on a temporary SQLite file, ``cot`` = one System 2 call). Every chat call is timed at
the package's chat layer (``Systems.acall``); the server's Prometheus ``/metrics`` (vLLM:
``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits``, in tokens) is read before and
after each method and diffed.

    python bench/real_server.py
    python bench/real_server.py --quick        # bounded budgets: minutes on the local CPU server
    python bench/real_server.py --problems 1 --set candidates=2 --set system2_max_tokens=512
    SCALE_SYSTEM1_BASE_URL=http://127.0.0.1:8000/v1 SCALE_SYSTEM1_MODEL=qwen3 \\
    SCALE_SYSTEM2_BASE_URL=http://127.0.0.1:8000/v1 SCALE_SYSTEM2_MODEL=qwen3 python bench/real_server.py
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

QUICK = {"planner_max_tokens": "160", "max_subproblems": "3", "parse_retries": "0", "force_answer_max_tokens": "128"}
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")
WANTED = {"queries": "prefix_cache_queries", "hits": "prefix_cache_hits",
          "prompt_tokens": "prompt_tokens", "generation_tokens": "generation_tokens"}


def skip(reason: str) -> None:
    print(f"SKIP: {reason}")
    sys.exit(0)


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as response:
        return response.read()


def metrics_url(base_url: str) -> str:
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


def read_metrics(urls: list[str]) -> dict[str, float] | None:
    """Counters summed over label sets and servers; None when no server exposes /metrics."""
    totals = {key: 0.0 for key in WANTED}
    seen = False
    for url in urls:
        try:
            text = get(url).decode()
        except (urllib.error.URLError, OSError):
            continue
        seen = True
        for line in text.splitlines():
            match = METRIC_LINE.match(line)
            if not match or line.startswith("#"):
                continue
            name = match.group(1)
            if name.endswith("_created"):
                continue
            for key, fragment in WANTED.items():
                # counters: vllm:prefix_cache_queries_total, vllm:prompt_tokens_total, ...
                # (not vllm:external_prefix_cache_*, the KV-connector's cache)
                if name in (f"vllm:{fragment}_total", f"vllm:{fragment}"):
                    totals[key] += float(match.group(3))
    return totals if seen else None


class CallTimer:
    """Times every chat call at the package's chat layer (patched while active)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0

    def __enter__(self) -> "CallTimer":
        from scale_graph.servers import chat

        self.original = original = chat.Systems.acall
        timer = self

        async def timed(systems, call):
            started = time.perf_counter()
            try:
                return await original(systems, call)
            finally:
                timer.seconds += time.perf_counter() - started
                timer.calls += 1

        chat.Systems.acall = timed
        return self

    def __exit__(self, *exc) -> None:
        from scale_graph.servers import chat

        chat.Systems.acall = self.original


def coerce(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


async def run_method(method: str, problems, context, db: Path, metric_urls: list[str]) -> dict:
    from scale_graph import build_graph
    from scale_graph.evaluation import methods
    from scale_graph.evaluation.grading import equivalent
    from scale_graph.persistence import open_async
    from scale_graph.state import total_usage

    before = read_metrics(metric_urls)
    outcomes = []
    async with open_async(db) as (saver, store):
        setup = methods.Setup(run=f"bench-{int(time.time())}", context=context, graph=build_graph(saver, store), store=store)
        with CallTimer() as timer:
            started = time.perf_counter()
            for problem in problems:
                outcome = await methods.solve(method, problem, 0, setup)
                outcomes.append((problem, outcome))
                print(f"     {method:<5} {problem.id:<12} {outcome.latency_s:8.1f} s  answer {outcome.answer!s:<10} "
                      f"(gold {problem.answer})" + (f"  ERROR {outcome.error}" if outcome.error else ""), flush=True)
            wall = time.perf_counter() - started
    after = read_metrics(metric_urls)
    usage = [total_usage(o.usage) for _, o in outcomes]
    correct = 0
    for problem, outcome in outcomes:
        if outcome.answer is not None:
            try:
                correct += bool(equivalent(problem.answer, outcome.answer))
            except Exception:  # noqa: BLE001 - grading is informative only here
                pass
    row = {"method": method, "wall": wall, "llm": timer.seconds, "calls": timer.calls,
           "requests": sum(u.get("calls", 0) for u in usage),
           "prompt": sum(u.get("prompt_tokens", 0) for u in usage),
           "completion": sum(u.get("completion_tokens", 0) for u in usage),
           "reasoning": sum(u.get("reasoning_tokens", 0) for u in usage),
           "errors": sum(1 for _, o in outcomes if o.error), "correct": correct, "n": len(outcomes)}
    if before is not None and after is not None:
        row["cache"] = {key: after[key] - before[key] for key in WANTED}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a JSONL dataset (id, problem, answer per line)")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--methods", default="scale,cot")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a run parameter (Context field), e.g. candidates=2")
    parser.add_argument("--quick", action="store_true",
                        help=f"minutes on a CPU server: {' '.join('--set ' + k + '=' + v for k, v in QUICK.items())}")
    args = parser.parse_args()
    if args.quick:
        args.set = [f"{k}={v}" for k, v in QUICK.items()] + args.set

    from scale_graph import Context
    from scale_graph.evaluation.datasets import read_jsonl
    from scale_graph.servers.endpoints import endpoints
    from scale_graph.settings import ConfigError

    common.header("real server: SCALE vs CoT")
    overrides = dict(item.split("=", 1) for item in args.set)
    try:
        context = Context(**{key: coerce(value) for key, value in overrides.items()})
        system1, system2 = endpoints(context)
    except ConfigError as exc:
        skip(f"no endpoints: {exc}")
    for endpoint in (system1, system2):
        try:
            get(endpoint.base_url.rstrip("/") + "/models")
        except (urllib.error.URLError, OSError) as exc:
            skip(f"System {endpoint.system} endpoint {endpoint.base_url} is unreachable: {exc}")
    metric_urls = sorted({metrics_url(system1.base_url), metrics_url(system2.base_url)})
    has_metrics = read_metrics(metric_urls) is not None
    path = Path(args.data)
    if not path.exists():
        skip(f"no data file {path}")
    problems = read_jsonl(path)[: args.problems]
    print(f"   System 1: {system1.model} at {system1.base_url}; System 2: {system2.model} at {system2.base_url}")
    print(f"   metrics: {', '.join(metric_urls)}" + ("" if has_metrics else " (not served: no prefix-cache figures)"))
    print(f"   {len(problems)} problems from {path}; k={context.candidates}, τ={context.threshold}, "
          f"budgets S1 {context.system1_max_tokens} / S2 {context.system2_max_tokens} / planner {context.planner_max_tokens} tokens")
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-real-") as scratch:
        for method in args.methods.split(","):
            rows.append(asyncio.run(run_method(method, problems, context, Path(scratch) / f"{method}.db", metric_urls)))
    print(f"\n   {'method':<6} {'wall':>9} {'calls':>6} {'prompt tok':>11} {'compl tok':>10} {'reason tok':>10} "
          f"{'cache hit':>10} {'outside LLM':>12} {'correct':>8}")
    for row in rows:
        cache = row.get("cache")
        hit = (f"{cache['hits'] / cache['queries']:.1%}" if cache and cache["queries"] else "n/a")
        outside = 1 - row["llm"] / row["wall"] if row["wall"] else float("nan")
        print(f"   {row['method']:<6} {row['wall']:8.1f}s {row['calls']:>6} {row['prompt']:>11,} {row['completion']:>10,} "
              f"{row['reasoning']:>10,} {hit:>10} {outside:12.2%} {row['correct']:>4}/{row['n']}"
              + (f"  ({row['errors']} errors)" if row["errors"] else ""))
        if cache:
            print(f"          server counters: prefix-cache queries {cache['queries']:,.0f}, hits {cache['hits']:,.0f}, "
                  f"prompt tokens {cache['prompt_tokens']:,.0f}, generated {cache['generation_tokens']:,.0f}")
    print("   outside LLM = 1 − (time inside Systems.acall) / wall; calls = chat-layer calls (a request with n>1 is one)")


if __name__ == "__main__":
    main()
