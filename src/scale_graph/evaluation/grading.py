"""Answer equivalence with ``math-verify``: ``verify(parse(gold), parse(answer))``.

math-verify bounds its own time with ``signal.alarm``, which only works in the main thread;
here its timeouts are off and each comparison runs in a daemon thread joined with a
deadline, so grading is safe from worker threads and event loops. Answers are wrapped in
``$\\boxed{…}$`` so the parser reads them as LaTeX: ``\\frac{1}{2}`` = ``0.5`` = ``1/2``,
``025`` = ``25``.

A timeout is never a verdict: math-verify's first call in a process builds its grammars and
can take over 10 s on a loaded machine, so :func:`warm_up` pays that once in the background
(an evaluation calls it at start), the limit is generous, a comparison that overruns is retried
once with a longer limit, and one that still cannot be decided is **ungraded** — a third state
(:attr:`Grade.ungraded`) that reports count and show, that is never correct, and that an export
of correct traces leaves out. (An overrunning thread is abandoned: sympy cannot be interrupted.)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, TypeVar

from math_verify import parse, verify

GRADE_TIMEOUT_S = 30.0
#: The one retry of a comparison that overran gets this many times the first limit.
RETRY_FACTOR = 3.0
UNGRADED = "ungraded"
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
    note: str  # why: "equivalent", "not equivalent", "no answer", "… not parseable", "ungraded: …"
    ungraded: bool = False  # the grader could not decide (timed out twice): neither right nor wrong

    @property
    def decided(self) -> bool:
        return not self.ungraded


_warm_lock = threading.Lock()
_warm_started = False


def warm_up() -> None:
    """Pay math-verify's slow first call once per process, in a background thread (returns at once)."""
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True

    def run() -> None:
        try:
            _compare("\\frac{1}{2}", "0.5")
        except Exception:  # a warm-up must never fail anything; the real comparison reports errors
            pass

    threading.Thread(target=run, name="math-verify-warm-up", daemon=True).start()


def grade(gold: str, answer: str | None, timeout: float | None = None) -> Grade:
    """Whether ``answer`` equals ``gold`` mathematically; an unparseable answer is wrong with the
    reason, one the grader cannot decide in time (twice) is ungraded. ``timeout``: the first
    limit in seconds (default :data:`GRADE_TIMEOUT_S`)."""
    if answer is None or not answer.strip():
        return Grade(False, "no answer")
    timeout = GRADE_TIMEOUT_S if timeout is None else timeout
    try:
        try:
            parsed_gold, parsed_answer, same = bounded(_compare, gold, answer, timeout=timeout)
        except TimeoutError:  # often a cold grader under load: one more, longer try
            parsed_gold, parsed_answer, same = bounded(_compare, gold, answer, timeout=timeout * RETRY_FACTOR)
    except TimeoutError:
        return Grade(False, f"{UNGRADED}: grading timed out after {timeout:g} s and {timeout * RETRY_FACTOR:g} s",
                     ungraded=True)
    except Exception as exc:  # math-verify/sympy internals: record, never crash an evaluation
        return Grade(False, f"grading failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if not parsed_gold:
        return Grade(False, "gold answer not parseable")
    if not parsed_answer:
        return Grade(False, "answer not parseable")
    return Grade(same, "equivalent" if same else "not equivalent")


def equivalent(first: str, second: str, timeout: float | None = None) -> bool:
    """Whether two answers are known to be the same (symmetric use of :func:`grade`; undecided is not)."""
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
