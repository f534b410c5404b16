"""A run Context whose endpoints are placeholders (for a scripted chat layer that never calls them)."""

from __future__ import annotations

from typing import Any


def context(**overrides: Any) -> Any:
    """``Context`` with both systems at ``http://fake/v1`` and 3 candidates, ``overrides`` on top."""
    from scale_graph import Context

    base = {"system1_base_url": "http://fake/v1", "system1_model": "s1",
            "system2_base_url": "http://fake/v1", "system2_model": "s2", "candidates": 3}
    return Context(**{**base, **overrides})
