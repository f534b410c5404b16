"""Tolerant parsers for model outputs: decompositions, choices, difficulties, boxed answers.

Each returns ``None`` when nothing usable is found; callers retry or fall back.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_NUMBERED = re.compile(r"^\s*(?:[-*•]|(?:step|sub-?problem)?\s*\d+\s*[.):\-]|(?:step|sub-?problem)\s*\d+\s*)\s*(.+?)\s*$", re.IGNORECASE)
_STEP_KEY = re.compile(r"(\d+)")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# "sub-problem 3", "Sub-problem 3 of 5" (the prompts' own header style): names a sub-problem, not a difficulty
_REFERENCE = re.compile(r"\b(?:sub-?\s?problems?|steps?|parts?|questions?)\s*(?:no\.|number|#)?\s*\d+"
                        r"(?:\s*(?:of|/|out\s+of)\s*\d+)?\b", re.IGNORECASE)


def _repair_latex(text: str) -> str:
    """Double backslashes that start LaTeX commands (\\frac, \\theta, \\sqrt) rather than JSON escapes."""

    def fix(match: re.Match[str]) -> str:
        char, rest = match.group(1), match.string[match.end() : match.end() + 1]
        if char in '"\\/' or (char == "u" and not rest.isalpha()) or (char in "bfnrt" and not rest.isalpha()):
            return match.group(0)
        return "\\\\" + char

    return _ESCAPE.sub(fix, text)


def split_think(content: str) -> tuple[str, str]:
    """Split inline ``<think>…</think>`` reasoning from the visible text: (reasoning, text)."""
    if "<think>" not in content and "</think>" not in content:
        return "", content
    if "<think>" not in content:  # template opened the block in the prompt
        reasoning, _, text = content.partition("</think>")
        return reasoning.strip(), text.strip()
    reasoning = "\n".join(m.group(1).strip() for m in _THINK.finditer(content))
    text = _THINK.sub("", content).replace("</think>", "")
    return reasoning.strip(), text.strip()


def load_json(text: str) -> Any:
    """First JSON value in ``text``: fenced or bare, repairing LaTeX backslashes; None if none."""
    _, text = split_think(text)
    chunks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in chunks:
        for candidate in _json_candidates(chunk.strip()):
            for attempt in (_repair_latex(candidate), candidate):
                try:
                    return json.loads(attempt)
                except (json.JSONDecodeError, ValueError):
                    continue
    return None


def _json_candidates(text: str) -> list[str]:
    found = [text]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            found.append(text[start : end + 1])
    return found


def parse_decomposition(text: str) -> list[str] | None:
    """Sub-problems from JSON (list, {"subproblems": [...]}, {"step1": ...}) or a numbered list."""
    data = load_json(text)
    steps = _steps_from_json(data) if data is not None else None
    if steps is None:
        steps = _steps_from_lines(split_think(text)[1])
    return steps or None


def _steps_from_json(data: Any) -> list[str] | None:
    if isinstance(data, dict):
        for key in ("subproblems", "sub_problems", "steps", "decomposition", "subquestions"):
            if key in data:
                return _steps_from_json(data[key])
        keyed = [(int(m.group(1)), v) for k, v in data.items() if (m := _STEP_KEY.search(str(k)))]
        if keyed and len(keyed) == len(data):
            return _steps_from_json([v for _, v in sorted(keyed, key=lambda kv: kv[0])])
        return None
    if isinstance(data, list):
        steps = []
        for item in data:
            if isinstance(item, dict):
                item = next((item[k] for k in ("subproblem", "description", "text", "step", "goal") if k in item), None)
            if isinstance(item, (str, int, float)) and str(item).strip():
                steps.append(str(item).strip())
        return steps
    return None


def _steps_from_lines(text: str) -> list[str]:
    steps = []
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match and match.group(1).strip():
            steps.append(match.group(1).strip())
    return steps


def parse_choice(text: str, count: int) -> int | None:
    """0-based index of the chosen candidate from {"choice": n}, "Candidate n" or a lone number."""
    data = load_json(text)
    if isinstance(data, dict):
        data = next((data[k] for k in ("choice", "best", "candidate", "selected") if k in data), None)
    numbers: list[str] = []
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        numbers = [str(data)]
    elif isinstance(data, str):
        numbers = re.findall(r"\d+", data)
    if not numbers:
        visible = split_think(text)[1]
        numbers = re.findall(r"candidate\s*#?\s*(\d+)", visible, re.IGNORECASE) or re.findall(r"\b(\d+)\b", visible)
    for number in numbers:
        value = float(number)
        if value.is_integer() and 1 <= int(value) <= count:
            return int(value) - 1
    return None


def parse_difficulty(text: str) -> float | None:
    """Difficulty from {"difficulty": x}, "Difficulty: 0.7", "7/10" or "70%"; unclamped.

    Not a number (NaN, infinities) counts as unparseable: clamping it would pick a system at random.
    """
    try:
        value = _difficulty_value(text)
    except OverflowError:  # an integer too large for a float
        return None
    return value if value is not None and math.isfinite(value) else None


def _difficulty_value(text: str) -> float | None:
    data = load_json(text)
    if isinstance(data, dict):
        data = next((data[k] for k in ("difficulty", "score", "d") if k in data), None)
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    visible = data if isinstance(data, str) else split_think(text)[1]
    visible = _REFERENCE.sub(" ", visible)  # "sub-problem 3" names a sub-problem, not a difficulty
    if match := re.search(rf"({_NUMBER})\s*(?:/|out\s+of)\s*({_NUMBER})", visible, re.IGNORECASE):
        denominator = float(match.group(2))
        return float(match.group(1)) / denominator if denominator else None
    if match := re.search(rf"({_NUMBER})\s*%", visible):
        return float(match.group(1)) / 100
    if match := re.search(rf"difficulty\D{{0,20}}?({_NUMBER})", visible, re.IGNORECASE):
        return float(match.group(1))
    if match := re.search(_NUMBER, visible):
        return float(match.group(0))
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), with balanced nested braces."""
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        open_brace = text.find("{", start)
        if open_brace >= 0 and text[start:open_brace].strip() in ("\\boxed", "\\fbox"):
            depth = 0
            for position in range(open_brace, len(text)):
                char = text[position]
                if char == "{":
                    depth += 1
                elif char == "}":
                    depth -= 1
                    if depth == 0:
                        return text[open_brace + 1 : position].strip()
        elif match := re.match(r"\\boxed\s+([^\s$]+)", text[start:]):
            return match.group(1).strip()
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None
