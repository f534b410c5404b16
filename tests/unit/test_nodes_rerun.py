"""New input on a thread whose run finished starts a clean new run of that thread."""

from scale_graph import build_graph
from scale_graph.journal import RUNS_NAMESPACE
from scale_graph.persistence import open_sync
from tests.support.run_context import context

CONFIG = {"configurable": {"thread_id": "my-run"}}


def respond_by_problem(call):
    """Decompositions and answers that differ per problem, so each run's records are recognisable."""
    prompt = call.messages[-1][1]
    tag = "two" if "Problem:\nsecond" in prompt else "one"
    stage = call.key.split("/")[0]
    if stage == "decompose":
        steps = [f"{tag} a", f"{tag} b"] if tag == "two" else [f"{tag} a", f"{tag} b", f"{tag} c"]
        return '{"subproblems": [' + ", ".join(f'"{s}"' for s in steps) + "]}"
    if stage == "select":
        return '{"choice": 1}'
    if stage == "assess":
        return '{"difficulty": 0.9}' if tag == "two" else "no idea"  # run one leaves warnings
    return f"{tag} \\boxed{{{tag}-{call.key.split('/')[1]}}}"


def test_second_invoke_on_a_finished_thread_is_a_clean_new_run(scripted, tmp_path):
    fake = scripted(respond_by_problem)
    with open_sync(tmp_path / "runs.db") as (saver, store):
        graph = build_graph(saver, store, chat=fake)
        first = graph.invoke({"problem": "first"}, CONFIG, context=context(parse_retries=0), durability="sync")
        assert first["answer"] == "one-2" and len(first["steps"]) == 3 and first["warnings"]
        second = graph.invoke({"problem": "second"}, CONFIG, context=context(parse_retries=0), durability="sync")
        snapshot = graph.get_state(CONFIG)
        record = store.get(RUNS_NAMESPACE, "my-run")
    assert second["answer"] == "two-1"
    assert [s["text"] for s in second["steps"]] == ["two a", "two b"]
    assert [s["result"] for s in second["steps"]] == ["two-0", "two-1"]
    assert second["subproblems"] == ["two a", "two b"] and second["candidates"] == [["two a", "two b"]] * 3
    assert second["warnings"] == []  # the first run's warnings are not the second's
    assert second["usage"]["assess"]["calls"] == 2 and second["usage"]["solve_system2"]["calls"] == 2
    assert snapshot.next == () and snapshot.values["problem"] == "second"
    assert record.value["problem"] == "second"  # what a resume of this thread would run


def test_second_ainvoke_on_a_finished_thread_is_a_clean_new_run(scripted):
    import asyncio

    from langgraph.checkpoint.memory import InMemorySaver

    fake = scripted(respond_by_problem)
    graph = build_graph(InMemorySaver(), chat=fake)

    async def twice():
        await graph.ainvoke({"problem": "first"}, CONFIG, context=context(parse_retries=0))
        return await graph.ainvoke({"problem": "second"}, CONFIG, context=context(parse_retries=0))

    second = asyncio.run(twice())
    assert second["answer"] == "two-1" and len(second["steps"]) == 2 and second["warnings"] == []
