"""SCALE-Graph: Selective Resource Allocation (Xiao et al., AAAI 2026) as a LangGraph workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scale_graph.context import Context
    from scale_graph.errors import ConfigError
    from scale_graph.graph import build_graph, graph

__all__ = ["Context", "ConfigError", "build_graph", "graph"]

_WHERE = {"Context": "scale_graph.context", "ConfigError": "scale_graph.errors",
          "build_graph": "scale_graph.graph", "graph": "scale_graph.graph"}


def __getattr__(name: str) -> Any:
    # Lazy: `import scale_graph.cli` must not pull in LangGraph (the CLI answers --help at once).
    if name not in _WHERE:
        raise AttributeError(f"module 'scale_graph' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
