"""Pure parts of issue 20's refusals: the session header of any id, deeply nested dataset records."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

from scale_graph.errors import InputError
from scale_graph.evaluation.datasets import normalise
from scale_graph.servers.chat import session_header


@pytest.mark.parametrize("key", ["eval/évaluation/问题-1/0#1a2b3c4d", "run\x01id", "a b%c", "\udcff-surrogate"])
def test_a_session_header_carries_any_id_as_ascii(key):
    value = session_header(key)
    httpx.Headers({"X-Session-ID": value}).raw  # noqa: B018 - encodes, as a request would
    assert value.isascii() and value.isprintable() and " " not in value
    if "\udcff" not in key:
        assert urllib.parse.unquote(value) == key  # distinct ids stay distinct


def test_a_printable_ascii_session_id_is_sent_as_it_is():
    assert session_header("eval/run/p1/0#deadbeef") == "eval/run/p1/0#deadbeef"


def test_a_record_nested_too_deeply_to_read_names_where():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InputError, match="^data.jsonl, line 3: a field is nested too deeply$"):
        normalise([("data.jsonl, line 3", {"problem": deep, "answer": "1"})], "data.jsonl")


def _status_error(status: int, **headers: str):
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(status, request=request, headers=headers, json={"error": {"message": "nope"}})
    return openai.APIStatusError("nope", response=response, body=None)


@pytest.mark.parametrize("status, headers, retried", [(403, {}, False), (422, {}, False), (413, {}, False),
                                                       (503, {}, True), (429, {}, True), (409, {}, True),
                                                       (500, {"x-should-retry": "false"}, False),
                                                       (400 + 18, {"x-should-retry": "true"}, True)])
def test_a_status_that_is_not_retried_never_says_it_was(status, headers, retried):
    from scale_graph.servers.chat_errors import EndpointError, translated_errors
    from scale_graph.servers.endpoints import Endpoint

    with pytest.raises(EndpointError) as failed, translated_errors(Endpoint(2, "http://127.0.0.1:1/v1", "m",
                                                                            max_retries=1)):
        raise _status_error(status, **headers)
    message = str(failed.value)
    if retried:
        assert f"failed after 1 retries: HTTP {status}" in message, message
    else:
        assert f"failed (HTTP {status}, a status that is not retried)" in message and "after" not in message, message
