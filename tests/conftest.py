"""Shared fixtures: an isolated environment, the fake OpenAI server, a scripted chat fake."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from scale_graph import journal
from scale_graph.servers import capabilities
from tests.support.chat import Responder, ScriptedSystems, default_respond
from tests.support.datasets import write_datasets
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.vllm import vllm_server  # noqa: F401  (session fixture: one real local vLLM server)

TIERS = ("unit", "system", "integration")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the CLI processes the tests start, as it does from a terminal: a suite run
    in the background by a non-interactive shell (``nohup ./.ci/run &``) inherits SIGINT
    ignored, every child would inherit that too, and the tests that interrupt a run would see
    it finish instead."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker (its folder): ``-m unit`` runs the fast tier alone."""
    for item in items:
        tier = next((part for part in item.path.parts[::-1] if part in TIERS), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user config, no running servers, no SCALE_* variables leak into a test."""
    for name in list(os.environ):
        if name.startswith("SCALE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCALE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    capabilities.forget()  # what an endpoint did with a thinking budget is per process: per test here
    yield tmp_path


@pytest.fixture
def fake_server():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def endpoint_env(fake_server, monkeypatch):
    """SCALE_SYSTEM{1,2}_* pointing at the fake server."""
    env = {"SCALE_SYSTEM1_BASE_URL": fake_server.base_url, "SCALE_SYSTEM1_MODEL": "scale-system1",
           "SCALE_SYSTEM2_BASE_URL": fake_server.base_url, "SCALE_SYSTEM2_MODEL": "scale-system2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def scripted():
    """A ScriptedSystems maker (default responder: ``default_respond``): hand the fake to
    ``build_graph(chat=fake)``, the one way a test fakes the chat layer of a graph it builds."""

    def make(respond: Responder = default_respond) -> ScriptedSystems:
        return ScriptedSystems(respond)

    return make


@pytest.fixture
def scripted_endpoints(monkeypatch):
    """For code that builds its own graph or calls the journal itself (evaluation methods, the
    CLI), where no ``chat`` can be handed over: every run context's endpoints answered by the
    ScriptedSystems this installs (default responder: ``default_respond``)."""

    def install(respond: Responder = default_respond) -> ScriptedSystems:
        fake = ScriptedSystems(respond)
        monkeypatch.setattr(journal, "systems_for", lambda context: fake)
        return fake

    return install


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A folder of small preset files (:data:`DATASETS`), for ``--data-dir``."""
    return write_datasets(tmp_path / "data")
