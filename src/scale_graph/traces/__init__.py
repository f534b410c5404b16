"""SCALE-generated traces for fine-tuning non-reasoning models (paper Setting 2).

:mod:`.render` (one run as one assistant response, the record formats), :mod:`.export`
(stored runs → filtered, deduplicated JSONL with statistics), :mod:`.validate` (checks of an
exported file), :mod:`.cli` (``scale traces generate`` / ``scale traces export``).
Generation itself is a SCALE evaluation run (:mod:`scale_graph.evaluation`).
"""
