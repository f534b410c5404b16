"""Workers of one shared evaluation started together on a PostgreSQL results database: the run is
created once, every worker gets its id (issue 20: two identical `scale eval` commands)."""

from __future__ import annotations

import threading

import pytest

from scale_graph.evaluation.store import ResultsStore
from tests.support.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)


def test_workers_starting_together_create_a_run_once(pg_url: str) -> None:  # noqa: F811
    workers, names = 8, [f"shared-{i}" for i in range(15)]
    stores = [ResultsStore(pg_url) for _ in range(workers)]
    ids: dict[str, list[int]] = {name: [] for name in names}
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def start(store: ResultsStore) -> None:
        for name in names:
            barrier.wait()  # every worker opens the same new run at the same instant
            try:
                ids[name].append(store.open_run(name, "cot", "data", {"seed": 0}))
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=100)
    finally:
        for store in stores:
            store.close()
    assert not errors, errors[:3]
    assert all(len(found) == workers and len(set(found)) == 1 for found in ids.values())
