"""One body for the blocking and the async path.

LangGraph nodes and the chat layer must work from ``graph.invoke`` (blocking) and from
``graph.ainvoke`` (many problems in flight). Instead of two copies of each loop, the loop is
written once as an ``async def`` that awaits what it is given through :func:`settled`: handed
blocking functions, it never has to wait, so :func:`run_blocking` runs it to its end on the
calling thread, without an event loop.
"""

from __future__ import annotations

import inspect
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


async def settled(value: Any) -> Any:
    """``value`` itself, or what it gives once awaited when it is awaitable."""
    return await value if inspect.isawaitable(value) else value


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never has to wait (everything it awaits is already settled) to its
    end, here; one that would wait is a programming error."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    raise RuntimeError("a blocking body waited on an event loop (it was handed an async function)")
