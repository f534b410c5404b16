"""Scale-out: problems per minute and orchestrator CPU per LLM call for 1, 2, 4 … worker
processes on one PostgreSQL database, and one process on SQLite for reference.

Every worker is a plain ``scale eval`` process (``python -m scale_graph.cli eval``). With
``--split shared`` (the default: real use) all of them run the SAME dataset under the SAME run
name, all started together (the first to get there creates the run): what a user does
to add workers by hand, and what the Ray workers do. Each takes the samples in an order of its
own; a sample another worker stored is skipped by one indexed read, one another live process
holds is skipped at its claim (the lease). With ``--split slices`` worker i gets every N-th
problem as a run of its own (``--name`` per slice): no two processes ever touch one sample, so it
measures the same work minus the contention between workers on one run.

Set-up per configuration: a fresh database (PostgreSQL: a new database on one throwaway cluster
made with ``initdb``/``pg_ctl`` in a temp dir; SQLite: new files), the fake OpenAI server as a
separate process answering every call after ``--latency`` (200 ms) with System 2 calls giving
``--reasoning-bytes`` of reasoning, SCALE with k = ``--candidates`` and ``--subproblems``
sub-problems, ``--concurrency`` samples in flight per process (the CLI default, 16).

Columns:
  problems/min  results stored / wall (first worker started → last worker exited) × 60
  vs 1          that rate relative to 1 process on PostgreSQL
  calls/prob    calls the server counted / problems (repeated work would raise it)
  worker        user+sys CPU of the worker processes (``RUSAGE_CHILDREN``, this script's other
                children are reaped outside the measured window) per call, in ms
  -start        the same without each process's fixed cost (imports, set-up, grader warm-up,
                final report), measured by one more worker that finds every sample stored
  start         that fixed cost, CPU seconds per process
  PG CPU        the PostgreSQL server's CPU (postmaster + backends, /proc) per call, in ms
  fake CPU      the fake server's CPU per call, in ms
  busy cores    whole machine (/proc/stat) over the wall time; "others" = busy cores minus
                workers, PostgreSQL and fake server: the load of everything else on the box
  split, exits  samples each worker computed (a sample another worker had just finished is
                re-read from its checkpoint and counted by both: no LLM call is repeated, as
                calls/prob shows), and when each worker exited

    python bench/scaleout.py --quick                    # 64 problems, ~3 min
    python bench/scaleout.py                            # 512 problems, 1/2/4 processes + SQLite
    python bench/scaleout.py --split slices             # disjoint slices instead of one shared run
    python bench/scaleout.py --processes 1,2 --problems 256 --latency 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

sys.path.insert(0, str(common.REPO))
from tests.support.ports import free_port  # noqa: E402
from tests.support.postgres import PASSWORD, PostgresServer, _bindir  # noqa: E402

RUN_NAME = "scaleout"
TICKS = os.sysconf("SC_CLK_TCK")


# ---- CPU accounting from /proc ----------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                pids.append(int(entry.name))
    return pids


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` (with its reaped children) plus its live children: a postmaster's
    backends come and go per connection, and their time lands in its cutime when reaped."""
    fields = _stat_fields(root)
    if fields is None:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    for child in _children_of(root):
        child_fields = _stat_fields(child)
        if child_fields is not None:
            ticks += int(child_fields[11]) + int(child_fields[12])
    return ticks / TICKS


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fake_server_pid() -> int | None:
    """The fake server that ``_common.fake_server`` started as this process's child."""
    for pid in _children_of(os.getpid()):
        with contextlib.suppress(OSError):
            if b"tests.support.fake_openai" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


# ---- a throwaway PostgreSQL cluster -----------------------------------------------------
@contextlib.contextmanager
def postgres_cluster(statements: bool = False) -> Iterator[PostgresServer]:
    """A cluster as tests/support/postgres.py makes it (as ``postgres`` when run as root, since initdb
    refuses root), stopped and deleted on exit; ``statements``: with pg_stat_statements loaded."""
    bindir = _bindir()
    if bindir is None:
        raise SystemExit("scaleout: initdb/pg_ctl not found (/usr/lib/postgresql/*/bin or PATH)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="scale-bench-pg-"))
    server: PostgresServer | None = None
    try:
        (folder / "pw").write_text(PASSWORD + "\n")
        if as_user:
            for path in (folder, folder / "pw"):
                shutil.chown(path, "postgres", "postgres")
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                        "--pwfile", str(folder / "pw"), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        if statements:  # the extension is loaded at start; created per database in new_database()
            with open(folder / "data" / "postgresql.conf", "a") as conf:
                conf.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n")
        server = PostgresServer(folder, free_port(), bindir, as_user)
        server.start()
        yield server
    finally:
        if server is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.folder / "data" / "postmaster.pid").read_text().split()[0])


