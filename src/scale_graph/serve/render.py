"""What `scale serve` answers: a finished run as an OpenAI ``chat.completion`` (or its stream
chunks), and a run that stopped as an OpenAI-style error that names its thread id."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from scale_graph.progress import difficulty_text, short
from scale_graph.redact import redact
from scale_graph.runner import InputError
from scale_graph.serve.checks import MODEL, APIError
from scale_graph.servers.chat import EndpointError

logger = logging.getLogger("scale_graph.serve")


def render_content(shown: dict[str, Any]) -> str:
    """The visible answer: the sub-problems in a few lines, then the answer in ``\\boxed{}``."""
    rows = shown["subproblems"]
    lines = [f"SCALE solved this in {len(rows)} sub-problem{'s' if len(rows) != 1 else ''}:"]
    for row in rows:
        system = f"System {row['system']}" if row.get("system") else "unsolved"
        lines.append(f"{row['index'] + 1}. {short(row['text'])} (difficulty {difficulty_text(row['difficulty'])}, "
                     f"{system}) → {row['result'] if row['result'] is not None else 'no result'}")
    answer = shown.get("answer")
    lines.append("")
    lines.append(f"The answer is \\boxed{{{answer}}}" if answer is not None else "No final answer could be extracted.")
    return "\n".join(lines)


def render_trace(shown: dict[str, Any], texts: list[tuple[str, str]]) -> str:
    """The whole SCALE trace as text: the plan, then every sub-problem with its difficulty, system,
    thinking and solution (``texts``: (solution, reasoning) per sub-problem)."""
    out = [f"Problem:\n{shown['problem']}", ""]
    selection = shown.get("selection") or {}
    candidates = shown.get("candidates") or []
    if selection:
        out.append(f"Decomposition (Eq. 1–2): {len(candidates)} candidate(s); chose candidate "
                   f"{selection.get('chosen', 0) + 1} ({selection.get('method', '?')}).")
    for number, text in enumerate(shown.get("planned_subproblems") or [], 1):
        out.append(f"  {number}. {text}")
    total = len(shown["subproblems"])
    for row, (solution, reasoning) in zip(shown["subproblems"], texts):
        out += ["", f"## Sub-problem {row['index'] + 1}/{total}: difficulty {difficulty_text(row['difficulty'])} "
                    f"→ System {row['system']} ({row['completion_tokens']} completion tokens"
                    + (f", {row['reasoning_tokens']} reasoning" if row.get("reasoning_tokens") else "")
                    + (", answer forced after the thinking budget ran out" if row.get("forced_answer") else "") + ")",
                row["text"] or ""]
        if reasoning:
            out += ["", "Thinking:", reasoning]
        out += ["", "Solution:", solution or "(empty)", f"Result: {row['result']}"]
        out += [f"Warning: {w}" for w in row.get("warnings", [])]
    usage = shown["usage"]["total"]
    out += ["", f"Answer: {shown.get('answer')}",
            f"Usage: {usage.get('calls', 0)} calls, {usage.get('prompt_tokens', 0)} prompt + "
            f"{usage.get('completion_tokens', 0)} completion tokens ({usage.get('reasoning_tokens', 0)} reasoning)"]
    out += [f"Warning: {w}" for w in shown.get("warnings", [])]
    return "\n".join(out)


def openai_usage(shown: dict[str, Any]) -> dict[str, Any]:
    total = shown["usage"]["total"]
    prompt, completion_ = total.get("prompt_tokens", 0), total.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_, "total_tokens": prompt + completion_,
            "completion_tokens_details": {"reasoning_tokens": total.get("reasoning_tokens", 0)}}


def envelope(thread_id: str, created: int, **fields_: Any) -> dict[str, Any]:
    return {"id": f"chatcmpl-{thread_id}", "created": created, "model": MODEL, "system_fingerprint": None, **fields_}


def completion(shown: dict[str, Any], trace: str, thread_id: str) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished run."""
    message = {"role": "assistant", "content": render_content(shown), "reasoning_content": trace}
    return envelope(thread_id, int(time.time()), object="chat.completion",
                    choices=[{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                    usage=openai_usage(shown), scale=shown)


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\",)]+", re.IGNORECASE)


def upstream_reason(exc: EndpointError) -> str:
    """What a client may read of an endpoint failure: the redacted reason, without where the
    server's upstream endpoints are (URLs, host:port) or their keys."""
    hidden: tuple[str, ...] = ()
    if exc.endpoint is not None:
        base = exc.endpoint.base_url
        host = base.split("://", 1)[-1].split("/", 1)[0]
        hidden = (base, host) if host else (base,)
    reason = redact(exc.reason, hidden)
    return _URL.sub("[upstream]", reason)


def shutting_down(thread_id: str | None = None) -> APIError:
    """The documented 503 of a shutdown: with the thread id (resumable) when a run had started."""
    hint = f"; the run is saved: resume with `scale runs resume {thread_id}`" if thread_id else "; retry later"
    return APIError(503, f"the server is shutting down{hint}", "server_error", "shutting_down", thread_id=thread_id)


def run_failure(exc: BaseException, thread_id: str) -> APIError:
    """The error answer of a run that stopped; it stays resumable. No text of it names an
    upstream URL or carries a key."""
    hint = f"; the run is saved: resume with `scale runs resume {thread_id}`"
    if isinstance(exc, EndpointError):
        system = f"System {exc.system} endpoint" if exc.system is not None else "endpoint"
        return APIError(502, f"upstream {system} failed: {upstream_reason(exc)}{hint}", "upstream_error",
                        "endpoint_error", thread_id=thread_id)
    if isinstance(exc, InputError):
        return APIError(400, redact(str(exc)), thread_id=thread_id)
    if isinstance(exc, asyncio.CancelledError):
        return shutting_down(thread_id)
    logger.error("run %s failed: %s", thread_id, redact(f"{type(exc).__name__}: {exc}"))
    message = _URL.sub("[upstream]", redact(" ".join(str(exc).split()))) or type(exc).__name__
    return APIError(500, f"unexpected {type(exc).__name__}: {message}{hint}", "server_error", thread_id=thread_id)
