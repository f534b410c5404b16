"""One sub-problem record: assess opens it and solve completes it, both at the index the state
names (``solved``); the nodes run alone as generators, without a graph."""

from typing import Any

from scale_graph.journal import LoadReplies
from scale_graph.nodes.assess import assess
from scale_graph.nodes.route import next_subproblem
from scale_graph.nodes.solve import solve_system1
from scale_graph.servers.chat import ChatCall, ChatReply, Choice
from scale_graph.state import merge_step_batches, merge_steps
from tests.support.run_context import context


def drive(logic, answer) -> tuple[dict, list[ChatCall]]:
    """Run node logic to its end, answering each ChatCall with ``answer(call)`` (no journal, no graph)."""
    calls: list[ChatCall] = []
    reply: Any = None
    while True:
        try:
            request = logic.send(reply)
        except StopIteration as finished:
            return finished.value, calls
        if isinstance(request, LoadReplies):
            reply = {}
        else:
            calls.append(request)
            reply = ChatReply(choices=[Choice(answer(request), "", "stop")])


STATE = {"run_id": "r", "problem": "P", "subproblems": ["a", "b", "c"], "solved": 1,
         "steps": [{"index": 0, "text": "a", "difficulty": 0.1, "system": 1, "call_keys": [], "result": "1"}]}


def test_assess_opens_the_record_of_the_sub_problem_the_state_names():
    update, calls = drive(assess(STATE, context()), lambda call: '{"difficulty": 0.3}')
    assert [c.key for c in calls] == ["assess/1/0"]
    assert update["steps"] == [{"index": 1, "text": "b", "difficulty": 0.3, "assess_tokens": 0, "warnings": []}]


def test_solve_completes_that_record_and_counts_it_solved():
    state = {**STATE, "steps": [*STATE["steps"], {"index": 1, "text": "b", "difficulty": 0.1, "warnings": ["w-assess"]}]}
    update, calls = drive(solve_system1(state, context()), lambda call: "\\boxed{2}")
    assert [c.key for c in calls] == ["solve/1/0"]
    assert update["solved"] == 2 and update["steps"][0]["index"] == 1 and update["steps"][0]["result"] == "2"
    merged = merge_steps(state["steps"], update["steps"])
    assert merged[1]["difficulty"] == 0.1 and merged[1]["result"] == "2" and merged[1]["text"] == "b"
    assert next_subproblem({**state, "solved": 2}) == "assess" and next_subproblem({**state, "solved": 3}) == "finalize"


def test_a_record_keeps_the_warnings_of_both_halves():
    opened = [{"index": 0, "text": "a", "warnings": ["from assess"]}]
    merged = merge_steps(opened, [{"index": 0, "result": "1", "warnings": ["from solve"]}])
    assert merged == [{"index": 0, "text": "a", "result": "1", "warnings": ["from assess", "from solve"]}]


def test_step_reducer_is_batching_invariant():
    writes = [[{"index": 0, "warnings": ["a"]}], [{"index": 0, "warnings": ["b"]}], [{"index": 1, "warnings": []}]]
    one_by_one = merge_step_batches(merge_step_batches(merge_step_batches([], writes[:1]), writes[1:2]), writes[2:])
    assert one_by_one == merge_step_batches([], writes)
