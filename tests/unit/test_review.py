"""Optional human review of the decomposition: interrupt after select, resume with a decision."""

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from scale_graph import build_graph
from tests.support.run_context import context

CONFIG = {"configurable": {"thread_id": "rv"}}


def test_review_off_by_default_never_pauses(scripted):
    fake = scripted()
    graph = build_graph(InMemorySaver(), chat=fake)
    graph.invoke({"problem": "p"}, CONFIG, context=context())
    assert not graph.get_state(CONFIG).interrupts


@pytest.mark.parametrize("decision, expected, method", [
    ("accept", ["find a", "find b", "find a+b"], "model"),
    (["only step"], ["only step"], "human"),
    ({"subproblems": ["x", "y"]}, ["x", "y"], "human"),
])
def test_review_pauses_and_resumes(scripted, decision, expected, method):
    fake = scripted()
    graph = build_graph(InMemorySaver(), chat=fake)
    graph.invoke({"problem": "p"}, CONFIG, context=context(review=True))
    snapshot = graph.get_state(CONFIG)
    assert snapshot.next == ("review",)
    assert snapshot.interrupts[0].value["subproblems"] == ["find a", "find b", "find a+b"]
    assert fake.stage_calls("assess") == []  # nothing solved before the review
    out = graph.invoke(Command(resume=decision), CONFIG, context=context(review=True))
    assert out["subproblems"] == expected and out["selection"]["method"] == method
    assert len(out["steps"]) == len(expected) and out["answer"]


def test_bad_review_decision_is_asked_again_and_the_run_stays_resumable(scripted):
    """LangGraph keeps every resume value: a bad one that raised would fail every later resume."""
    fake = scripted()
    graph = build_graph(InMemorySaver(), chat=fake)
    graph.invoke({"problem": "p"}, CONFIG, context=context(review=True))
    for bad in ([], [f"step {i}" for i in range(100)], 42):
        graph.invoke(Command(resume=bad), CONFIG, context=context(review=True))
        snapshot = graph.get_state(CONFIG)
        assert snapshot.next == ("review",) and fake.stage_calls("assess") == []
        assert snapshot.interrupts[0].value["error"].startswith("review: resume with 'accept' or 1 to 12 sub-problem")
    out = graph.invoke(Command(resume=["x", "y"]), CONFIG, context=context(review=True))
    assert out["subproblems"] == ["x", "y"] and out["answer"] and out["selection"]["method"] == "human"
