"""``scale eval --ray`` on a real local Ray cluster, a real PostgreSQL server and the fake server.

The cluster is a head (no CPU: it hosts no worker) and two worker nodes of one CPU each, made
with Ray's own ``ray.cluster_utils.Cluster``. The fake server runs as a subprocess, so its
request log counts every call, from every node. Without Ray the cluster tests skip, unless
``SCALE_REQUIRE_RAY=1`` (CI): then they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from scale_graph.evaluation.store import ResultsStore
from tests.support.cli import scale_process
from tests.support.postgres import PASSWORD, pg_url, postgres_server  # noqa: F401  (fixtures)
from tests.support.reliability import (
    ServerProcess,
    assert_one_error_line,
    endpoint_env,
    request_bodies,
)

PROBLEMS = 4
SAMPLES = 2
# latency: the evaluation lasts long enough to kill a node in the middle of it
API_KEY = "sk-ray-test-4711"  # the server wants it; the workers get it only from the driver
SERVER_ARGS = ("--latency", "0.25", "--difficulties", "0.5",  # one difficulty: answers independent of call order
               "--api-key", API_KEY)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("SCALE_REQUIRE_RAY") == "1":
            pytest.fail("SCALE_REQUIRE_RAY=1 but ray is not installed (pip install -e '.[ray]')")
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    return ray


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head without CPUs and two worker nodes with one CPU each, on this machine."""
    _ray()
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # every process of the cluster, and the drivers
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # the workers import this checkout
    made = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        # a dead node is noticed in seconds, not the default half minute
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    try:
        for _ in range(2):
            made.add_node(num_cpus=1)
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()  # this cluster's processes only (never `ray stop`: it ends every Ray on the machine)


def _dataset(folder: Path) -> Path:
    path = folder / "mini.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{n}", "problem": f"What is {n} + {n * 7}?", "answer": str(8 * n)}) + "\n"
                            for n in range(1, PROBLEMS + 1)))
    return path


def _results(url: str, run: str) -> dict[tuple[str, int], dict[str, Any]]:
    """What a run computed per (problem, sample), wall-clock fields left out."""
    store = ResultsStore(url)
    try:
        (found,) = store.runs([run])
        return {(r.problem_id, r.sample): {"answer": r.answer, "correct": r.correct, "error": r.error,
                                           "tokens": r.tokens_by_stage, "iterations": r.iterations,
                                           "subproblems": r.subproblems, "hard": r.hard,
                                           "generated": r.generated_tokens}
                for r in found.results}
    finally:
        store.close()


def _kill_when(server: ServerProcess, requests: int, kill: Any) -> threading.Thread:
    """Calls ``kill()`` once the server has answered ``requests`` chat completions."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.stats()["requests"] >= requests:
                kill()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.ray
def test_node_killed_mid_evaluation_loses_nothing_and_repeats_no_finished_call(
        cluster: Any, pg_url: str, postgres_server: Any, tmp_path: Path) -> None:  # noqa: F811
    dataset = _dataset(tmp_path)
    common = ["eval", "--dataset", str(dataset), "--method", "scale", "--samples", str(SAMPLES), "--name", "mini"]
    with ServerProcess(*SERVER_ARGS) as server:
        env = endpoint_env(server.base_url, system1_api_key=API_KEY, system2_api_key=API_KEY)
        env.pop("SCALE_DB", None)
        local_db = postgres_server.new_database()
        single = scale_process(*common, "--db", local_db, "--results-db", local_db, "--concurrency", "4", env=env,
                       timeout=180)
        assert single.returncode == 0, single.stderr
        expected_bodies = Counter(request_bodies(server.stats()["log"]))
        server.reset()

        worker_nodes = [node for node in cluster.list_all_nodes() if node is not cluster.head_node]
        victim = worker_nodes[0]
        watcher = _kill_when(server, sum(expected_bodies.values()) // 3,
                             lambda: cluster.remove_node(victim, allow_graceful=False))
        distributed = scale_process(*common, "--db", pg_url, "--concurrency", "2", "--ray", cluster.address, env=env,
                            timeout=180)
        watcher.join(timeout=5)
        assert distributed.returncode == 0, distributed.stderr
        assert "Traceback" not in distributed.stderr
        assert API_KEY not in distributed.stderr + distributed.stdout
        assert PASSWORD not in distributed.stderr + distributed.stdout
        assert "Ray worker" in distributed.stderr and "lost" in distributed.stderr, distributed.stderr
        bodies = Counter(request_bodies(server.stats()["log"]))

    # the same results, sample by sample, as the single-process run (results beside the checkpoints)
    assert _results(pg_url, "mini") == _results(local_db, "mini")
    assert len(_results(pg_url, "mini")) == PROBLEMS * SAMPLES
    # the same calls; none more than once beyond the single-process count (only a call in flight
    # when the node died may be made again: it had not finished)
    assert set(bodies) == set(expected_bodies)
    repeated = {body: bodies[body] - expected_bodies[body] for body in bodies if bodies[body] > expected_bodies[body]}
    assert all(extra == 1 for extra in repeated.values()), repeated
    # the report shows the same table
    assert distributed.stdout == single.stdout


def test_ray_with_a_sqlite_database_is_one_clear_line(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    for command in (["eval", "--dataset", str(dataset)], ["traces", "generate", "--dataset", str(dataset), "--out", "t"]):
        result = scale_process(*command, "--db", str(tmp_path / "runs.db"), "--ray", "auto", env=endpoint_env("http://127.0.0.1:9/v1"))
        assert_one_error_line(result, code=2, contains="--ray needs the run database on PostgreSQL")
        assert not (tmp_path / "runs.db").exists()


def test_ray_not_installed_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from scale_graph.errors import ConfigError
    from scale_graph.evaluation import distributed

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'scale-graph\[ray\]'"):
        distributed.import_ray()


def test_secrets_never_shown() -> None:
    from scale_graph.evaluation.distributed import Secrets

    secrets = Secrets("postgresql://u:pw-123@h/db", {1: "sk-key-1", 2: None})
    assert "pw-123" not in repr(secrets) and "sk-key-1" not in str(secrets)


class _Lost(Exception):
    """Stands for Ray's actor errors (RayActorError) in the pool tests."""


