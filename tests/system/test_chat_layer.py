"""The chat layer against the fake server: what a 400 means, requests in flight, malformed replies, secrets.

Each test talks to a real HTTP server (``FakeOpenAIServer``) through :class:`Systems`, the way a
run does; the process-wide memory of refused features is cleared for every test.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scale_graph.servers import capabilities, chat
from scale_graph.servers.chat import (
    PREFIX_DEGRADED,
    ChatCall,
    ContextLengthError,
    EndpointError,
    Systems,
)
from scale_graph.servers.endpoints import Endpoint
from tests.support.fake_openai import CONTEXT_LIMIT, FakeOpenAIServer

pytestmark = pytest.mark.timeout(60)

SCHEMA = {"name": "difficulty", "schema": {"type": "object", "properties": {"difficulty": {"type": "number"}}}}
KEY = "sk-test-123456789"


@pytest.fixture(autouse=True)
def clean_memory(monkeypatch):
    monkeypatch.setattr(chat, "_refused", {})


@pytest.fixture
def server(fake_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The shared fake server (conftest), under the name these tests use."""
    return fake_server


def systems(server: FakeOpenAIServer, *, retries: int = 1, key: str | None = None, **options) -> Systems:
    one = Endpoint(1, server.base_url, "scale-system1", api_key=key, timeout=10, max_retries=retries)
    two = Endpoint(2, server.base_url, "scale-system2", api_key=key, timeout=10, max_retries=retries)
    return Systems(one, two, **options)


def system1_call(key: str = "solve#1", **changes) -> ChatCall:
    fields = {"key": key, "system": 1, "messages": [("user", "Solve: what is 1+1?")], "thinking": False,
              "max_tokens": 64, "temperature": 0.7}
    return ChatCall(**{**fields, **changes})


def bodies(server: FakeOpenAIServer, model: str = "scale-system1") -> list[dict]:
    return [entry["body"] for entry in server.stats()["log"] if entry["model"] == model]


def run_both(systems_: Systems, call: ChatCall):
    """The call made blocking, then on an event loop: the two paths a run uses."""
    return [systems_.call(call), asyncio.run(systems_.acall(call))]


# ---- item 1: a 400 degrades only what the server says it does not support -----------------------
def test_a_context_length_400_never_turns_thinking_on(server):
    """Issue 11.1, done-when: one context-length 400, then every System 1 call still says no thinking."""
    chosen = systems(server)
    server.inject("context_length", times=1)
    with pytest.raises(ContextLengthError) as caught:
        chosen.call(system1_call())
    assert caught.value.limit == CONTEXT_LIMIT and caught.value.requested == CONTEXT_LIMIT + 1000 + 64
    assert "maximum context length" in str(caught.value) and "System 1 endpoint" in str(caught.value)
    for number in range(3):
        for reply in run_both(chosen, system1_call(f"solve#{number}")):
            assert not any(w.startswith(PREFIX_DEGRADED) for w in reply.warnings), reply.warnings
    sent = bodies(server)
    assert len(sent) == 1 + 6
    assert all(body.get("chat_template_kwargs") == {"enable_thinking": False} for body in sent), sent


def test_context_length_with_an_async_call_and_schema_degrades_nothing(server):
    chosen = systems(server)
    server.inject("context_length", times=1)
    with pytest.raises(ContextLengthError):
        asyncio.run(chosen.acall(system1_call(schema=SCHEMA)))
    reply = chosen.call(system1_call(schema=SCHEMA))
    assert reply.warnings == []
    assert "response_format" in bodies(server)[-1] and "chat_template_kwargs" in bodies(server)[-1]


@pytest.mark.parametrize("message, limit, requested", [
    (("This model's maximum context length is 32768 tokens. However, your prompt contains at least 40001 input "
      "tokens, which exceeds this limit even without any output tokens."), 32768, 40001),
    (("The decoder prompt (length 9000) is longer than the maximum model length of 8192. Make sure that "
      "`max_model_len` is no smaller than the number of text tokens."), 8192, 9000),
    ("Input length (5000) exceeds model's maximum context length (4096).", 4096, 5000),
    ("This model's maximum context length is 4097 tokens. However, your messages resulted in 5000 tokens.", 4097, 5000),
    ("context_length_exceeded", None, None),
])
def test_context_length_wordings_are_recognised(message, limit, requested):
    import httpx
    import openai

    from scale_graph.servers.chat_errors import context_length_error, refusal

    response = httpx.Response(400, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    exc = openai.BadRequestError(message, response=response, body={"message": message, "param": None})
    assert refusal(exc) == "context_length"
    error = context_length_error(Endpoint(2, "http://x/v1", "m"), exc)
    assert (error.limit, error.requested) == (limit, requested)


def test_unsupported_response_format_degrades_schema_with_a_warning(server):
    server.configure(supports_json_schema=False)
    chosen = systems(server)
    first = chosen.call(system1_call(schema=SCHEMA))
    assert any(w.startswith(PREFIX_DEGRADED) and "refused schema" in w and "response_format not supported" in w
               for w in first.warnings), first.warnings
    later = asyncio.run(chosen.acall(system1_call("assess#2", schema=SCHEMA)))
    assert any(w.startswith(PREFIX_DEGRADED) and "sent without schema" in w for w in later.warnings), later.warnings
    sent = bodies(server)
    assert [("response_format" in b) for b in sent] == [True, False, False]
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in sent)


