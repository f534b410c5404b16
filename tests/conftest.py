"""Shared fixtures: an isolated environment, the fake OpenAI server, a scripted chat fake."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from scale_graph import journal
from scale_graph.servers import capabilities
from scale_graph.servers.chat import ChatCall, ChatReply, Choice, EndpointError
from tests.fake_openai import FakeOpenAIServer
from tests.vllm_fixture import vllm_server  # noqa: F401  (session fixture: one real local vLLM server)


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


Responder = Callable[[ChatCall], "ChatReply | str | Exception"]


@dataclass
class ScriptedSystems:
    """A fake chat layer: answers each ChatCall from ``respond`` and records every call."""

    respond: Responder
    calls: list[ChatCall] = field(default_factory=list)

    def _answer(self, call: ChatCall) -> ChatReply:
        self.calls.append(call)
        answer = self.respond(call)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            answer = ChatReply(choices=[Choice(content=answer, reasoning="", finish_reason="stop")] * call.n,
                               prompt_tokens=10, completion_tokens=5)
        return answer

    def call(self, call: ChatCall) -> ChatReply:
        return self._answer(call)

    async def acall(self, call: ChatCall) -> ChatReply:
        return self._answer(call)

    def stage_calls(self, stage: str) -> list[ChatCall]:
        return [c for c in self.calls if c.key.startswith(stage)]


def default_respond(call: ChatCall) -> str:
    """Three sub-problems, choice 1, difficulty 0.5, solutions boxing their step number."""
    stage = call.key.split("/")[0]
    if stage == "decompose":
        return '{"subproblems": ["find a", "find b", "find a+b"]}'
    if stage == "select":
        return '{"choice": 1}'
    if stage == "assess":
        return '{"difficulty": 0.5}'
    index = int(call.key.split("/")[1])
    return f"solution of step {index + 1}: \\boxed{{{(index + 1) * 11}}}"


@pytest.fixture
def scripted(monkeypatch):
    """Install a ScriptedSystems; call it with a responder (default: ``default_respond``)."""

    def install(respond: Responder = default_respond) -> ScriptedSystems:
        fake = ScriptedSystems(respond)
        monkeypatch.setattr(journal, "systems_for", lambda context: fake)
        return fake

    return install


#: Small stand-ins of the presets, written by the tests themselves (no folder outside the repository).
DATASETS: dict[str, list[dict[str, str]]] = {
    "aime24": [
        {"id": "aime24-1", "problem": "Aya walks 9 km at s km/h in 4 hours including t minutes at a cafe, and at "
                                      "s+2 km/h in 2 hours 24 minutes. How many minutes does the walk take at "
                                      "s+1/2 km/h?", "answer": "204"},
        {"id": "aime24-2", "problem": "What is the square of the number of sides of a regular pentagon?",
         "answer": "25"},
        {"id": "aime24-3", "problem": "A fair coin is tossed once. What is the probability of heads?",
         "answer": "\\frac{1}{2}"},
    ],
    "aime25": [
        {"id": "aime25-1", "problem": "Find the sum of all integer bases b > 9 for which 17_b divides 97_b.",
         "answer": "70"},
        {"id": "aime25-2", "problem": "What is 12 squared minus 119?", "answer": "25"},
    ],
    "amc23": [
        {"id": "amc23-1", "problem": "What is half of 408?", "answer": "204"},
        {"id": "amc23-2", "problem": "What is the probability that a fair die shows an even number?",
         "answer": "\\frac{1}{2}"},
    ],
}


def write_datasets(folder: Path) -> Path:
    """``<folder>/<preset>.jsonl`` for every preset of :data:`DATASETS` (``{"id","problem","answer"}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in DATASETS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A folder of small preset files (:data:`DATASETS`), for ``--data-dir``."""
    return write_datasets(tmp_path / "data")


def context(**overrides):
    from scale_graph import Context

    base = {"system1_base_url": "http://fake/v1", "system1_model": "s1",
            "system2_base_url": "http://fake/v1", "system2_model": "s2", "candidates": 3}
    return Context(**{**base, **overrides})


__all__ = ["ScriptedSystems", "default_respond", "context", "EndpointError", "DATASETS", "write_datasets"]
