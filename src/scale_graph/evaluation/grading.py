"""Answer equivalence with ``math-verify``: ``verify(parse(gold), parse(answer))``.

math-verify bounds its own time with ``signal.alarm``, which only works in the main thread;
here its timeouts are off and each comparison runs in a daemon thread joined with a
deadline, so grading is safe from worker threads and event loops. A comparison that overruns
counts as wrong (its thread is abandoned; sympy cannot be interrupted). Answers are wrapped in
``$\\boxed{…}$`` so the parser reads them as LaTeX: ``\\frac{1}{2}`` = ``0.5`` = ``1/2``,
``025`` = ``25``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, TypeVar

from math_verify import parse, verify

GRADE_TIMEOUT_S = 10.0
T = TypeVar("T")


class _TimeoutIsOurs(logging.Filter):
    """Drop math-verify's warning that its own timeout is off: we bound the time ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutIsOurs())


@dataclass(frozen=True)
class Grade:
    correct: bool
    note: str  # why: "equivalent", "not equivalent", "no answer", "… not parseable", "timed out …"


def grade(gold: str, answer: str | None, timeout: float = GRADE_TIMEOUT_S) -> Grade:
    """Whether ``answer`` equals ``gold`` mathematically; ungradeable answers are wrong, with the reason."""
    if answer is None or not answer.strip():
        return Grade(False, "no answer")
    try:
        parsed_gold, parsed_answer, same = bounded(_compare, gold, answer, timeout=timeout)
    except TimeoutError:
        return Grade(False, f"grading timed out after {timeout:g} s")
    except Exception as exc:  # math-verify/sympy internals: record, never crash an evaluation
        return Grade(False, f"grading failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if not parsed_gold:
        return Grade(False, "gold answer not parseable")
    if not parsed_answer:
        return Grade(False, "answer not parseable")
    return Grade(same, "equivalent" if same else "not equivalent")


def equivalent(first: str, second: str, timeout: float = GRADE_TIMEOUT_S) -> bool:
    """Whether two answers are the same (symmetric use of :func:`grade`)."""
    return grade(first, second, timeout).correct


def bounded(function: Callable[..., T], *args: Any, timeout: float) -> T:
    """``function(*args)`` in a daemon thread; TimeoutError when it runs past ``timeout`` seconds."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="math-verify", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _compare(gold: str, answer: str) -> tuple[list, list, bool]:
    parsed_gold, parsed_answer = _parsed(gold), _parsed(answer)
    same = bool(parsed_gold and parsed_answer) and verify(parsed_gold, parsed_answer, timeout_seconds=None)
    return parsed_gold, parsed_answer, same


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> list:
    """math-verify's reading of one answer (cached: majority voting compares each many times)."""
    text = answer.strip().strip("$").strip()
    return parse(f"$\\boxed{{{text}}}$", parsing_timeout=None)
