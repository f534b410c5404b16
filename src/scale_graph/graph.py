"""The SCALE workflow (paper Fig. 1) as a LangGraph graph.

START → decompose → select → (review) → assess ─route─┬→ solve_system1 ─┐
                                          ▲             └→ solve_system2 ─┤
                                          └──── more sub-problems ◄───────┘
                                                done → finalize → END
"""

from __future__ import annotations

from functools import partial

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from scale_graph.context import Context
from scale_graph.journal import ChatLayer, journaled_node
from scale_graph.nodes.assess import assess
from scale_graph.nodes.decompose import decompose
from scale_graph.nodes.finalize import finalize
from scale_graph.nodes.review import after_select, review
from scale_graph.nodes.route import next_subproblem, route
from scale_graph.nodes.select import select
from scale_graph.nodes.solve import solve_system1, solve_system2
from scale_graph.state import InputState, OutputState, State


def build_graph(checkpointer: BaseCheckpointSaver | None = None, store: BaseStore | None = None,
                *, platform: bool = False, chat: ChatLayer | None = None) -> CompiledStateGraph:
    """Compile SCALE. Long texts go to ``store`` (in memory when none is given).

    ``platform=True`` leaves checkpointer and store to the LangGraph server (``langgraph dev``);
    ``chat`` hands every node another chat layer (a fake in tests) instead of the endpoints of
    the run context.
    """
    node = partial(journaled_node, chat=chat)
    builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    builder.add_node("decompose", node(decompose, starts_run=True))
    builder.add_node("select", node(select))
    builder.add_node("review", node(review))
    builder.add_node("assess", node(assess))
    builder.add_node("solve_system1", node(solve_system1))
    builder.add_node("solve_system2", node(solve_system2))
    builder.add_node("finalize", node(finalize))

    builder.add_edge(START, "decompose")
    builder.add_edge("decompose", "select")
    builder.add_conditional_edges("select", after_select)
    builder.add_edge("review", "assess")
    builder.add_conditional_edges("assess", route)
    builder.add_conditional_edges("solve_system1", next_subproblem)
    builder.add_conditional_edges("solve_system2", next_subproblem)
    builder.add_edge("finalize", END)
    if platform:
        return builder.compile(name="SCALE")
    return builder.compile(checkpointer=checkpointer, store=store if store is not None else InMemoryStore(), name="SCALE")


#: The graph `langgraph.json` exports; the LangGraph server supplies checkpointer and store.
graph = build_graph(platform=True)
