"""One results-database rule for every command: ``--results-db``, else ``SCALE_RESULTS_DB``, else the
run database when it is on PostgreSQL (``--db`` or ``SCALE_DB``), else ``./scale-results.db``."""

from __future__ import annotations

from pathlib import Path

import pytest

from scale_graph.evaluation.store import results_url

pytestmark = pytest.mark.unit

PG = "postgresql://scale:secret@db-host:5432/scale"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv("SCALE_RESULTS_DB", raising=False)
    monkeypatch.delenv("SCALE_DB", raising=False)


def test_eval_with_a_postgres_db_option_alone_writes_results_to_that_server():
    """`scale eval --db postgresql://…` wrote its results to ./scale-results.db (the README says: the same server)."""
    from scale_graph.cli.evaluate import executor_for

    _, executor, results = executor_for(None, None, Path(PG), None)
    assert executor is None
    assert results_url(results).startswith("postgresql+psycopg://scale:secret@db-host:5432/scale")


@pytest.mark.parametrize(("option", "environment", "run_db", "expected"), [
    ("other.db", {"SCALE_RESULTS_DB": "env.db", "SCALE_DB": PG}, PG, "sqlite:///other.db"),
    (None, {"SCALE_RESULTS_DB": "env.db", "SCALE_DB": PG}, PG, "sqlite:///env.db"),
    (None, {}, PG, "postgresql+psycopg://"),
    (None, {"SCALE_DB": PG}, None, "postgresql+psycopg://"),
    (None, {"SCALE_DB": PG}, "runs.db", "sqlite:///scale-results.db"),  # --db beats SCALE_DB
    (None, {}, "runs.db", "sqlite:///scale-results.db"),
])
def test_the_rule_in_its_order(option, environment, run_db, expected, monkeypatch):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert results_url(option, run_db).startswith(expected)


def test_ui_shows_the_results_beside_a_postgres_run_database(monkeypatch):
    from scale_graph.cli import ui as command

    opened = []
    monkeypatch.setattr("scale_graph.evaluation.store.ResultsStore",
                        lambda url, must_exist: opened.append(url) or "store")
    assert command._results(None, PG) == "store" and opened == [PG]
