"""What-if prototypes of package fixes, used by the benchmarks only to *measure* a proposed
change. Nothing here is imported by the package; the package code is untouched.

``batched_load_graph`` builds the SCALE graph with a node wrapper identical to
:func:`scale_graph.journal.node` except that a ``Load`` of k journal entries is one
``store.abatch`` of ``GetOp``s (one transaction, one ``SELECT … WHERE key IN (…)``) instead of k
sequential ``store.aget`` calls (k transactions).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from langgraph.store.base import GetOp


def batched_node(logic):
    from langchain_core.runnables import RunnableLambda

    from scale_graph import journal
    from scale_graph.servers.chat import ChatReply

    original = journal.node(logic)  # keeps the sync body as is

    async def arun(state: dict) -> dict:
        context, store = journal._runtime()
        run_id = journal.current_run_id(state)
        if "run_id" not in state:
            await journal.asave_run(store, run_id, state.get("problem", ""), context)
        steps = logic({**state, "run_id": run_id}, context)
        namespace = journal.calls_namespace(run_id)
        answer: Any = None
        while True:
            try:
                request = steps.send(answer)
            except StopIteration as finished:
                return finished.value
            if isinstance(request, journal.Load):
                items = await store.abatch([GetOp(namespace, key) for key in request.keys]) if request.keys else []
                answer = {item.key: ChatReply.from_dict(item.value) for item in items if item is not None}
                continue
            cached = await store.aget(namespace, request.key)
            if cached is not None:
                answer = ChatReply.from_dict(cached.value)
                continue
            answer = await journal.systems_for(context).acall(request)
            await store.aput(namespace, request.key, answer.to_dict(), index=False)

    return RunnableLambda(original.func, arun, name=logic.__name__)


@contextmanager
def batched_load() -> Iterator[None]:
    """While active, ``scale_graph.build_graph`` wraps nodes with :func:`batched_node`."""
    import importlib

    graph_module = importlib.import_module("scale_graph.graph")  # the module, not the `graph` object

    saved = graph_module.node
    graph_module.node = batched_node
    try:
        yield
    finally:
        graph_module.node = saved


def batched_load_graph(checkpointer=None, store=None):
    from scale_graph import build_graph

    with batched_load():
        return build_graph(checkpointer, store)
