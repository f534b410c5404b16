"""SCALE-Graph: Selective Resource Allocation (Xiao et al., AAAI 2026) as a LangGraph workflow."""

from scale_graph.context import Context
from scale_graph.graph import build_graph, graph
from scale_graph.settings import ConfigError

__all__ = ["Context", "ConfigError", "build_graph", "graph"]
