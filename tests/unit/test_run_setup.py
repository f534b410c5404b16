"""RunSetup: the whole order settled once at the entry point, each value's source recorded, the
API keys read once (not per LLM call)."""

from __future__ import annotations

import pytest

from scale_graph import settings
from scale_graph import setup as run_setup
from scale_graph.servers import endpoints as endpoints_module

pytestmark = pytest.mark.unit

RECORD = {"system1": {"base_url": "http://record/v1", "model": "rec1"},
          "system2": {"base_url": "http://record/v1", "model": "rec2"}, "run_defaults": {}}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("SCALE_CONFIG", "SCALE_DB", "SCALE_RESULTS_DB", "SCALE_SYSTEM1_API_KEY", "SCALE_SYSTEM2_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(run_setup, "running_servers", lambda: RECORD)
    yield
    endpoints_module.install_keys(None)


def test_each_layer_beats_the_one_below_and_says_so(monkeypatch, tmp_path):
    """default < servers record < config file < environment < explicit < saved run < request."""
    (tmp_path / "scale.toml").write_text('[system2]\nmodel = "file2"\n[run]\ncandidates = 4\nvotes = 3\nseed = 5\n')
    monkeypatch.setenv("SCALE_VOTES", "5")
    monkeypatch.setenv("SCALE_SEED", "6")
    monkeypatch.setenv("SCALE_THRESHOLD", "0.3")
    built = run_setup.build({"seed": 7, "threshold": 0.4, "parse_retries": 1},
                            saved=None, request={"parse_retries": 3})
    context = built.context
    assert (context.system1_model, context.system2_model) == ("rec1", "file2")
    assert (context.candidates, context.votes, context.seed, context.threshold, context.parse_retries) == (4, 5, 7, 0.4, 3)
    assert [built.source(name) for name in ("system1_model", "system2_model", "candidates", "votes", "seed",
                                            "parse_retries", "max_retries")] == [
        settings.SERVERS, "config file scale.toml", "config file scale.toml", settings.ENVIRONMENT, settings.EXPLICIT,
        run_setup.REQUEST, settings.DEFAULT]


def test_a_saved_run_beats_explicit_values_but_takes_the_endpoints_of_now(monkeypatch):
    monkeypatch.setenv("SCALE_CANDIDATES", "not a number")  # a bad unrelated variable must not block a resume
    saved = {"threshold": 0.9, "system1_base_url": "http://old/v1", "system1_model": "old", "gone": 1}
    built = run_setup.build({"threshold": 0.5}, saved=saved, request={"candidates": 2})
    assert (built.context.threshold, built.context.system1_base_url, built.context.candidates) == (0.9, "http://record/v1", 2)
    assert (built.source("threshold"), built.source("system1_base_url"), built.source("candidates")) == (
        run_setup.SAVED, settings.SERVERS, run_setup.REQUEST)


def test_keys_are_read_once_per_entry_point_not_per_call(monkeypatch):
    """Every LLM call built its endpoints anew, reading the keys (and stat'ing the config file)."""
    monkeypatch.setenv("SCALE_SYSTEM1_API_KEY", "sk-one-111111")
    reads = []
    original = settings.api_key
    monkeypatch.setattr(settings, "api_key", lambda system: reads.append(system) or original(system))
    monkeypatch.setattr(endpoints_module, "api_key", settings.api_key)
    built = run_setup.build()
    for _ in range(50):  # what the chat layer does per call (journal.systems_for)
        system1, _ = endpoints_module.endpoints(built.context)
    assert system1.api_key == "sk-one-111111" and built.endpoints()[0].api_key == "sk-one-111111"
    assert sorted(reads) == [1, 2]
    assert "sk-one" not in repr(built)


def test_complete_fills_a_partial_context_from_the_settings():
    from scale_graph.context import Context

    done = run_setup.complete(Context(threshold=0.7))
    assert (done.threshold, done.system1_model, done.system2_model) == (0.7, "rec1", "rec2")
    whole = Context(system1_base_url="http://a/v1", system1_model="a", system2_base_url="http://a/v1", system2_model="b")
    assert run_setup.complete(whole) is whole


def test_the_results_database_is_settled_with_the_run_database():
    built = run_setup.build(db="postgresql://u:p@h:5432/runs")
    assert built.results_db == "postgresql://u:p@h:5432/runs"
