"""What the fake answers: stage detection, generated text, completions and their SSE stream (pure functions)."""


from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from .config import (
    _CONTENT_FILLER,
    _MANY_SUBPROBLEMS,
    _OUT_OF_RANGE_DIFFICULTY,
    _PLANNER_STAGES,
    _REASONING_FILLER,
    _STREAM_PIECE_CHARS,
    MODELS,
    FakeOpenAIConfig,
)


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def detect_stage(body: dict[str, Any]) -> str:
    """The SCALE stage a chat request belongs to (one of :data:`STAGES`)."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema")
        name = schema.get("name") if isinstance(schema, dict) else None
        for stage, (schema_name, _) in _PLANNER_STAGES.items():
            if name == schema_name:
                return stage
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    text = _text_of(last.get("content")).lower()
    for stage, (_, closing) in _PLANNER_STAGES.items():
        if closing in text:
            return stage
    return "solve"


def answer_for(messages: list[dict[str, Any]]) -> int:
    """The number a solve request is answered with: a deterministic hash of the message
    contents, in ``[0, 1000)``. Tests use it to know the expected ``\\boxed{}`` value."""
    text = "\x00".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 1000


def _tokens(text: str) -> int:
    return len(text) // 4


def _filler(pattern: str, size: int) -> str:
    """Deterministic text of exactly ``size`` characters."""
    return (pattern * (size // len(pattern) + 1))[:size]


def _thinking_requested(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs")
    return isinstance(kwargs, dict) and kwargs.get("enable_thinking") is True


def _structured_output(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")


def _budget_chars(body: dict[str, Any]) -> int | None:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return 4 * limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


@dataclass
class _Generation:
    """One choice before it is placed into a message: the visible answer text, the thinking
    text, whether the thinking was closed, and why generation stopped."""

    content: str
    reasoning: str = ""
    thinking_closed: bool = True
    finish_reason: str = "stop"


def _stage_answer(stage: str, body: dict[str, Any], cfg: FakeOpenAIConfig, index: int, difficulty: float, fault: str | None) -> str:
    """The visible answer of one choice for ``stage`` (before thinking and budget)."""
    if stage == "solve":
        boxed = answer_for(body["messages"])
        final = f"The result is {boxed}." if fault == "no_boxed" else f"The result is \\boxed{{{boxed}}}."
        if _thinking_requested(body) or cfg.content_bytes == 0:
            return final
        return _filler(_CONTENT_FILLER, cfg.content_bytes) + "\n" + final
    if fault == "no_difficulty":
        return "I cannot tell."
    if stage == "decomposition":
        count = {"zero_subproblems": 0, "many_subproblems": _MANY_SUBPROBLEMS}.get(fault, cfg.subproblem_count)
        seed = body.get("seed")
        variant = (seed if isinstance(seed, int) else 0) + index
        payload: dict[str, Any] = {
            "subproblems": [
                f"Sub-problem {i} (plan {variant}): determine intermediate quantity {i} needed for the final answer."
                for i in range(1, count + 1)
            ]
        }
    elif stage == "selection":
        payload = {"choice": cfg.choice}
    else:
        payload = {"difficulty": _OUT_OF_RANGE_DIFFICULTY if fault == "difficulty_out_of_range" else difficulty}
    text = json.dumps(payload)
    if fault == "malformed_json":
        text = text[: len(text) // 2]
    return text if _structured_output(body) else f"```json\n{text}\n```"


def _generate(stage: str, body: dict[str, Any], cfg: FakeOpenAIConfig, index: int, difficulty: float, fault: str | None) -> _Generation:
    """Choice ``index`` of the answer to ``body``, with content faults applied."""
    if fault == "empty":
        return _Generation(content="")
    gen = _Generation(content=_stage_answer(stage, body, cfg, index, difficulty, fault))
    if _thinking_requested(body):
        gen.reasoning = _filler(_REASONING_FILLER, cfg.reasoning_bytes)
    thinking_budget = body.get("thinking_token_budget")
    if cfg.thinking_budget == "enforce" and isinstance(thinking_budget, int) and len(gen.reasoning) > 4 * thinking_budget:
        gen.reasoning = gen.reasoning[: 4 * thinking_budget]  # the engine closes the thinking; the answer follows
    budget = _budget_chars(body)
    if budget is not None and len(gen.reasoning) > budget:
        gen.reasoning = gen.reasoning[:budget]
        gen.content, gen.thinking_closed, gen.finish_reason = "", False, "length"
    if fault == "length":
        gen.content, gen.thinking_closed, gen.finish_reason = "", False, "length"
    elif fault == "reasoning_only":
        gen.reasoning = "\n".join(t for t in (gen.reasoning, gen.content) if t)
        gen.content, gen.thinking_closed = "", False
    return gen


def _place(gen: _Generation, reasoning_field: str) -> tuple[dict[str, Any], int]:
    """The assistant message for a generation and its completion token count."""
    content, hidden = gen.content, ""
    message: dict[str, Any] = {"role": "assistant"}
    if reasoning_field == "inline":
        if gen.reasoning:
            content = f"<think>{gen.reasoning}" + (f"</think>\n\n{content}" if gen.thinking_closed else "")
    elif reasoning_field == "none":
        hidden = gen.reasoning
    else:
        message[reasoning_field] = gen.reasoning or None
    message["content"] = content
    visible_reasoning = message.get(reasoning_field) or ""
    return message, _tokens(content + visible_reasoning + hidden)


def _completion(body: dict[str, Any], stage: str, cfg: FakeOpenAIConfig, difficulty: float, fault: str | None, completion_id: str) -> dict[str, Any]:
    """The full ``chat.completion`` object for a request."""
    n = body.get("n") or 1
    choices, completion_tokens, reasoning_tokens, any_reasoning = [], 0, 0, False
    for index in range(n):
        gen = _generate(stage, body, cfg, index, difficulty, fault)
        message, tokens = _place(gen, cfg.reasoning_field)
        choices.append({"index": index, "message": message, "finish_reason": gen.finish_reason, "logprobs": None})
        completion_tokens += tokens
        reasoning_tokens += _tokens(gen.reasoning)
        any_reasoning = any_reasoning or bool(gen.reasoning)
    prompt_chars = sum(len(_text_of(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
    prompt_tokens = max(1, prompt_chars // 4)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if any_reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODELS[0],
        "choices": choices,
        "usage": usage,
    }


def _pieces(text: str) -> list[str]:
    return [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]


def _stream_events(completion: dict[str, Any], include_usage: bool) -> list[str]:
    """The SSE ``data:`` payloads that stream ``completion`` chunk by chunk."""
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return json.dumps(head | {"choices": [choice]})

    events = []
    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        events.append(chunk(index, {"role": "assistant", "content": ""}))
        for key in ("reasoning", "reasoning_content"):
            events.extend(chunk(index, {key: piece}) for piece in _pieces(message.get(key) or ""))
        events.extend(chunk(index, {"content": piece}) for piece in _pieces(message["content"]))
        events.append(chunk(index, {}, choice["finish_reason"]))
    if include_usage:
        events.append(json.dumps(head | {"choices": [], "usage": completion["usage"]}))
    events.append("[DONE]")
    return events


