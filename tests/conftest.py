"""Shared fixtures: an isolated environment, the fake OpenAI server, a scripted chat fake."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import pytest

from scale_graph import journal
from scale_graph.servers.chat import ChatCall, ChatReply, Choice, EndpointError
from scale_graph.testing.fake_openai import FakeOpenAIServer
from tests.vllm_fixture import vllm_server  # noqa: F401  (session fixture: one real local vLLM server)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user config, no running servers, no SCALE_* variables leak into a test."""
    for name in list(os.environ):
        if name.startswith("SCALE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCALE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
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


def context(**overrides):
    from scale_graph import Context

    base = {"system1_base_url": "http://fake/v1", "system1_model": "s1",
            "system2_base_url": "http://fake/v1", "system2_model": "s2", "candidates": 3}
    return Context(**{**base, **overrides})


__all__ = ["ScriptedSystems", "default_respond", "context", "EndpointError"]
