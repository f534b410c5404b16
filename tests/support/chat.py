"""A scripted chat layer: :class:`ScriptedSystems` answers each ChatCall from a function and records
every call; give it to ``build_graph(chat=...)`` (or the ``scripted`` fixture installs it for code
that builds its own graph)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scale_graph.servers.chat import ChatCall, ChatReply, Choice

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


