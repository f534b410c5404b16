"""How fast `scale ui` answers: the run list over 10,000 runs, a run of 12 sub-problems, an
evaluation of 5 τ values (the issue's targets: each page under 1 s on this machine).

Set-up (not timed): one real 12-sub-problem SCALE run against the in-process fake server; its
checkpoints, writes and call journal copied under ``--full`` new thread ids (complete runs, the
newest, so the first page shows them; ≈ 1.7 GB for the default 10,000, removed at the end);
``--runs`` in all, any rest run records only (older, "not started"); a
``scale eval --threshold 0.2,0.3,0.5,0.7,0.9`` through the CLI. `scale ui` reads every run once
when it starts (not timed here); the first page after the database changed re-reads what changed. Then ``scale ui`` runs as its own
process and each page's JSON is fetched over HTTP ``--repeat`` times (median, spread); with
Debian's chromium and selenium present, the time until a browser shows each page is measured too.

    python bench/ui.py
    python bench/ui.py --runs 20000 --full 2000 --repeat 9
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, clean_environment, fake_server, header, make_context, spread  # noqa: E402

DATASET = [{"id": f"p{n}", "problem": f"What is {n} times {n + 3}?", "answer": str(n * (n + 3))} for n in range(1, 5)]
TAUS = "0.2,0.3,0.5,0.7,0.9"


def real_run(db: Path, base_url: str) -> str:
    """One SCALE run of 12 sub-problems; returns its thread id."""
    from scale_graph import runner
    from scale_graph.graph import build_graph
    from scale_graph.persistence import open_async

    async def work() -> None:
        async with open_async(db) as (saver, store):
            await runner.start(build_graph(saver, store), store, "What is 12 squared minus 119?",
                               make_context(base_url, candidates=2, threshold=0.5), "template")

    asyncio.run(work())
    return "template"


def clone(db: Path, template: str, full: int, total: int) -> None:
    """``full`` copies of run ``template`` (checkpoints, writes, journal, record), newest first, and
    ``total - full - 1`` older run records without checkpoints."""
    with sqlite3.connect(db) as conn:
        record = json.loads(conn.execute("SELECT value FROM store WHERE prefix = 'scale.runs' AND key = ?",
                                         (template,)).fetchone()[0])
        now = time.time()
        for n in range(full):
            thread = f"copy-{n:05d}"
            for table in ("checkpoints", "writes"):  # every column but the thread id copied as it is
                columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] != "thread_id"]
                conn.execute(f"INSERT INTO {table} (thread_id, {', '.join(columns)}) SELECT ?, {', '.join(columns)} "
                             f"FROM {table} WHERE thread_id = ?", (thread, template))
            conn.execute("INSERT INTO store (prefix, key, value, created_at, updated_at) SELECT ?, key, value, "
                         "created_at, updated_at FROM store WHERE prefix = ?", (f"scale.{thread}.calls", f"scale.{template}.calls"))
            conn.execute("INSERT INTO store (prefix, key, value) VALUES ('scale.runs', ?, ?)",
                         (thread, json.dumps({**record, "created": now + n})))
        conn.executemany("INSERT INTO store (prefix, key, value) VALUES ('scale.runs', ?, ?)",
                         [(f"record-{n:05d}", json.dumps({**record, "created": now - 86400 - n}))
                          for n in range(total - full - 1)])


@contextlib.contextmanager
def serving(db: Path, results: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "scale_graph.cli", "ui", "--db", str(db), "--results-db",
                                str(results), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/api/runs?per_page=1", timeout=5).status_code == 200:
                    break
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed_json(url: str, repeat: int) -> tuple[list[float], Any]:
    import httpx

    times, body = [], None
    with httpx.Client(timeout=60) as client:
        client.get(url)  # warm: first import paths, SQLite page cache
        for _ in range(repeat):
            started = time.perf_counter()
            reply = client.get(url)
            times.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
            body = reply.json()
    return times, body


def browser_times(pages: dict[str, tuple[str, str]], repeat: int) -> dict[str, list[float]] | None:
    """Seconds from navigation until the page's content is drawn, in headless Debian chromium."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    import os
    import tempfile

    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.TemporaryDirectory(prefix="scale-bench-chromium-")
    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile.name}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    found: dict[str, list[float]] = {}
    try:
        for name, (url, css) in pages.items():
            driver.get(url)  # warm
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
            found[name] = []
            for _ in range(repeat):
                started = time.perf_counter()
                driver.get(url)
                WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
                found[name].append(time.perf_counter() - started)
    finally:
        driver.quit()
        profile.cleanup()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the database")
    parser.add_argument("--full", type=int, default=10_000, help="of which complete 12-sub-problem runs (≈ 175 kB each)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scratch = clean_environment()
    header("scale ui: page times")
    db, results = scratch / "scale.db", scratch / "scale-results.db"
    with fake_server("inprocess", subproblem_count=12, difficulties=[0.1, 0.7, 0.3, 0.9]) as fake:
        import os

        for system in (1, 2):
            os.environ[f"SCALE_SYSTEM{system}_BASE_URL"] = fake.base_url
            os.environ[f"SCALE_SYSTEM{system}_MODEL"] = f"scale-system{system}"
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
        template = real_run(db, fake.base_url)
        started = time.perf_counter()
        clone(db, template, args.full, args.runs)
        print(f"set-up: 1 real 12-sub-problem run, {args.full} copies, {args.runs:,} runs in all "
              f"({time.perf_counter() - started:.1f} s, {db.stat().st_size / 1e6:.0f} MB)")
        data = scratch / "data"
        data.mkdir()
        (data / "amc23.jsonl").write_text("".join(json.dumps(row) + "\n" for row in DATASET), encoding="utf-8")
        evaluated = subprocess.run([sys.executable, "-m", "scale_graph.cli", "eval", "-d", "amc23", "--data-dir",
                                    str(data), "-t", TAUS, "-k", "2", "-n", "2", "--db", str(db),
                                    "--results-db", str(results)], capture_output=True, text=True)
        assert evaluated.returncode == 0, evaluated.stderr
        try:
            measure(db, results, template, args)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # up to a few hundred MB


def measure(db: Path, results: Path, template: str, args: argparse.Namespace) -> None:
    """Serve the database with `scale ui` and print each page's times."""
    with serving(db, results) as base:
        pages = {f"runs list (page 1 of {args.runs:,}, 50 rows)": (f"{base}/api/runs", f"{base}/runs", "#runs-table tbody tr"),
                 "runs list filtered by text": (f"{base}/api/runs?text=copy-0019", f"{base}/runs?text=copy-0019",
                                                "#runs-table tbody tr"),
                 "runs list, last page": (f"{base}/api/runs?page={args.runs // 50}", f"{base}/runs?page={args.runs // 50}",
                                          "#runs-table tbody tr"),
                 "run of 12 sub-problems": (f"{base}/api/run?id={template}", f"{base}/run?id={template}",
                                            "#timeline li.step"),
                 "evaluation, 5 τ values": (f"{base}/api/evaluations", f"{base}/evaluations",
                                            'svg.chart[data-chart="threshold"]')}
        print(f"{'page':42} JSON over HTTP, s: median [min–max]")
        for name, (api, _, _) in pages.items():
            times, body = timed_json(api, args.repeat)
            size = len(body.get("rows", body.get("subproblems", body.get("metrics", []))))
            print(f"{name:42} {spread(times)}  ({size} items)")
        drawn = browser_times({name: (page, css) for name, (_, page, css) in pages.items()}, args.repeat)
        if drawn is None:
            print("browser: chromium/chromedriver/selenium not found, not measured")
        else:
            print(f"{'page':42} until drawn in headless chromium, s: median [min–max]")
            for name, times in drawn.items():
                print(f"{name:42} {spread(times)}")


if __name__ == "__main__":
    main()