def statements_reset(server: PostgresServer) -> None:
    server.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    server.sql("SELECT pg_stat_statements_reset()")


def statements_report(server: PostgresServer, url: str, calls: int, top: int) -> str:
    """The ``top`` statements of ``url``'s database by total execution time: executions and
    milliseconds per LLM call (what the database is asked to do for each call)."""
    database = url.rsplit("/", 1)[1]
    rows = server.sql("SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g') "
                      "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                      f"WHERE d.datname = '{database}' ORDER BY total_exec_time DESC")
    per = max(calls, 1)
    total_n, total_ms = sum(r[0] for r in rows), sum(r[1] for r in rows)
    sessions, commits, rollbacks = server.sql("SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database "
                                              f"WHERE datname = '{database}'")[0]
    lines = [f"      statements per LLM call {total_n / per:6.2f}, execution {total_ms / per:6.3f} ms per call; "
             f"{sessions} sessions (connections), {(commits + rollbacks) / per:.2f} transactions per call; top {top}:"]
    lines += [f"      {n / per:6.2f}/call {ms / per:7.3f} ms/call {rows_ / max(n, 1):7.1f} rows/exec  {query[:110]}"
              for n, ms, rows_, query in rows[:top]]
    return "\n".join(lines)


# ---- one configuration ------------------------------------------------------------------
@dataclass
class Row:
    label: str
    processes: int
    problems: int  # results stored without an error
    failed: int
    wall: float
    calls: int
    worker_cpu: float
    pg_cpu: float | None
    fake_cpu: float
    busy_cores: float
    exit_codes: list[int]
    startup_cpu: float  # of one worker that finds every sample stored: imports, set-up, the report
    last_exit: list[float]  # seconds from the start to each worker's exit
    split: list[int | None]  # samples each worker computed (its "evaluated now" line)

    def show(self, base_rate: float | None) -> str:
        rate = self.problems / self.wall * 60
        per_call = max(self.calls, 1)
        steady = max(self.worker_cpu - self.processes * self.startup_cpu, 0.0)
        ours = (self.worker_cpu + (self.pg_cpu or 0.0) + self.fake_cpu) / self.wall
        pg = f"{self.pg_cpu * 1000 / per_call:6.2f}" if self.pg_cpu is not None else f"{'–':>6}"
        ratio = f"{rate / base_rate:5.2f}×" if base_rate else f"{'–':>6}"
        codes = "" if set(self.exit_codes) == {0} else f"  exit codes {self.exit_codes}"
        failed = f"  {self.failed} failed" if self.failed else ""
        return (f"   {self.label:<11} {self.processes:>5} {self.problems:>8} {self.wall:7.1f} s {rate:8.1f} {ratio} "
                f"{self.calls / max(self.problems, 1):7.2f} {self.worker_cpu * 1000 / per_call:7.2f} "
                f"{steady * 1000 / per_call:6.2f} {self.startup_cpu:5.1f} s {pg} "
                f"{self.fake_cpu * 1000 / per_call:6.2f} {self.busy_cores:6.2f} {self.busy_cores - ours:6.2f}"
                f"{failed}{codes}  split {'+'.join('?' if n is None else str(n) for n in self.split)}, "
                f"exits {', '.join(f'{t:.0f}' for t in self.last_exit)} s")


HEADER = (f"   {'database':<11} {'procs':>5} {'problems':>8} {'wall':>9} {'prob/min':>8} {'vs 1':>6} "
          f"{'calls/p':>7} {'worker':>7} {'-start':>6} {'start':>7} {'PG':>6} {'fake':>6} {'busy':>6} {'others':>6}\n"
          f"   {'':<11} {'':>5} {'':>8} {'':>9} {'':>8} {'':>6} {'':>7} {'CPU ms/call':>14} {'CPU/proc':>8} "
          f"{'CPU ms/call':>13} {'cores':>13}")


def write_dataset(path: Path, numbers: range) -> Path:
    """Problems ``numbers``, all distinct (their answers do not matter: only throughput is measured)."""
    rows = ({"id": f"p{i:05d}", "problem": f"{common.PROBLEM} (variant {i})", "answer": "0"} for i in numbers)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def worker_command(args: argparse.Namespace, dataset: Path, name: str, db: str, results_db: str) -> list[str]:
    return [sys.executable, "-m", "scale_graph.cli", "eval", "--dataset", str(dataset), "--method", "scale",
            "--samples", "1", "--candidates", str(args.candidates), "--threshold", str(args.threshold),
            "--concurrency", str(args.concurrency), "--name", name, "--db", db, "--results-db", results_db]


def set_up_schemas(db: str, results_db: str) -> None:
    """Create the run and results tables before the workers start: scaling out adds workers to a
    database that exists, and workers creating a fresh schema at one instant is a start-up matter
    (measured by nothing here)."""
    from scale_graph.evaluation.store import ResultsStore
    from scale_graph.persistence import open_sync

    ResultsStore(results_db).close()
    with open_sync(db):
        pass


def stored_results(results_db: str) -> tuple[int, int]:
    """(results without an error, results with one) of the benchmark run."""
    from scale_graph.evaluation.store import ResultsStore

    store = ResultsStore(results_db, must_exist=True)
    try:
        results = [result for run in store.runs([RUN_NAME + "*"]) for result in run.results]
    finally:
        store.close()
    failed = sum(1 for result in results if result.error is not None)
    return len(results) - failed, failed


def evaluated_now(log: Path) -> int | None:
    """The count in the worker's ``N problem sample(s) evaluated now`` line; samples another
    worker finished first count too (re-read from their checkpoints, no LLM call repeated)."""
    found = re.search(r"(\d+) problem sample\(s\) evaluated now", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def worker_commands(args: argparse.Namespace, processes: int, problems: int, db: str, results_db: str,
                    folder: Path) -> list[list[str]]:
    """Per worker: the whole dataset under one run name (``--split shared``), or its own slice
    of every ``processes``-th problem under a run name of its own (``--split slices``)."""
    if args.split == "shared":
        dataset = write_dataset(folder / "scaleout.jsonl", range(problems))
        return [worker_command(args, dataset, RUN_NAME, db, results_db)] * processes
    return [worker_command(args, write_dataset(folder / f"slice{processes}-{i}.jsonl", range(i, problems, processes)),
                           f"{RUN_NAME}-{i}", db, results_db) for i in range(processes)]


def run_config(args: argparse.Namespace, label: str, processes: int, problems: int, db: str, results_db: str,
               fake: common.Fake, fake_pid: int, pg_pid: int | None, logs: Path) -> Row:
    fake.reset()
    env = {**os.environ, "SCALE_SYSTEM1_BASE_URL": fake.base_url, "SCALE_SYSTEM1_MODEL": common.SYSTEM1_MODEL,
           "SCALE_SYSTEM2_BASE_URL": fake.base_url, "SCALE_SYSTEM2_MODEL": common.SYSTEM2_MODEL}
    commands = worker_commands(args, processes, problems, db, results_db, logs)
    set_up_schemas(db, results_db)

    def log_path(index: int | str) -> Path:
        return logs / f"{label}-{processes}-{index}.log"

    workers: list[subprocess.Popen] = []
    files = []
    cpu0, fake0 = children_cpu_s(), tree_cpu_s(fake_pid)
    pg0 = tree_cpu_s(pg_pid) if pg_pid else 0.0
    busy0, total0 = machine_busy_s()
    started = time.perf_counter()
    deadline = time.monotonic() + args.timeout
    try:
        for index in range(processes):
            log = open(log_path(index), "w")  # noqa: SIM115 - closed below
            files.append(log)
            workers.append(subprocess.Popen(commands[index], env=env, stdout=log, stderr=subprocess.STDOUT))
        exits: dict[int, float] = {}
        while len(exits) < len(workers) and time.monotonic() < deadline:
            for index, worker in enumerate(workers):
                if index not in exits and worker.poll() is not None:
                    exits[index] = time.perf_counter() - started
            time.sleep(0.05)
        codes = [worker.returncode if worker.returncode is not None else -9 for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in files:
            log.close()
    wall = time.perf_counter() - started
    time.sleep(0.5)  # the backends of the closed connections exit and are reaped by the postmaster
    busy1, total1 = machine_busy_s()
    worker_cpu, fake_cpu = children_cpu_s() - cpu0, tree_cpu_s(fake_pid) - fake0
    pg_cpu = tree_cpu_s(pg_pid) - pg0 if pg_pid else None
    calls = fake.stats()["requests"]
    done, failed = stored_results(results_db)
    idle_cpu = children_cpu_s()
    with open(log_path("idle"), "w") as log:
        subprocess.run(commands[0], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout, check=False)
    idle_cpu = children_cpu_s() - idle_cpu
    busy = (busy1 - busy0) / max(total1 - total0, 1e-9) * (os.cpu_count() or 1)
    return Row(label, processes, done, failed, wall, calls, worker_cpu, pg_cpu, fake_cpu, busy, codes, idle_cpu,
               [exits.get(i, wall) for i in range(processes)], [evaluated_now(log_path(i)) for i in range(processes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="64 problems (a smoke run)")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts on PostgreSQL")
    parser.add_argument("--split", choices=("shared", "slices"), default="shared",
                        help="shared: every worker on the whole dataset and one run name, leases share the "
                        "items (real use); slices: worker i gets every N-th problem as a run of its own")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the 1-process SQLite reference")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call at the fake server")
    parser.add_argument("--concurrency", type=int, default=16, help="samples in flight per process")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--subproblems", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--reasoning-bytes", type=int, default=2000)
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="load pg_stat_statements and print each configuration's N costliest statements")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    args = parser.parse_args()
    problems = 64 if args.quick else args.problems
    try:
        counts = [int(part) for part in args.processes.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--processes: {args.processes!r} is not a comma list of integers")
    if problems < 1 or not counts or min(counts) < 1:
        parser.error("--problems and every --processes count must be at least 1")

    scratch = common.clean_environment()
    common.header("scaleout: worker processes sharing one PostgreSQL database")
    print(f"   {problems} problems × 1 sample, SCALE k={args.candidates}, {args.subproblems} sub-problems, τ={args.threshold}, "
          f"{args.latency * 1000:.0f} ms per call, {args.reasoning_bytes} B reasoning on System 2 calls, "
          f"{args.concurrency} in flight per process; workers: `scale eval` "
          + ("on one run name (leases share the items)" if args.split == "shared" else "on disjoint slices, a run each"))
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        # difficulty answers alternate below and above τ: half the sub-problems go to System 2
        fake = stack.enter_context(common.fake_server("process", latency=args.latency,
                                                      reasoning_bytes=args.reasoning_bytes,
                                                      subproblem_count=args.subproblems, difficulties=[0.1, 0.8]))
        fake_pid = fake_server_pid()
        if fake_pid is None:
            raise SystemExit("scaleout: cannot find the fake server's process")
        server = stack.enter_context(postgres_cluster(statements=args.statements > 0))
        pg_pid = postmaster_pid(server)
        print(f"   PostgreSQL {server.sql('SHOW server_version')[0][0]} at 127.0.0.1:{server.port} "
              f"(fsync off, as the tests run it)\n")
        print(HEADER, flush=True)
        base_rate: float | None = None
        for count in counts:
            url = server.new_database()
            if args.statements:
                statements_reset(server)
            row = run_config(args, "postgresql", count, problems, url, url, fake, fake_pid, pg_pid, scratch)
            base_rate = base_rate or (row.problems / row.wall * 60 if count == 1 else None)
            rows.append(row)
            print(row.show(base_rate), flush=True)
            if args.statements:
                print(statements_report(server, url, row.calls, args.statements), flush=True)
        if not args.no_sqlite:
            row = run_config(args, "sqlite", 1, problems, str(scratch / "sqlite-runs.db"),
                             str(scratch / "sqlite-results.db"), fake, fake_pid, None, scratch)
            rows.append(row)
            print(row.show(base_rate), flush=True)
    print(f"\n   load avg after: {os.getloadavg()[0]:.2f} · worker logs in {scratch}")
    if any(row.failed or set(row.exit_codes) != {0} or row.problems != problems for row in rows):
        print("   WARNING: some configuration did not store every problem without an error (see the logs)")


if __name__ == "__main__":
    main()
