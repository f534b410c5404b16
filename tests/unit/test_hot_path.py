"""The orchestrator's hot path: cheaper code that must give exactly what the plain code gave.

Journal keys and reply dicts are stored, so their bytes must not change; history reads served
from the process's own copy of the journal must give the run the same replies the store holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from dataclasses import asdict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.base import GetOp
from langgraph.store.memory import InMemoryStore

from scale_graph import build_graph, journal
from scale_graph.servers.chat import ChatCall, ChatReply, Choice
from tests.support.run_context import context


def full_reply() -> ChatReply:
    """Every field away from its default, so a field left out of to_dict shows."""
    return ChatReply(choices=[Choice("answer \\boxed{3}", "thinking " * 100, "stop"), Choice("", "r", None)],
                     prompt_tokens=11, completion_tokens=22, reasoning_tokens=7, requests=2, latency_s=0.25,
                     model="m", warnings=["degraded: x"], reused=True)


def test_reply_dict_is_what_asdict_gives_field_for_field():
    reply = full_reply()
    data = reply.to_dict()
    assert data == asdict(reply) and list(data) == list(asdict(reply))  # same keys, same order: same stored JSON
    assert ChatReply.from_dict(data) == reply


def test_journal_key_is_the_digest_of_the_request_as_before():
    call = ChatCall(key="solve/2/0", system=2, messages=[("system", "S"), ("user", "ü " * 500)], thinking=True,
                    max_tokens=512, temperature=0.6, top_p=0.95, top_k=20, seed=7, n=3,
                    schema={"name": "d", "schema": {"type": "object", "required": ["d"]}})
    request = asdict(call)
    for later in ("key", "thinking_budget", "continue_final", "fallback"):  # fields the old digest did not have
        del request[later]
    digest = hashlib.blake2b(json.dumps(request, sort_keys=True).encode(), digest_size=6).hexdigest()
    assert call.journal_key == f"solve/2/0#{digest}"  # journals written before stay found on resume
    budgeted = dataclasses.replace(call, thinking_budget=256)
    assert budgeted.journal_key != call.journal_key  # a new field, once set, is part of the request


def test_a_reply_read_from_a_dict_has_its_own_warnings():
    data = full_reply().to_dict()
    ChatReply.from_dict(data).warnings.append("changed by a caller")
    assert data["warnings"] == ["degraded: x"]  # a cached journal entry cannot be changed through a reply


class CountingStore(InMemoryStore):
    """An in-memory store that records the journal keys read in batches (history loads), not
    those of single gets (the look-up before each call)."""

    def __init__(self) -> None:
        super().__init__()
        self.history_reads: list[str] = []
        self._single = False

    def get(self, *args, **kwargs):
        self._single = True
        try:
            return super().get(*args, **kwargs)
        finally:
            self._single = False

    async def aget(self, *args, **kwargs):
        return self.get(*args, **kwargs)

    def batch(self, ops):
        ops = list(ops)
        if not self._single:
            self.history_reads += [op.key for op in ops if isinstance(op, GetOp) and op.namespace[-1:] == ("calls",)]
        return super().batch(ops)

    async def abatch(self, ops):
        return self.batch(ops)


def test_history_is_read_from_the_replies_this_process_journalled(scripted):
    fake = scripted()
    store = CountingStore()
    out = build_graph(None, store, chat=fake).invoke({"problem": "What is a+b?"}, {"configurable": {"thread_id": "t"}},
                                          context=context())
    assert [s["result"] for s in out["steps"]] == ["11", "22", "33"]  # assess/solve 2 and 3 saw their history
    keys = [key for step in out["steps"] for key in step["call_keys"]]
    assert keys and not set(keys) & set(store.history_reads)  # every earlier solution from memory


def test_history_comes_from_the_store_when_this_process_has_not_seen_it(scripted):
    fake = scripted()
    store = CountingStore()
    graph = build_graph(InMemorySaver(), store, chat=fake)
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"problem": "What is a+b?"}, config, context=context(), interrupt_after=["solve_system2"])
    journal._reply_caches.pop(store)  # as if another process had journalled sub-problem 1
    out = asyncio.run(graph.ainvoke(None, config, context=context()))
    assert [s["result"] for s in out["steps"]] == ["11", "22", "33"]
    assert len(fake.calls) == len({c.key for c in fake.calls})  # no call made twice
    first = out["steps"][0]["call_keys"]
    assert first and set(first) <= set(store.history_reads)  # read from the store, once, then from memory
    assert store.history_reads.count(first[0]) == 1


def test_reply_cache_keeps_the_most_recently_used_within_its_budget():
    cache = journal.ReplyCache(max_chars=10)
    ns = ("scale", "r", "calls")

    def value(text: str) -> dict:
        return ChatReply([Choice(text, "", "stop")]).to_dict()

    cache.put(ns, "a", value("aaaa"))
    cache.put(ns, "b", value("bbbb"))
    assert set(cache.get_many(ns, ["a"])) == {"a"}  # a is now the most recently used
    cache.put(ns, "c", value("cccc"))  # 12 > 10: the least recently used (b) goes
    assert set(cache.get_many(ns, ["a", "b", "c"])) == {"a", "c"} and cache.chars == 8
    cache.put(ns, "huge", value("x" * 11))  # larger than the whole budget: not kept, nothing evicted
    assert set(cache.get_many(ns, ["a", "c", "huge"])) == {"a", "c"}
    assert cache.get_many(("scale", "other", "calls"), ["a"]) == {}  # per run namespace
    assert journal.reply_cache(InMemoryStore()) is not journal.reply_cache(InMemoryStore())  # per store


def test_chat_result_from_a_typed_reply_matches_langchain_openai():
    from langchain_openai import ChatOpenAI
    from openai.types.chat import ChatCompletion

    from scale_graph.servers.chat import ReasoningChatOpenAI

    response = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "hi", "reasoning_content": "r" * 10}},
                    {"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": "no", "refusal": "no"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    settings = {"model": "m", "api_key": "EMPTY", "base_url": "http://127.0.0.1:9/v1"}
    ours = ReasoningChatOpenAI(**settings)._create_chat_result(response)
    theirs = ChatOpenAI(**settings)._create_chat_result(response)
    assert ours.llm_output == theirs.llm_output
    for mine, parent in zip(ours.generations, theirs.generations, strict=True):
        kwargs = dict(mine.message.additional_kwargs)
        assert kwargs.pop("reasoning_content") in ("r" * 10, "")  # what the parent class drops
        assert kwargs == parent.message.additional_kwargs  # refusal (and parsed) as the parent sets them
        assert (mine.message.content, mine.message.usage_metadata) == (parent.message.content, parent.message.usage_metadata)
    assert [g.generation_info["finish_reason"] for g in ours.generations] == ["length", "stop"]  # each its own
