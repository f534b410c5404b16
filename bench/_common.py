"""Helpers shared by the benchmarks: the fake server (in-process or as a separate process),
a clean environment, run contexts, and small statistics.

Not a benchmark itself. Every benchmark script adds this folder to ``sys.path`` and imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SYSTEM1_MODEL = "scale-system1"
SYSTEM2_MODEL = "scale-system2"


def clean_environment(keep: tuple[str, ...] = ()) -> Path:
    """Drop every ``SCALE_*`` variable (except ``keep``) and point the state dir at a fresh temp
    folder, so no user config or recorded servers leak into a run. Returns a scratch folder
    that is also made the working directory (no ``./scale.toml`` can be picked up)."""
    for name in list(os.environ):
        if name.startswith("SCALE_") and name not in keep:
            del os.environ[name]
    scratch = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    os.environ["SCALE_STATE_DIR"] = str(scratch / "state")
    os.chdir(scratch)
    return scratch


# ---- the fake OpenAI-compatible server ----------------------------------------------------
@dataclass
class Fake:
    """A running fake server: its base URL and a way to read its stats and change its config."""

    base_url: str
    kind: str  # "process" or "inprocess"
    _stats: Callable[[], dict[str, Any]]
    _configure: Callable[..., Any]
    _reset: Callable[[], Any]

    def stats(self) -> dict[str, Any]:
        return self._stats()

    def configure(self, **changes: Any) -> None:
        self._configure(**changes)

    def reset(self) -> None:
        self._reset()


def _root(base_url: str) -> str:
    return base_url.rsplit("/v1", 1)[0]


def _http_json(url: str, payload: dict | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _cli_args(config: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


#: The repository: the fake server lives in its tests package (``tests.support.fake_openai``).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@contextlib.contextmanager
def fake_server(kind: str = "process", **config: Any) -> Iterator[Fake]:
    """The fake server as a separate process (its event loop does not compete with the client
    for the GIL) or in this process (its own thread, same GIL)."""
    if kind == "inprocess":
        from tests.support.fake_openai import FakeOpenAIServer

        with FakeOpenAIServer(**config) as server:
            yield Fake(server.base_url, kind, server.stats, server.configure, server.reset)
        return
    if kind != "process":
        raise ValueError(f"unknown server kind {kind!r}")
    command = [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", *_cli_args(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("READY "):
            process.kill()
            raise RuntimeError(f"fake server did not start: {line!r} {process.stderr.read() if process.stderr else ''}")
        base_url = line.split()[1]
        root = _root(base_url)
        yield Fake(base_url, kind,
                   lambda: _http_json(root + "/_stats"),
                   lambda **changes: _http_json(root + "/_config", changes),
                   lambda: _http_json(root + "/_reset", {}))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_context(base_url: str, **overrides: Any):
    """A Context pointing both systems at ``base_url`` (fake-server model names)."""
    from scale_graph import Context

    params = dict(system1_base_url=base_url, system1_model=SYSTEM1_MODEL,
                  system2_base_url=base_url, system2_model=SYSTEM2_MODEL, candidates=8)
    params.update(overrides)
    return Context(**params)


PROBLEM = ("Let x, y and z be positive reals with xyz = 1 and x + y + z = 6. "
           "Find the largest possible value of xy + yz + zx, as a reduced fraction p/q, and report p + q.")


# ---- statistics and printing -------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """``median [min–max]`` in the values' unit."""
    if not values:
        return "n/a"
    return f"{median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def machine_line() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"{time.strftime('%Y-%m-%d %H:%M')} · nproc {os.cpu_count()} · CPU {cpu} · "
            f"Python {platform.python_version()} · load avg {load[0]:.2f}")


def versions() -> str:
    from importlib.metadata import version

    names = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "langchain-openai", "openai", "aiosqlite")
    found = []
    for name in names:
        with contextlib.suppress(Exception):
            found.append(f"{name} {version(name)}")
    import sqlite3

    found.append(f"sqlite {sqlite3.sqlite_version}")
    return ", ".join(found)


def package_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip()[:70] + (" (src modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   {machine_line()}")
    print(f"   {versions()}")
    print(f"   package at commit {package_commit()}")
