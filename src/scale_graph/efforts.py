"""``reasoning_effort`` and ``max_completion_tokens`` of an OpenAI request, as SCALE run parameters.

OpenAI clients say how hard a reasoning model should think with ``reasoning_effort`` and how
much it may write with ``max_completion_tokens``; ``scale serve`` honours both through
:func:`scale_params`, which turns them into entries of the request's ``scale`` object:

| ``reasoning_effort`` | τ (``threshold``) | per-problem ``budget`` (tokens) |
|---|---|---|
| ``none``   | 1.0 — every sub-problem on System 1 | the request's or the server's |
| ``low``    | 0.7 | 4,096 |
| ``medium`` | 0.5 | 16,384 |
| ``high``   | 0.2 (the paper's best) | 32,768 |

``max_completion_tokens`` is the per-problem budget (every inner call's completion tokens
together, :mod:`scale_graph.budget`); with an effort, the smaller of the two budgets holds. A
``scale`` object's own ``threshold`` or ``budget`` wins over the effort's preset; a server
started with a budget caps every request's (a request cannot ask for more, nor for none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Presets of ``reasoning_effort``: run parameters (None: leave as the request or server has it).
EFFORTS: dict[str, dict[str, Any]] = {
    "none": {"threshold": 1.0},
    "low": {"threshold": 0.7, "budget": 4096},
    "medium": {"threshold": 0.5, "budget": 16384},
    "high": {"threshold": 0.2, "budget": 32768},
}


def scale_params(body: dict[str, Any], server_budget: int, error: Callable[[str, str], Exception]) -> Any:
    """The request's ``scale`` object with ``reasoning_effort`` and ``max_completion_tokens`` added
    as run parameters (unchanged when it has neither and the server sets no budget); ``error``
    (message, parameter) makes the exception a bad value raises."""
    params = body.get("scale")
    effort = body.get("reasoning_effort")
    most = body.get("max_completion_tokens")
    if effort is None and most is None and not server_budget:
        return params
    if params is not None and not isinstance(params, dict):
        return params  # the caller says what is wrong with it
    chosen = dict(params or {})
    if effort is not None:
        if effort not in EFFORTS:
            raise error(f"'reasoning_effort' must be one of {', '.join(map(repr, EFFORTS))}, got {effort!r}",
                        "reasoning_effort")
        chosen = {**EFFORTS[effort], **chosen}
    if most is not None:
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise error(f"'max_completion_tokens' must be a positive integer, got {most!r}", "max_completion_tokens")
        chosen["budget"] = min(most, chosen.get("budget") or most)
    if server_budget:  # the operator's budget is the most any request gets
        chosen["budget"] = min(chosen.get("budget") or server_budget, server_budget)
    return chosen


__all__ = ["EFFORTS", "scale_params"]
