"""The one-body-for-both helper: a blocking run of an async body that never waits."""

from __future__ import annotations

import asyncio

import pytest

from scale_graph.blocking import run_blocking, settled

pytestmark = pytest.mark.unit


async def _twice(get):
    return [await settled(get(1)), await settled(get(2))]


def test_a_body_handed_blocking_functions_runs_to_its_end_without_a_loop():
    assert run_blocking(_twice(lambda x: x * 10)) == [10, 20]


def test_the_same_body_awaits_async_functions_under_a_loop():
    async def get(x):
        await asyncio.sleep(0)
        return x * 10

    assert asyncio.run(_twice(get)) == [10, 20]


def test_an_error_inside_reaches_the_blocking_caller():
    def get(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 1"):
        run_blocking(_twice(get))


def test_a_blocking_body_handed_an_async_function_is_refused():
    async def get(x):
        await asyncio.sleep(0)
        return x

    with pytest.raises(RuntimeError, match="waited on an event loop"):
        run_blocking(_twice(get))
