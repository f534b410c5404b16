"""``python -m tests.support.fake_openai``: the fake server as a process (prints ``READY <base_url>``)."""


from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from .config import REASONING_FIELDS, THINKING_BUDGETS, FakeOpenAIConfig
from .server import FakeOpenAIServer


def _parser() -> argparse.ArgumentParser:
    defaults = FakeOpenAIConfig()
    p = argparse.ArgumentParser(
        prog="python -m tests.support.fake_openai",
        description="Fake OpenAI-compatible chat server for SCALE tests; prints 'READY <base_url>' when listening.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", type=Path, help="also write the chosen port to this file once listening")
    p.add_argument("--latency", type=float, default=defaults.latency)
    p.add_argument("--reasoning-bytes", type=int, default=defaults.reasoning_bytes)
    p.add_argument("--content-bytes", type=int, default=defaults.content_bytes)
    p.add_argument("--reasoning-field", choices=REASONING_FIELDS, default=defaults.reasoning_field)
    p.add_argument("--subproblem-count", type=int, default=defaults.subproblem_count)
    p.add_argument(
        "--difficulties",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(defaults.difficulties),
        help="comma-separated difficulty answers cycled per request",
    )
    p.add_argument("--choice", type=int, default=defaults.choice)
    for name in ("supports-json-schema", "supports-n", "supports-thinking-flag", "supports-continuation"):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--thinking-budget", choices=THINKING_BUDGETS, default=defaults.thinking_budget)
    p.add_argument("--api-key", default=defaults.api_key)
    p.add_argument("--hang-seconds", type=float, default=defaults.hang_seconds)
    p.add_argument("--model-root", default=defaults.model_root)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM."""
    args = vars(_parser().parse_args(argv))
    host, port, port_file = args.pop("host"), args.pop("port"), args.pop("port_file")
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with FakeOpenAIServer(host=host, port=port, **args) as server:
        if port_file is not None:
            port_file.write_text(f"{server.port}\n")
        print(f"READY {server.base_url}", flush=True)
        done.wait()