class _FakeRay:
    """What :class:`distributed._Pool` uses of the ``ray`` module, without a cluster."""

    class exceptions:  # named as the module attribute it stands for
        RayActorError = _Lost
        ObjectLostError = _Lost

        class RayTaskError(Exception):
            cause = None

    def __init__(self) -> None:
        self.killed: list[Any] = []

    def kill(self, actor: Any, no_restart: bool = True) -> None:
        self.killed.append(actor)


class _Method:
    def __init__(self, answer: Any) -> None:
        self.answer, self.items = answer, []

    def remote(self, item: Any) -> Any:
        self.items.append(item)

        async def reply() -> Any:
            await asyncio.sleep(0)
            return self.answer(item)

        return reply()


class _Actor:
    def __init__(self, answer: Any) -> None:
        self.solve = _Method(answer)


def _plan() -> Any:
    from scale_graph.context import Context
    from scale_graph.evaluation.methods import Setup
    from scale_graph.evaluation.runner import RunPlan

    return RunPlan("r", "cot", None, Setup("r", Context()))  # type: ignore[arg-type]


def test_pool_hands_a_dead_workers_items_to_the_others_and_waits_out_a_busy_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    from scale_graph.evaluation import distributed
    from scale_graph.evaluation.datasets import Problem
    from scale_graph.evaluation.methods import Outcome

    monkeypatch.setattr(distributed, "BUSY_WAIT_S", (0.01, 0.05))
    busy_once: set[int] = set()

    def alive(item: Any) -> Any:
        if item.sample == 2 and item.sample not in busy_once:  # held by a worker whose lease has not lapsed yet
            busy_once.add(item.sample)
            return distributed.Busy(time.time() + 0.02)
        return Outcome(answer=f"{item.problem.id}/{item.sample}")

    def dead(item: Any) -> Any:
        raise _Lost("node died")

    fake = _FakeRay()
    survivor, victim = _Actor(alive), _Actor(dead)
    pool = distributed._Pool(fake, [victim, survivor], per_worker=2)
    problem = Problem("p1", "What is 1+1?", "2")

    async def main() -> list[Outcome]:
        return await asyncio.gather(*(pool.solve(_plan(), problem, sample, _pending) for sample in range(4)))

    outcomes = asyncio.run(main())
    assert [o.answer for o in outcomes] == [f"p1/{s}" for s in range(4)]
    assert victim.solve.items and fake.killed == [victim]  # it had items; they went to the survivor
    assert sorted(i.sample for i in survivor.solve.items) == [0, 1, 2, 2, 3]  # sample 2 again after its lease


async def _pending() -> bool:
    """No other evaluation stored the sample: the pool computes it."""
    return True


def test_pool_with_every_worker_dead_stores_the_samples_as_failed() -> None:
    from scale_graph.evaluation import distributed
    from scale_graph.evaluation.datasets import Problem

    def dead(item: Any) -> Any:
        raise _Lost("node died")

    pool = distributed._Pool(_FakeRay(), [_Actor(dead), _Actor(dead)], per_worker=1)

    async def main() -> list[Any]:
        return await asyncio.gather(*(pool.solve(_plan(), Problem("p", "q", "1"), s, _pending) for s in range(5)))

    outcomes = asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert all(o.error == "every Ray worker died before this sample was computed" for o in outcomes)


def test_traces_generate_next_hint_masks_the_database_password(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    with ServerProcess() as server:
        result = scale_process("traces", "generate", "--dataset", str(_dataset(tmp_path)), "--out", "t", "--limit", "1",
                       "--db", pg_url, env=endpoint_env(server.base_url), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "next: scale traces export t" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_ray_options_checked_before_any_work(tmp_path: Path) -> None:
    dataset = str(_dataset(tmp_path))
    env = endpoint_env("http://127.0.0.1:9/v1")
    assert_one_error_line(scale_process("eval", "--dataset", dataset, "--ray-workers", "2", env=env), code=2,
                          contains="--ray-workers needs --ray ADDRESS")
    assert_one_error_line(scale_process("eval", "--dataset", dataset, "--ray", " ", env=env), code=2,
                          contains="--ray: the address is empty")
    assert not (tmp_path / "scale-results.db").exists()
