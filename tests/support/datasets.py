"""Small stand-ins of the dataset presets, written by the tests themselves (nothing outside the repository)."""

from __future__ import annotations

import json
from pathlib import Path

#: Small stand-ins of the presets, written by the tests themselves (no folder outside the repository).
DATASETS: dict[str, list[dict[str, str]]] = {
    "aime24": [
        {"id": "aime24-1", "problem": "Aya walks 9 km at s km/h in 4 hours including t minutes at a cafe, and at "
                                      "s+2 km/h in 2 hours 24 minutes. How many minutes does the walk take at "
                                      "s+1/2 km/h?", "answer": "204"},
        {"id": "aime24-2", "problem": "What is the square of the number of sides of a regular pentagon?",
         "answer": "25"},
        {"id": "aime24-3", "problem": "A fair coin is tossed once. What is the probability of heads?",
         "answer": "\\frac{1}{2}"},
    ],
    "aime25": [
        {"id": "aime25-1", "problem": "Find the sum of all integer bases b > 9 for which 17_b divides 97_b.",
         "answer": "70"},
        {"id": "aime25-2", "problem": "What is 12 squared minus 119?", "answer": "25"},
    ],
    "amc23": [
        {"id": "amc23-1", "problem": "What is half of 408?", "answer": "204"},
        {"id": "amc23-2", "problem": "What is the probability that a fair die shows an even number?",
         "answer": "\\frac{1}{2}"},
    ],
}


def write_datasets(folder: Path) -> Path:
    """``<folder>/<preset>.jsonl`` for every preset of :data:`DATASETS` (``{"id","problem","answer"}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in DATASETS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder
