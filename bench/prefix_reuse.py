"""Prompt prefix reuse across the calls of one SCALE problem (what vLLM's automatic prefix
caching can serve from the KV cache instead of recomputing).

One problem (default 6 sub-problems, k=8) runs through the graph against the in-process fake
server; its request log gives every prompt in order. Each prompt is measured as

  chars     system + user message text, concatenated
  template  the chat-template-rendered prompt (the package's Qwen3-style template, with the
            call's enable_thinking flag and the generation prompt), i.e. what the server tokenizes
  tokens    the template string tokenized, when a tokenizer folder is given or the local
            model from ``scale servers up`` is found (optional)

For call i, reuse = the longest common prefix with any earlier call's prompt, as a share of
call i's prompt. Overall = reused / total over all calls (the first call cannot reuse anything;
figures without it are printed too). Target ≥ 90 % overall.

    python bench/prefix_reuse.py
    python bench/prefix_reuse.py --subproblems 12 --tokenizer /path/to/model-folder
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two sequences (str or list)."""
    limit = min(len(a), len(b))
    if isinstance(a, str):
        lo, hi = 0, limit  # binary search on slices: fast for long strings
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if a[:mid] == b[:mid]:
                lo = mid
            else:
                hi = mid - 1
        return lo
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def reuse(prompts: list) -> list[tuple[int, int, int]]:
    """Per prompt: (length, reused prefix length, index of the earlier prompt it shares most with)."""
    rows = []
    for i, prompt in enumerate(prompts):
        best, source = 0, -1
        for j in range(i):
            shared = common_prefix(prompt, prompts[j])
            if shared > best:
                best, source = shared, j
        rows.append((len(prompt), best, source))
    return rows


def load_template():
    import jinja2
    from importlib.resources import files

    text = (files("scale_graph.servers") / "qwen3_style_template.jinja").read_text()
    environment = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=False, lstrip_blocks=False)
    return environment.from_string(text)


def render(template, body: dict) -> str:
    kwargs = body.get("chat_template_kwargs") or {}
    return template.render(messages=body["messages"], add_generation_prompt=True, **kwargs)


def find_tokenizer(explicit: str | None):
    candidates = [explicit] if explicit else []
    if not explicit:
        try:
            from scale_graph.servers.local_model import default_model_dir

            candidates.append(str(default_model_dir()))
        except Exception:  # noqa: BLE001 - optional
            pass
    for folder in candidates:
        if folder and Path(folder, "tokenizer.json").exists() or folder and Path(folder, "tokenizer_config.json").exists():
            try:
                from transformers import AutoTokenizer

                return folder, AutoTokenizer.from_pretrained(folder)
            except Exception as exc:  # noqa: BLE001 - optional
                print(f"   (tokenizer at {folder} not usable: {exc})")
    return None, None


def label(body: dict, stage: str) -> str:
    kwargs = body.get("chat_template_kwargs") or {}
    mode = "S2" if kwargs.get("enable_thinking") else "S1"
    return f"{stage}{'' if stage != 'solve' else '/' + mode}"


async def run_problem(base_url: str, subproblems: int, candidates: int) -> None:
    from scale_graph import build_graph
    from scale_graph.persistence import open_async
    from scale_graph.runner import start

    context = common.make_context(base_url, candidates=candidates, max_subproblems=max(12, subproblems))
    async with open_async(Path.cwd() / "prefix.db") as (saver, store):
        await start(build_graph(saver, store), store, common.PROBLEM, context, "prefix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subproblems", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--reasoning-bytes", type=int, default=2000)
    parser.add_argument("--content-bytes", type=int, default=600, help="System 1 solution length (fake server)")
    parser.add_argument("--tokenizer", help="a Hugging Face tokenizer folder (default: the local model if converted)")
    args = parser.parse_args()
    tokenizer_dir, tokenizer = find_tokenizer(args.tokenizer or os.environ.get("SCALE_BENCH_TOKENIZER"))
    common.clean_environment()
    common.header("prefix reuse: share of each prompt that is a prefix of an earlier prompt")
    with common.fake_server("inprocess", latency=0, subproblem_count=args.subproblems, reasoning_bytes=args.reasoning_bytes,
                            content_bytes=args.content_bytes, difficulties=[0.1, 0.8]) as fake:
        asyncio.run(run_problem(fake.base_url, args.subproblems, args.candidates))
        log = fake.stats()["log"]
    bodies = [entry["body"] for entry in log]
    stages = [entry["stage"] for entry in log]
    template = load_template()
    views = {
        "chars": ["".join(m["content"] for m in body["messages"]) for body in bodies],
        "template": [render(template, body) for body in bodies],
    }
    if tokenizer is not None:
        views["tokens"] = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in views["template"]]
    results = {name: reuse(prompts) for name, prompts in views.items()}
    print(f"   one problem: {len(bodies)} calls, {args.subproblems} sub-problems, k={args.candidates}"
          + (f"; tokens from {tokenizer_dir}" if tokenizer is not None else "; no tokenizer (chars only)"))
    header = f"   {'#':>3} {'call':<12}"
    for name in results:
        header += f" {name + ' len':>13} {'reused':>7} {'from':>4}"
    print(header)
    for i, body in enumerate(bodies):
        line = f"   {i:>3} {label(body, stages[i]):<12}"
        for name, rows in results.items():
            length, shared, source = rows[i]
            line += f" {length:>13,} {shared / length:7.1%} {source if source >= 0 else '-':>4}"
        print(line)
    print()
    for name, rows in results.items():
        total = sum(r[0] for r in rows)
        reused = sum(r[1] for r in rows)
        rest_total = sum(r[0] for r in rows[1:])
        rest_reused = sum(r[1] for r in rows[1:])
        by_stage: dict[str, list[int]] = {}
        for (length, shared, _), stage in zip(rows, stages):
            pair = by_stage.setdefault(stage, [0, 0])
            pair[0] += length
            pair[1] += shared
        stage_text = ", ".join(f"{s} {v[1] / v[0]:.1%}" for s, v in by_stage.items())
        print(f"   overall ({name}): {reused / total:.1%} of {total:,} reused; without the first call "
              f"{rest_reused / rest_total:.1%}; by stage: {stage_text}")
    print("   target: ≥ 90 % overall (reuse is measured against earlier prompts only; vLLM caches whole blocks,"
          " e.g. 16 tokens, so the served share is slightly lower)")


if __name__ == "__main__":
    main()
