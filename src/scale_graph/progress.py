"""The words of progress: one line per workflow event, shared by the CLI and ``scale serve``."""

from __future__ import annotations

from typing import Any

SHORT_CHARS = 160


def short(text: str | None, limit: int = SHORT_CHARS) -> str:
    """A sub-problem on one line, cut at ``limit`` characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def difficulty_text(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def progress_line(event: dict[str, Any]) -> str | None:
    """One line of streamed progress per workflow event."""
    kind = event.get("event")
    if kind == "resuming":
        return f"Resuming at {event['at']}.\n"
    if kind == "decomposed":
        return f"Decomposed the problem into {event['candidates']} candidate plan(s) of sizes {event['sizes']}.\n"
    if kind == "selected":
        steps = "".join(f"  {n}. {short(t)}\n" for n, t in enumerate(event["subproblems"], 1))
        return f"Chose plan {event['chosen'] + 1} ({event['method']}), {len(event['subproblems'])} sub-problems:\n{steps}"
    if kind == "reviewed":
        return f"Decomposition {'accepted' if event.get('accepted') else 'edited'} by review.\n"
    if kind == "assessed":
        return f"Sub-problem {event['index'] + 1}: difficulty {difficulty_text(event['difficulty'])}.\n"
    if kind == "solved":
        return (f"Sub-problem {event['index'] + 1} solved on System {event['system']} "
                f"({event['completion_tokens']} tokens): {event['result']}\n")
    if kind == "budget":
        return f"Budget: {event['left']:,} of {event['budget']:,} tokens left after sub-problem {event['index'] + 1}.\n"
    if kind == "finalized":
        return f"Answer: {event.get('answer')}\n"
    return None