def test_unsupported_n_degrades_n_only(server):
    server.configure(supports_n=False)
    reply = systems(server).call(system1_call(n=3, schema=SCHEMA))
    assert len(reply.choices) == 3 and reply.requests == 3
    assert any(w.startswith(PREFIX_DEGRADED) and "refused n" in w for w in reply.warnings), reply.warnings
    assert all("response_format" in b for b in bodies(server))  # the schema was kept


def test_any_other_400_is_an_error_and_degrades_nothing(server):
    chosen = systems(server)
    server.inject("400", times=1)
    with pytest.raises(EndpointError, match=r"rejected the request \(HTTP 400\): injected fault 400"):
        chosen.call(system1_call(schema=SCHEMA, n=2))
    assert chat._refused == {}
    chosen.call(system1_call(schema=SCHEMA, n=2))
    last = bodies(server)[-1]
    assert last["n"] == 2 and "response_format" in last and last["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_rejected_thinking_switch_stops_with_the_endpoint_named(server):
    server.configure(supports_thinking_flag=False)
    with pytest.raises(EndpointError) as caught:
        systems(server).call(system1_call())
    message = str(caught.value)
    assert f"System 1 endpoint {server.base_url}" in message and "chat_template_kwargs" in message
    assert "SCALE_THINKING_FLAG=0" in message and "does not think by default" in message
    assert len(bodies(server)) == 1  # not retried without the switch


def test_thinking_flag_off_never_sends_it_and_says_so_on_every_reply(server):
    server.configure(supports_thinking_flag=False)
    chosen = systems(server, thinking_flag=False)
    replies = run_both(chosen, system1_call()) + run_both(chosen, system1_call("solve#2", system=2, thinking=True))
    for reply in replies:
        assert reply.choices[0].content
        assert any(w.startswith(PREFIX_DEGRADED) and "thinking_flag off" in w for w in reply.warnings), reply.warnings
    assert all("chat_template_kwargs" not in b for entry in server.stats()["log"] for b in [entry["body"]])


# ---- item 2: requests in flight are capped; a failing sibling stops the rest ---------------------
def test_in_flight_requests_are_capped_when_n_is_refused(server):
    server.configure(supports_n=False, latency=0.05)
    chosen = systems(server, max_in_flight=3)
    reply = asyncio.run(chosen.acall(system1_call(n=10)))
    assert len(reply.choices) == 10
    assert server.stats()["max_in_flight"] == 3
    server.reset()
    reply = chosen.call(system1_call(n=10))
    assert len(reply.choices) == 10 and server.stats()["max_in_flight"] == 3


def test_in_flight_cap_holds_across_concurrent_calls(server):
    server.configure(latency=0.05)
    chosen = systems(server, max_in_flight=2)

    async def many() -> None:
        await asyncio.gather(*(chosen.acall(system1_call(f"solve#{i}")) for i in range(8)))

    asyncio.run(many())
    assert server.stats()["requests"] == 8 and server.stats()["max_in_flight"] == 2


def test_a_failing_sibling_stops_the_other_async_samples(server):
    server.configure(supports_n=False, latency=0.2)
    chosen = systems(server, retries=0, max_in_flight=2)
    server.inject("500", times=1)

    async def failing_then_idle() -> None:
        with pytest.raises(EndpointError, match="HTTP 500"):
            await chosen.acall(system1_call(n=10))
        await asyncio.sleep(1.0)  # the loop keeps running: siblings that were not cancelled would go on

    asyncio.run(failing_then_idle())
    answered = [e for e in server.stats()["log"] if e["body"].get("n") is None]
    assert len(answered) <= 3, f"{len(answered)} samples were sent after one failed"


def test_a_failing_sibling_stops_the_other_blocking_samples(server):
    server.configure(supports_n=False, latency=0.2)
    chosen = systems(server, retries=0, max_in_flight=2)
    server.inject("500", times=1)
    with pytest.raises(EndpointError, match="HTTP 500"):
        chosen.call(system1_call(n=10))
    time.sleep(1.0)
    answered = [e for e in server.stats()["log"] if e["body"].get("n") is None]
    assert len(answered) <= 3, f"{len(answered)} samples were sent after one failed"


# ---- item 3: malformed replies are named and retried a bounded number of times ------------------
@pytest.mark.parametrize("fault, detail", [("no_choices", "no choices"), ("no_message", "a choice without a message"),
                                           ("not_json", "the body is not a JSON object")])
def test_malformed_reply_is_retried_then_named(server, fault, detail):
    chosen = systems(server, retries=2)
    server.inject(fault, times=2)
    assert chosen.call(system1_call()).choices[0].content  # two malformed replies, then a good one
    assert server.stats()["requests"] == 3
    server.reset()
    server.inject(fault, times=100)
    for attempt in (lambda: chosen.call(system1_call()), lambda: asyncio.run(chosen.acall(system1_call()))):
        with pytest.raises(EndpointError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith("malformed response from System 1 endpoint") and detail in message, message
        assert "after 2 retries" in message
    assert server.stats()["requests"] == 2 * 3


# ---- item 4: secrets never reach an error ------------------------------------------------------------
def test_an_upstream_error_echoing_the_key_is_redacted(server):
    chosen = systems(server, retries=0, key=KEY)
    server.inject("echo_auth_500", times=2)
    errors = []
    for attempt in (lambda: chosen.call(system1_call()), lambda: asyncio.run(chosen.acall(system1_call()))):
        with pytest.raises(EndpointError) as caught:
            attempt()
        errors.append(caught.value)
    assert server.stats()["log"][0]["status"] == 500
    for error in errors:
        assert "request headers were" in str(error)
        assert KEY not in str(error) and KEY not in error.reason and "[redacted]" in str(error)


def test_endpoint_error_redacts_at_construction():
    error = EndpointError("upstream said Authorization: Bearer abc.def and key sk-abcdefghijkl",
                          endpoint=Endpoint(1, "http://h/v1", "m", api_key="plainsecret"))
    assert "abc.def" not in str(error) and "sk-abcdefghijkl" not in str(error)
    assert "plainsecret" not in str(EndpointError("echo plainsecret", endpoint=Endpoint(1, "http://h/v1", "m",
                                                                                           api_key="plainsecret")))


# ---- native thinking budgets (issue 19) ------------------------------------------------------------

def thinking_call(key: str = "solve/0/0", **changes) -> ChatCall:
    fields = {"key": key, "system": 2, "messages": [("user", "Solve: what is 1+1?")], "thinking": True,
              "max_tokens": 200, "temperature": 0.6, "thinking_budget": 100}
    return ChatCall(**{**fields, **changes})


def test_an_enforced_thinking_budget_ends_the_thinking_and_the_answer_follows_in_one_request():
    with FakeOpenAIServer(thinking_budget="enforce", reasoning_bytes=2_000) as server:
        for reply in run_both(systems(server), thinking_call()):
            (choice,) = reply.choices
            assert choice.content.endswith("}.") and choice.ended_by == "thinking_budget" and reply.requests == 1
        assert [body["thinking_token_budget"] for body in bodies(server, "scale-system2")] == [100, 100]
        assert capabilities.support(server.base_url, "scale-system2") == "enforced"


def test_a_refused_thinking_budget_is_dropped_once_per_endpoint_and_said_without_degrading():
    with FakeOpenAIServer(thinking_budget="refuse", reasoning_bytes=2_000) as server:
        first, second = run_both(systems(server), thinking_call())
        assert any("refused thinking_token_budget" in w for w in first.warnings)
        assert not any(w.startswith(PREFIX_DEGRADED) for w in first.warnings + second.warnings)
        assert first.choices[0].ended_by == "length"  # cut while thinking: the forced-answer policy's case
        sent = ["thinking_token_budget" in body for body in bodies(server, "scale-system2")]
        assert sent == [True, False, False]  # the refusal, its retry, and the next call without asking again
        assert capabilities.support(server.base_url, "scale-system2") == "refused"


def test_an_ignored_thinking_budget_is_noticed_and_no_longer_sent():
    with FakeOpenAIServer(thinking_budget="ignore", reasoning_bytes=2_000) as server:
        first, second = run_both(systems(server), thinking_call(max_tokens=1_000))
        assert any("thought past it" in w for w in first.warnings)
        assert capabilities.support(server.base_url, "scale-system2") == "ignored"
        assert ["thinking_token_budget" in body for body in bodies(server, "scale-system2")] == [True, False]


def test_a_non_thinking_call_never_sends_a_thinking_budget(server):
    run_both(systems(server), system1_call(thinking_budget=100))
    assert not any("thinking_token_budget" in body for body in bodies(server))


def test_a_continuation_is_sent_as_vllm_takes_it(server):
    call = system1_call(system=2, messages=[("user", "q"), ("assistant", "<think>\nwork\n</think>\n\n")],
                        continue_final=True)
    run_both(systems(server), call)
    body = bodies(server, "scale-system2")[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\nwork\n</think>\n\n"}


def test_an_endpoint_that_cannot_continue_gets_the_fallback_on_system1_and_says_so():
    with FakeOpenAIServer(supports_continuation=False) as server:
        fallback = system1_call(messages=[("user", "q with the work pasted")])
        call = system1_call(system=2, messages=[("user", "q"), ("assistant", "<think>\nw\n</think>\n\n")],
                            continue_final=True, fallback=fallback)
        first, second = run_both(systems(server), call)
        for reply in (first, second):
            assert reply.choices[0].content.endswith("}.")
            assert any(w.startswith(PREFIX_DEGRADED) and "cannot continue" in w and "System 1 wrote" in w
                       for w in reply.warnings)
        models = [entry["model"] for entry in server.stats()["log"]]
        assert models == ["scale-system2", "scale-system1", "scale-system1"]  # asked once, then straight to System 1
