"""Problem sets: a local JSONL file, or a preset (``aime24``, ``aime25``, ``amc23``).

A preset is read from ``<data dir>/<name>.jsonl`` when a data directory is given
(``--data-dir`` or ``SCALE_DATA_DIR``), else from the Hugging Face hub through the optional
``datasets`` library (``pip install scale-graph[hub]``). Records may name their fields as the
common math benchmarks do (``question``, ``final_answer``, ``idx``, ``unique_id`` …); a record
without an id gets its 1-based position.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from scale_graph.parsing import last_boxed
from scale_graph.errors import InputError
from scale_graph.files import not_regular

#: Preset → (Hugging Face dataset, preferred split).
PRESETS: dict[str, tuple[str, str]] = {
    "aime24": ("HuggingFaceH4/aime_2024", "train"),
    "aime25": ("math-ai/aime25", "test"),
    "amc23": ("math-ai/amc23", "test"),
}
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question", "prompt", "input")
ANSWER_FIELDS = ("answer", "final_answer", "Answer", "gold", "expected_answer", "target")
SOLUTION_FIELDS = ("solution", "Solution")  # the answer is its last \boxed{}, or all of it
ID_FIELDS = ("id", "idx", "unique_id", "problem_id", "ID", "Id")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


@dataclass(frozen=True)
class Dataset:
    """A named problem set; ``name`` is the preset or the file's stem."""

    name: str
    problems: list[Problem]


def load(source: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The problems of a preset name or a JSONL path; InputError (one line) when unusable."""
    data_dir = data_dir or os.environ.get("SCALE_DATA_DIR") or None
    if source in PRESETS:
        if data_dir is None:
            return Dataset(source, from_hub(source))
        path = Path(data_dir) / f"{source}.jsonl"
        if not path.is_file():
            raise InputError(f"preset {source}: {path} does not exist (check --data-dir / SCALE_DATA_DIR)")
        return Dataset(source, read_jsonl(path))
    path = Path(source)
    if kind := not_regular(path):
        raise InputError(f"dataset {source} is {kind}, not a regular file")
    if not path.is_file():
        raise InputError(f"dataset {source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSONL file")
    return Dataset(path.stem, read_jsonl(path))


def read_jsonl(path: Path) -> list[Problem]:
    """Problems of a JSONL file, one JSON object per non-empty line."""
    if kind := not_regular(path):  # a FIFO would wait for a writer forever
        raise InputError(f"dataset {path} is {kind}, not a regular file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"dataset {path} is not UTF-8 text") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise InputError(f"{path}, line {number}: JSON nested too deeply") from None
        records.append((f"{path}, line {number}", record))
    return normalise(records, str(path))


def from_hub(preset: str) -> list[Problem]:
    """A preset's problems from the Hugging Face hub (needs ``datasets`` and network access)."""
    name, split = PRESETS[preset]
    hint = f"pass a JSONL path or --data-dir DIR holding {preset}.jsonl"
    try:
        import datasets as hf_datasets
    except ImportError:
        raise InputError(f"preset {preset} needs the Hugging Face `datasets` library "
                         f"(pip install 'scale-graph[hub]'), or {hint}") from None
    try:
        loaded = hf_datasets.load_dataset(name)
    except Exception as exc:  # offline, hub errors, missing dataset: all end the same way
        raise InputError(f"cannot load {name} from the Hugging Face hub "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); {hint}") from None
    rows = loaded[split] if split in loaded else loaded[next(iter(loaded))]
    return normalise(((f"{name} row {i + 1}", row) for i, row in enumerate(rows)), name)


def normalise(records: Iterable[tuple[str, Any]], source: str) -> list[Problem]:
    """Problems from raw records ``(where, record)``; ids made up from the position if missing."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for position, (where, record) in enumerate(records, 1):
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            problems.append(_problem(where, record, position, seen))
        except RecursionError:  # a field nested too deeply to turn into text
            raise InputError(f"{where}: a field is nested too deeply") from None
    if not problems:
        raise InputError(f"dataset {source} has no problems")
    return problems


def _problem(where: str, record: dict[str, Any], position: int, seen: set[str]) -> Problem:
    """One record as a problem (its id added to ``seen``); InputError naming ``where`` when unusable."""
    problem = _text(_first(record, PROBLEM_FIELDS))
    if not problem:
        raise InputError(f"{where}: no problem text (expected one of: {', '.join(PROBLEM_FIELDS)})")
    answer = _text(_first(record, ANSWER_FIELDS))
    if not answer and (solution := _text(_first(record, SOLUTION_FIELDS))):
        answer = last_boxed(solution) or solution
    if not answer:
        raise InputError(f"{where}: no answer (expected one of: {', '.join(ANSWER_FIELDS + SOLUTION_FIELDS)})")
    identifier = _text(_first(record, ID_FIELDS)) or str(position)
    if identifier in seen:
        raise InputError(f"{where}: duplicate id {identifier!r}")
    seen.add(identifier)
    return Problem(identifier, problem, answer)


def _first(record: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((record[name] for name in names if record.get(name) not in (None, "")), None)


def _text(value: Any) -> str:
    """A field as text; integral floats (AMC's ``27.0``) lose their ``.0``."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
