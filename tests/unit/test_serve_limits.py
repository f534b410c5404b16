"""`scale serve`'s request checks and log bounds, without a server (tests/system/test_serve.py has them served)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("starlette")

from scale_graph.serve.checks import APIError, parse_body
from scale_graph.serve.connections import (
    RepeatFilter,
    ServeLimits,
    default_max_connections,
)


@pytest.mark.parametrize("raw, message", [(b"[" * 50_000, "nested too deeply"), (b"{]", "not valid JSON"),
                                          (b"\xff\xfe\x00", "not valid JSON"), (b"1" * 5000, "not valid JSON"),
                                          (b'"x"', "must be a JSON object")])
def test_an_unparsable_body_is_a_400(raw, message):
    with pytest.raises(APIError) as caught:
        parse_body(raw)
    assert caught.value.status == 400 and message in caught.value.message


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)


def test_repeated_log_lines_pass_once_per_period_with_a_count(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("scale_graph.serve.connections.time.monotonic", lambda: now[0])
    quiet = RepeatFilter(every_s=10)
    assert quiet.filter(_record("Invalid HTTP request received."))
    assert not any(quiet.filter(_record("Invalid HTTP request received.")) for _ in range(1000))
    assert quiet.filter(_record("another line"))  # each template on its own
    now[0] += 11
    again = _record("Invalid HTTP request received.")
    assert quiet.filter(again) and "(and 1000 more like it in the last 11 s)" in again.getMessage()


def test_the_connection_cap_leaves_half_the_descriptors(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    assert default_max_connections() == 128 and ServeLimits().max_connections == 128
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert default_max_connections() == 1000
