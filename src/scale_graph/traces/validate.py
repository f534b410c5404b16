"""Checks of an exported trace file, used by ``scale traces export`` (on the file it just wrote)
and by the tests.

Every line must parse as a JSON object with exactly the keys of its format
(:mod:`scale_graph.traces.render`), roles in order, and no empty turn. When references are
given (``--correct-only``), the last ``\\boxed{}`` of each assistant turn must be equivalent to
its line's reference answer (:func:`scale_graph.evaluation.grading.grade`); a comparison the
grader cannot decide in time is not an issue (a slow grader never fails an export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from scale_graph.evaluation.grading import grade
from scale_graph.parsing import last_boxed
from scale_graph.traces.render import FORMATS

KEYS = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "input", "output"}}


@dataclass(frozen=True)
class Issue:
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def check_record(record: Any, fmt: str) -> list[str]:
    """What is wrong with one parsed record of ``fmt`` (empty when nothing)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    if set(record) != KEYS[fmt]:
        return [f"keys {sorted(record)}, expected {sorted(KEYS[fmt])} for format {fmt}"]
    if fmt == "alpaca":
        problems = [f"{key!r} is not a string" for key in KEYS[fmt] if not isinstance(record[key], str)]
        problems += [f"empty {key!r}" for key in ("instruction", "output")
                     if isinstance(record[key], str) and not record[key].strip()]
        return problems
    if fmt == "messages":
        return _check_turns(record["messages"], "messages", ("role", "content"), {"system", "user", "assistant"},
                            user="user", assistant="assistant")
    return _check_turns(record["conversations"], "conversations", ("from", "value"), {"system", "human", "gpt"},
                        user="human", assistant="gpt")


def _check_turns(turns: Any, name: str, keys: tuple[str, str], roles: set[str], *, user: str,
                 assistant: str) -> list[str]:
    role_key, text_key = keys
    if not isinstance(turns, list) or not turns:
        return [f"{name!r} must be a non-empty list"]
    problems = []
    for position, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or set(turn) != set(keys):
            problems.append(f"turn {position}: expected an object with keys {list(keys)}")
            continue
        if turn[role_key] not in roles:
            problems.append(f"turn {position}: unknown {role_key} {turn[role_key]!r}")
        if not isinstance(turn[text_key], str) or not turn[text_key].strip():
            problems.append(f"turn {position}: empty {text_key}")
    if problems:
        return problems
    spoken = [turn[role_key] for turn in turns if turn[role_key] != "system"]
    expected = [user if i % 2 == 0 else assistant for i in range(len(spoken))]
    if any(turn[role_key] == "system" for turn in turns[1:]):
        problems.append("a system turn may only come first")
    if spoken != expected or not spoken or spoken[-1] != assistant:
        problems.append(f"turns must alternate {user}/{assistant}, starting with {user} and ending with {assistant}; "
                        f"got {spoken}")
    return problems


def user_text(record: dict[str, Any], fmt: str) -> str:
    """The (first) user turn of a valid record: the problem."""
    if fmt == "alpaca":
        return record["instruction"]
    if fmt == "messages":
        return next(turn["content"] for turn in record["messages"] if turn["role"] == "user")
    return next(turn["value"] for turn in record["conversations"] if turn["from"] == "human")


def assistant_text(record: dict[str, Any], fmt: str) -> str:
    """The (last) assistant turn of a valid record: the rendered SCALE trace."""
    if fmt == "alpaca":
        return record["output"]
    if fmt == "messages":
        return record["messages"][-1]["content"]
    return record["conversations"][-1]["value"]


def validate_lines(lines: Sequence[str], fmt: str, references: Sequence[str | None] | None = None) -> list[Issue]:
    """Issues of JSONL ``lines``; ``references`` (one per line) are checked against the boxed answers."""
    if references is not None and len(references) != len(lines):
        return [Issue(0, f"{len(lines)} line(s) but {len(references)} reference answer(s)")]
    issues = []
    for number, line in enumerate(lines, 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(Issue(number, f"not valid JSON ({exc.msg})"))
            continue
        problems = check_record(parsed, fmt)
        issues += [Issue(number, problem) for problem in problems]
        if problems or references is None or references[number - 1] is None:
            continue
        boxed = last_boxed(assistant_text(parsed, fmt))
        reference = references[number - 1]
        if boxed is None:
            issues.append(Issue(number, "the assistant turn has no \\boxed{} answer"))
        elif not (verdict := grade(reference, boxed)).correct and verdict.decided:
            issues.append(Issue(number, f"boxed answer {boxed!r} is not equivalent to the reference {reference!r}"))
    return issues


def validate_file(path: str | Path, fmt: str, references: Sequence[str | None] | None = None) -> list[Issue]:
    """Issues of an exported JSONL file (see :func:`validate_lines`); a file without lines has none."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last record
    return validate_lines(lines, fmt, references)


def survives_chat_template(tokenizer: Any, record: dict[str, Any]) -> bool:
    """Whether a ``messages`` record's assistant turn appears verbatim in ``tokenizer``'s chat
    template rendering. Qwen3-style templates cut an assistant turn at its last ``</think>``,
    which drops the plan and the earlier sub-problems of a trace exported with reasoning."""
    rendered = tokenizer.apply_chat_template(record["messages"], tokenize=False)
    return assistant_text(record, "messages") in rendered
