"""Call reuse across runs: the paper's five-value τ sweep with and without reuse.

``scale eval --threshold 0.2,0.3,0.5,0.7,0.9`` runs as a separate process (the public CLI)
against the in-process fake server, once with ``--no-reuse`` (five independent runs) and once
with reuse (the default). The fake server's difficulty answer is decided by the sub-problem
number alone (1 → 0.25, 2 → 0.6, 3 → 0.85), so the runs route 2-2-2 (τ 0.2), 1-2-2 (0.3, 0.5),
1-1-2 (0.7) and 1-1-1 (0.9) — identically with and without reuse, which the script checks.

Printed per mode: requests the server answered, completion tokens generated (the results
store's ``generated_tokens``: calls not reused) beside the sum of the runs' own Tok, wall time
and the eval process's CPU time. Target: reuse generates ≤ 50 % of the independent runs' tokens,
per-run results identical.

    python bench/reuse.py
    python bench/reuse.py --samples 4 --candidates 8 --reasoning-bytes 20000 --latency 0.2

How much reuse saves depends on where the tokens go: everything up to the first sub-problem
whose route differs is made once, but the System 2 solutions after a divergence are still
made per distinct route. With these routes, 6 of the independent runs' 8 System 2 solutions
per sample remain, so the share of generated tokens tends to 75 % as thinking dominates, and
to the request share (17 of 40 requests per sample, 42.5 %) as the planning calls do.
"""


from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

THRESHOLDS = "0.2,0.3,0.5,0.7,0.9"
DIFFICULTY = {1: 0.25, 2: 0.6, 3: 0.85}
PROBLEMS = [("p1", "What is half of 408?", "204"), ("p2", "What is 12 squared minus 119?", "25"),
            ("p3", "What is the square of the number of sides of a regular pentagon?", "25"),
            ("p4", "How many minutes are in 3.4 hours?", "204")]


def difficulty_of(body: dict[str, Any]) -> float:
    number = re.search(r"difficulty of sub-problem (\d+)", str(body["messages"][-1]["content"]))
    return DIFFICULTY.get(int(number.group(1)) if number else 1, 0.5)


def write_dataset(folder: Path) -> Path:
    import json

    path = folder / "sweep.jsonl"
    path.write_text("".join(json.dumps({"id": i, "problem": p, "answer": a}) + "\n" for i, p, a in PROBLEMS))
    return path


def sweep(name: str, dataset: Path, args: argparse.Namespace, reuse: bool) -> dict[str, float]:
    """One `scale eval` process: wall time and its CPU time (user + system, children included)."""
    command = [sys.executable, "-m", "scale_graph.cli", "eval", "--dataset", str(dataset), "--threshold", THRESHOLDS,
               "--samples", str(args.samples), "-k", str(args.candidates), "--concurrency", str(args.concurrency),
               "--name", name, *([] if reuse else ["--no-reuse"])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"scale eval failed:\n{done.stderr[-2000:]}")
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def stored(name: str) -> dict[tuple[str, str, int], Any]:
    from scale_graph.evaluation.store import ResultsStore

    with ResultsStore() as store:
        return store.samples(f"{name}-*", prefix=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2, help="samples per problem (default 2)")
    parser.add_argument("--candidates", type=int, default=8, help="k decompositions (default 8, the paper's)")
    parser.add_argument("--concurrency", type=int, default=16, help="problem samples in flight (default 16)")
    parser.add_argument("--reasoning-bytes", default="400,4000",
                        help="thinking text per System 2 call; a comma list measures each (default 400,4000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the fake server waits per request")
    args = parser.parse_args()
    scratch = common.clean_environment()
    dataset = write_dataset(scratch)
    common.header(f"call reuse: τ sweep {THRESHOLDS}, {len(PROBLEMS)} problems × {args.samples} samples, "
                  f"k={args.candidates}, latency {args.latency} s")
    for reasoning in (int(value) for value in args.reasoning_bytes.split(",")):
        print(f"\n-- System 2 thinking {reasoning:,} B per call")
        with common.fake_server("inprocess", difficulties=difficulty_of, reasoning_bytes=reasoning,
                                latency=args.latency) as fake:
            os.environ.update({"SCALE_SYSTEM1_BASE_URL": fake.base_url, "SCALE_SYSTEM1_MODEL": common.SYSTEM1_MODEL,
                               "SCALE_SYSTEM2_BASE_URL": fake.base_url, "SCALE_SYSTEM2_MODEL": common.SYSTEM2_MODEL})
            measure(fake, dataset, args, f"r{reasoning}")


def measure(fake: common.Fake, dataset: Path, args: argparse.Namespace, tag: str) -> None:
    rows = []
    for name, reuse in ((f"independent-{tag}", False), (f"reused-{tag}", True)):
        fake.reset()
        times = sweep(name, dataset, args, reuse)
        results = stored(name)
        rows.append((name, fake.stats()["requests"], sum(r.generated_tokens for r in results.values()),
                     sum(r.completion_tokens for r in results.values()), times, results))
    (_, alone_requests, alone_generated, _, _, alone), (_, _, shared_generated, _, _, shared) = rows
    same = all((a.answer, a.hard, a.completion_tokens, a.tokens_by_stage) ==
               (shared[key].answer, shared[key].hard, shared[key].completion_tokens, shared[key].tokens_by_stage)
               for key, a in alone.items()) and alone.keys() == shared.keys()
    print(f"{'mode':<18} {'requests':>9} {'generated tok':>14} {'Σ Tok of runs':>14} {'share':>7} {'wall s':>8} {'CPU s':>7}")
    for name, requests, generated, counted, times, _ in rows:
        print(f"{name:<18} {requests:>9,} {generated:>14,} {counted:>14,} {100 * generated / alone_generated:>6.1f}% "
              f"{times['wall']:>8.2f} {times['cpu']:>7.2f}")
    print(f"per-run results identical (answers, Hard, Tok by stage): {'yes' if same else 'NO'}")
    verdict = "met" if shared_generated <= 0.5 * alone_generated and same else "MISSED"
    print(f"target: reuse ≤ 50 % of the generated tokens with identical results — {verdict} "
          f"({100 * shared_generated / alone_generated:.1f} %, requests {rows[1][1]:,} vs {alone_requests:,})")


if __name__ == "__main__":
    main()
