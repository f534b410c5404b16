"""`scale traces generate|export`: rendering, filtering, dedup, caps, formats, checks, statistics —
on hand-made traces and on SCALE runs against the fake OpenAI server (real HTTP, no model);
exported files read back with the `datasets` JSON loader and rendered by a real chat template."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session

from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.grading import Grade, grade
from scale_graph.evaluation.methods import Outcome, thread_id
from scale_graph.evaluation.store import Result, ResultsStore
from scale_graph.parsing import last_boxed
from scale_graph.cli.traces import traces_app
from scale_graph.traces.export import ExportOptions, natural_key, select, stats_path_for, statistics
from scale_graph.traces.render import FORMATS, SubproblemTrace, Trace, record, render
from scale_graph.traces.validate import (
    assistant_text,
    check_record,
    survives_chat_template,
    user_text,
    validate_file,
    validate_lines,
)
from tests.support.cli import scale
from tests.support.datasets import DATASETS, write_datasets

DATA = Path("data")  # written into the test's folder by the preset_files fixture (or `generated`)
AIME = DATASETS["aime24"][:2]
FIRST = AIME[0]["id"]


@pytest.fixture(autouse=True)
def preset_files(isolated):
    """The small preset files of ``tests.conftest.DATASETS`` in ``./data`` of the test's folder."""
    return write_datasets(isolated / "data")


# ---- hand-made traces ------------------------------------------------------------------------
def sub(text: str, system: int, solution: str, reasoning: str = "") -> SubproblemTrace:
    return SubproblemTrace(text=text, system=system, solution=solution, reasoning=reasoning,
                           result=last_boxed(solution), completion_tokens=len(solution) // 4)


def make(problem_id: str = "1", sample: int = 0, *, answer: str | None = "42", gold: str = "42",
         subs: list[SubproblemTrace] | None = None, problem: str = "What is 6 times 7?") -> Trace:
    subs = subs if subs is not None else [
        sub("Write the product as repeated addition.", 1, "6 + 6 + 6 + 6 + 6 + 6 + 6, so \\boxed{6 \\cdot 7}."),
        sub("Evaluate the sum.", 2, "Adding gives \\boxed{42}.", reasoning="6, 12, 18, 24, 30, 36, 42."),
    ]
    return Trace(problem_id=problem_id, sample=sample, problem=problem, answer=answer, gold=gold,
                 correct=grade(gold, answer).correct, subproblems=subs, completion_tokens=100 + sample)


def test_render_follows_the_documented_template():
    response = render(make())
    assert response == (
        "Let me break this problem into 2 sub-problems:\n"
        "1. Write the product as repeated addition.\n"
        "2. Evaluate the sum.\n"
        "\n"
        "### Sub-problem 1: Write the product as repeated addition.\n"
        "6 + 6 + 6 + 6 + 6 + 6 + 6, so \\boxed{6 \\cdot 7}.\n"
        "\n"
        "### Sub-problem 2: Evaluate the sum.\n"
        "Adding gives \\boxed{42}.\n"
        "\n"
        "Therefore, the final answer is \\boxed{42}.")
    assert "<think>" not in response and last_boxed(response) == "42"


def test_reasoning_is_a_think_block_before_system2_solutions_only():
    trace = make(subs=[sub("Step one.", 1, "Easy: \\boxed{1}.", reasoning="ignored: System 1"),
                       sub("Step two.", 2, "Hard: \\boxed{2}.", reasoning="Long thought\nover two lines."),
                       sub("Step three.", 2, "Also hard: \\boxed{42}.", reasoning="")],
                 answer="42")
    response = render(trace, include_reasoning=True)
    assert response.count("<think>") == response.count("</think>") == 1
    assert ("### Sub-problem 2: Step two.\n<think>\nLong thought\nover two lines.\n</think>\n\nHard: \\boxed{2}."
            in response)
    assert "ignored" not in response and "Let me break this problem into 3 sub-problems:" in response
    assert response.endswith("Therefore, the final answer is \\boxed{42}.")
    assert "<think>" not in render(trace)


def test_multiline_subproblem_text_stays_on_one_line_of_the_plan():
    response = render(make(subs=[sub("Find\n  the   sum.", 1, "\\boxed{42}")]))
    assert "1. Find the sum.\n" in response and "Let me break this problem into 1 sub-problem:" in response


def test_select_drops_incomplete_and_with_correct_only_the_wrong():
    traces = [make("1", 0), make("1", 1, answer="41"), make("2", 0, answer=None), make("3", 0, subs=[]),
              make("4", 0, subs=[SubproblemTrace("never solved", None)])]
    everything = select(traces, ExportOptions())
    assert [(k.trace.problem_id, k.trace.sample) for k in everything.kept] == [("1", 0), ("1", 1), ("2", 0)]
    assert everything.dropped == Counter(incomplete=2)
    correct = select(traces, ExportOptions(correct_only=True), Counter(failed=2))
    assert [(k.trace.problem_id, k.trace.sample) for k in correct.kept] == [("1", 0)]
    assert correct.dropped == Counter(incomplete=2, incorrect=2, failed=2)


def test_a_trace_without_final_answer_says_so_and_never_agrees():
    unanswered = make("2", 0, answer=None, gold="42")  # its last solution boxes 42 but the run had no answer
    response = render(unanswered)
    assert response.endswith("Adding gives \\boxed{42}.\n\nNo final answer was reached.")
    stats = statistics(select([unanswered, make("1", 0)], ExportOptions()), problems=2, traces=2,
                       options=ExportOptions())
    assert (stats["kept"], stats["unanswered"], stats["answer_agreement"]) == (2, 1, 0.5)


def test_dedup_drops_whitespace_variants_within_a_problem_only():
    base = make("1", 0)
    spaced = make("1", 1, subs=[sub("Write the product   as repeated addition.", 1,
                                    "6 + 6 + 6 + 6 + 6 + 6 + 6,\n\nso \\boxed{6 \\cdot 7}.  "),
                                sub("Evaluate the sum.", 2, "Adding gives \\boxed{42}.")])
    other_problem = make("2", 0)  # the same response for another problem stays
    different = make("1", 2, subs=[sub("Evaluate 6 times 7.", 2, "\\boxed{42}")])
    options = ExportOptions(dedup=True)
    chosen = select([base, spaced, other_problem, different], options)
    assert [(k.trace.problem_id, k.trace.sample) for k in chosen.kept] == [("1", 0), ("1", 2), ("2", 0)]
    assert chosen.dropped == Counter(duplicate=1)
    assert len(select([base, spaced, other_problem, different], ExportOptions()).kept) == 4
    # with reasoning the two differ (sample 1 has no System 2 reasoning), so both stay
    assert len(select([base, spaced], ExportOptions(dedup=True, include_reasoning=True)).kept) == 2


def test_max_per_problem_prefers_correct_then_shorter():
    long_correct = make("7", 0, subs=[sub("Compute it.", 2, "A long way round. " * 20 + "\\boxed{42}")])
    short_wrong = make("7", 1, answer="41", subs=[sub("Compute it.", 1, "\\boxed{41}")])
    short_correct = make("7", 2, subs=[sub("Compute it.", 1, "Directly: \\boxed{42}")])
    mid_correct = make("7", 3, subs=[sub("Compute it.", 1, "Six sevens are forty-two: \\boxed{42}")])
    traces = [long_correct, short_wrong, short_correct, mid_correct, make("10", 0), make("9", 0)]
    one = select(traces, ExportOptions(max_per_problem=1))
    assert [(k.trace.problem_id, k.trace.sample) for k in one.kept] == [("7", 2), ("9", 0), ("10", 0)]
    assert one.dropped == Counter(over_cap=3)
    three = select(traces, ExportOptions(max_per_problem=3))  # all three correct beat the short wrong one
    assert [(k.trace.problem_id, k.trace.sample) for k in three.kept if k.trace.problem_id == "7"] == [
        ("7", 0), ("7", 2), ("7", 3)]
    wrong_only = select([short_wrong, make("7", 4, answer="40", subs=[sub("Compute it.", 1, "longer text \\boxed{40}")])],
                        ExportOptions(max_per_problem=1))
    assert [k.trace.sample for k in wrong_only.kept] == [1]  # shorter wins among the wrong
    with pytest.raises(ValueError, match="at least 1"):
        ExportOptions(max_per_problem=0)


def test_statistics_of_a_selection():
    traces = [make("1", 0), make("1", 1, answer="41"), make("2", 0, answer="0042", gold="42")]
    chosen = select(traces, ExportOptions())
    stats = statistics(chosen, problems=2, traces=4, options=ExportOptions(), run="r")
    assert (stats["problems"], stats["problems_kept"], stats["traces"], stats["kept"]) == (2, 2, 4, 3)
    assert stats["answer_agreement"] == pytest.approx(2 / 3, abs=1e-4)  # 0042 = 42
    assert stats["system2_share"] == 0.5 and stats["mean_subproblems"] == 2.0
    assert stats["mean_completion_tokens"] == pytest.approx(100.3, abs=0.1)
    assert stats["mean_assistant_chars"] == pytest.approx(sum(len(k.response) for k in chosen.kept) / 3, abs=0.1)
    empty = statistics(select([], ExportOptions()), problems=0, traces=0, options=ExportOptions())
    assert empty["answer_agreement"] is None and empty["mean_assistant_chars"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_has_its_keys_and_passes_the_checks(fmt):
    response = render(make(), include_reasoning=True)
    rec = record("What is 6 times 7?", response, fmt)
    expected = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "input", "output"}}
    assert set(rec) == expected[fmt] and check_record(rec, fmt) == []
    assert user_text(rec, fmt) == "What is 6 times 7?" and assistant_text(rec, fmt) == response
    if fmt == "messages":
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
    if fmt == "sharegpt":
        assert [m["from"] for m in rec["conversations"]] == ["human", "gpt"]
    if fmt == "alpaca":
        assert rec["input"] == ""
    assert validate_lines([json.dumps(rec)], fmt, references=["42"]) == []
    assert validate_lines([json.dumps(rec)], fmt, references=["042"]) == []  # equivalent, not equal
    wrong = validate_lines([json.dumps(rec)], fmt, references=["41"])
    assert len(wrong) == 1 and "not equivalent to the reference '41'" in str(wrong[0])
    for other in FORMATS:
        if other != fmt:
            assert check_record(rec, other), f"a {fmt} record must not pass as {other}"


@pytest.mark.parametrize("fmt, line, message", [
    ("messages", "not json", "not valid JSON"),
    ("messages", "[1, 2]", "expected a JSON object"),
    ("messages", '{"messages": [], "extra": 1}', "keys"),
    ("messages", '{"messages": []}', "non-empty list"),
    ("messages", '{"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "  "}]}',
     "turn 2: empty content"),
    ("messages", '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "p"}]}',
     "alternate"),
    ("messages", '{"messages": [{"role": "user", "content": "p"}, {"role": "robot", "content": "a"}]}',
     "unknown role"),
    ("messages", '{"messages": [{"role": "user", "text": "p"}]}', "expected an object with keys"),
    ("sharegpt", '{"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}]}',
     "turn 1: empty value"),
    ("sharegpt", '{"conversations": [{"from": "human", "value": "p"}]}', "ending with gpt"),
    ("alpaca", '{"instruction": "p", "output": "a"}', "keys"),
    ("alpaca", '{"instruction": "p", "input": "", "output": ""}', "empty 'output'"),
    ("alpaca", '{"instruction": 3, "input": "", "output": "a"}', "'instruction' is not a string"),
])
def test_checks_find_malformed_lines(fmt, line, message):
    issues = validate_lines([line], fmt)
    assert issues and message in str(issues[0]) and str(issues[0]).startswith("line 1: ")


def test_checks_a_missing_boxed_answer_and_the_reference_count():
    rec = record("p", "no box here", "messages")
    assert "no \\boxed{}" in str(validate_lines([json.dumps(rec)], "messages", ["1"])[0])
    assert validate_lines([json.dumps(rec)], "messages", [None]) == []  # no reference: not checked
    assert "reference" in str(validate_lines([json.dumps(rec)], "messages", [])[0])


# ---- SCALE runs against the fake server ------------------------------------------------------
def ok(*args: str):
    result = scale("traces", *args)
    assert result.exit_code == 0, result.output
    return result


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two AIME problems × 2 samples generated once against the fake server; problem 1's
    reference is then set to what its runs answered, so its traces count as correct."""
    from tests.support.fake_openai import FakeOpenAIServer

    folder = tmp_path_factory.mktemp("generated")
    with FakeOpenAIServer() as server, pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("SCALE_")]:
            patch.delenv(name)
        patch.chdir(folder)
        write_datasets(folder / DATA)
        patch.setenv("SCALE_STATE_DIR", str(folder / "state"))
        for system in ("1", "2"):
            patch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", server.base_url)
            patch.setenv(f"SCALE_SYSTEM{system}_MODEL", f"scale-system{system}")
        result = scale("traces", "generate", "--dataset", "aime24", "--data-dir", DATA, "--limit", "2", "--samples", "2",
                       "--out", "tr", "-k", "2", "--concurrency", "2")
        assert result.exit_code == 0, result.output
        assert "traces run tr (aime24)" in result.stdout and "4 trace(s) generated now" in result.stderr
        store = ResultsStore()
        try:
            with Session(store.engine) as session, session.begin():
                rows = session.scalars(sql_select(Result).where(Result.problem_id == FIRST)
                                       .order_by(Result.sample)).all()  # stored in no fixed order
                assert len(rows) == 2 and all(row.answer for row in rows)
                for row in rows:  # sample 0's answer becomes the reference of the first problem
                    row.gold = rows[0].answer
                    row.correct = grade(row.gold, row.answer).correct
        finally:
            store.close()
    return folder


@pytest.fixture
def run_dir(generated, isolated):
    """A private copy of the generated databases in the test's working directory."""
    for path in generated.glob("scale*.db*"):
        shutil.copy(path, isolated / path.name)
    return isolated


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_each_format_from_a_generated_run(run_dir, fmt):
    result = ok("export", "tr", "--format", fmt, "--out", "out.jsonl", "--include-reasoning")
    rows = lines(run_dir / "out.jsonl")
    assert len(rows) == 4 and validate_file(run_dir / "out.jsonl", fmt) == []
    problems = {row["problem"] for row in AIME}
    assert {user_text(row, fmt) for row in rows} == problems
    responses = [assistant_text(row, fmt) for row in rows]
    assert all(r.startswith("Let me break this problem into 3 sub-problems:\n1. ") for r in responses)
    assert all(r.rstrip().endswith("}.") and "Therefore, the final answer is \\boxed{" in r for r in responses)
    assert any("<think>\nLet me think about this step" in r for r in responses)  # fake System 2 reasoning
    stats = json.loads((run_dir / "out.stats.json").read_text())
    assert (stats["problems"], stats["traces"], stats["kept"], stats["options"]["format"]) == (2, 4, 4, fmt)
    assert 0 < stats["system2_share"] < 1 and stats["mean_completion_tokens"] > stats["mean_solve_tokens"] > 0
    assert stats["mean_assistant_chars"] == pytest.approx(sum(map(len, responses)) / 4, abs=0.1)
    assert stats["answer_agreement"] in (0.25, 0.5)  # the first problem's runs agree with their reference
    assert "kept after filtering" in result.stdout and "answer agreement" in result.stdout


def test_export_correct_only_dedup_and_cap_from_a_generated_run(run_dir):
    ok("export", "tr", "--out", "correct.jsonl", "--correct-only")
    stats = json.loads((run_dir / "correct.stats.json").read_text())
    assert stats["kept"] in (1, 2) and stats["answer_agreement"] == 1.0
    assert stats["dropped"]["incorrect"] == 4 - stats["kept"] and stats["problems_kept"] == 1

    ok("export", "tr", "--out", "capped.jsonl", "--max-per-problem", "1")
    capped = json.loads((run_dir / "capped.stats.json").read_text())
    assert (capped["kept"], capped["problems_kept"], capped["dropped"]["over_cap"]) == (2, 2, 2)

    ok("export", "tr", "--out", "dedup.jsonl", "--dedup")  # every sample has its own seed: nothing repeats
    assert json.loads((run_dir / "dedup.stats.json").read_text())["kept"] == 4


def test_export_with_an_ungraded_sample_succeeds_and_leaves_it_out_of_correct_only(run_dir, monkeypatch):
    """A grading timeout made `--correct-only` fail intermittently (a correct trace judged wrong on re-check)."""
    from scale_graph.evaluation import grading

    store = ResultsStore()
    try:
        with Session(store.engine) as session, session.begin():  # a correct sample the grader could not decide
            row = session.scalars(sql_select(Result).where(Result.problem_id == FIRST, Result.sample == 1)).one()
            row.correct, row.ungraded, row.grading_note = False, True, "ungraded: grading timed out"
    finally:
        store.close()
    ok("export", "tr", "--out", "correct.jsonl", "--correct-only")
    stats = json.loads((run_dir / "correct.stats.json").read_text())
    assert (stats["kept"], stats["dropped"]["ungraded"]) == (1, 1)
    # and a grader that cannot decide while the export re-checks its file fails nothing either
    monkeypatch.setattr(grading, "GRADE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(grading, "_compare", lambda gold, answer: time.sleep(1))
    result = ok("export", "tr", "--out", "again.jsonl", "--correct-only")
    assert len(lines(run_dir / "again.jsonl")) == 1 and "Traceback" not in result.output


def test_export_counts_failed_and_missing_results(run_dir):
    import asyncio

    from scale_graph.persistence import open_async
    from scale_graph.runs import delete_run

    store = ResultsStore()
    try:
        run_id = store.open_run("tr", "scale", "aime24", store.runs(["tr"])[0].config)
        store.save(run_id, Problem("3", "p", "1"), 0, Outcome(error="EndpointError: down"), Grade(False, "failed"))
    finally:
        store.close()

    async def remove() -> None:
        async with open_async("scale.db") as (saver, checkpoint_store):
            await delete_run(saver, checkpoint_store, thread_id("tr", FIRST, 1))

    asyncio.run(remove())
    ok("export", "tr", "--out", "t.jsonl")
    stats = json.loads((run_dir / "t.stats.json").read_text())
    assert stats["dropped"] == {"failed": 1, "missing": 1, "incomplete": 0, "ungraded": 0, "incorrect": 0,
                                "duplicate": 0, "over_cap": 0}
    assert (stats["traces"], stats["kept"], stats["problems"], stats["problems_kept"]) == (5, 3, 3, 2)


def test_dedup_of_identical_checkpointed_runs(isolated, endpoint_env, fake_server):
    """Two samples run with the same seed give the same trace: --dedup keeps one, the cap keeps
    the correct one among different ones."""
    import asyncio

    from scale_graph.graph import build_graph
    from scale_graph.persistence import open_async
    from scale_graph.runner import start
    from scale_graph.runs import summary
    from scale_graph.setup import resolve

    fake_server.configure(difficulties=[0.8])  # every sub-problem on System 2, whatever the order
    problem = Problem("1", "What is 6 times 7?", "42")
    context = resolve({"candidates": 2}).context  # endpoints from the environment

    async def run_samples() -> list[dict]:
        async with open_async("scale.db") as (saver, store):
            graph = build_graph(saver, store)
            return [summary(await start(graph, store, problem.problem, context, thread_id("dup", "1", sample)),
                            "") for sample in range(3)]

    shown = asyncio.run(run_samples())
    assert shown[0]["answer"] == shown[1]["answer"] == shown[2]["answer"]
    store = ResultsStore()
    try:
        run_id = store.open_run("dup", "scale", "handmade", {})
        for sample, values in enumerate(shown):
            answer = values["answer"] if sample < 2 else values["answer"] + "0"  # sample 2 is graded wrong
            store.save(run_id, Problem("1", problem.problem, shown[0]["answer"]), sample, Outcome(answer=answer),
                       Grade(sample < 2, "equivalent" if sample < 2 else "not equivalent"))
    finally:
        store.close()
    ok("export", "dup", "--out", "all.jsonl", "--include-reasoning")
    assert len(lines(isolated / "all.jsonl")) == 3  # the stored answer does not change the trace text
    ok("export", "dup", "--out", "dedup.jsonl", "--dedup", "--include-reasoning")
    stats = json.loads((isolated / "dedup.stats.json").read_text())
    assert (stats["kept"], stats["dropped"]["duplicate"]) == (1, 2)
    ok("export", "dup", "--out", "correct.jsonl", "--correct-only", "--dedup")
    stats = json.loads((isolated / "correct.stats.json").read_text())
    assert (stats["kept"], stats["dropped"]["incorrect"], stats["dropped"]["duplicate"]) == (1, 1, 1)
    assert stats["answer_agreement"] == 1.0 and stats["system2_share"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["export", "nope", "--out", "x.jsonl"], "no run named 'nope'"),
    (["export", "tr", "--out", "x.jsonl", "--format", "csv"], "unknown format 'csv'"),
    (["export", "tr", "--out", "x.jsonl", "--max-per-problem", "0"], "--max-per-problem must be at least 1"),
    (["export", "tr", "--out", "missing-folder/x.jsonl"], "output folder missing-folder does not exist"),
    (["export", "tr", "--out", "x.jsonl", "--db", "other.db"], "checkpoint database other.db does not exist"),
    (["export", "tr", "--out", "x.jsonl", "--results-db", "none.db"], "results database none.db does not exist"),
])
def test_export_errors_are_one_line(run_dir, args, message):
    result = scale("traces", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (run_dir / "x.jsonl").exists()


def test_generate_errors_and_non_scale_runs(isolated, endpoint_env):
    result = scale("traces", "generate", "--dataset", "nowhere.jsonl", "--out", "r")
    assert result.exit_code == 2 and "neither a preset" in result.stderr
    result = scale("traces", "generate", "--dataset", str(DATA / "aime24.jsonl"), "--out", "r", "--limit", "0")
    assert result.exit_code == 2 and "--limit must be at least 1" in result.stderr
    store = ResultsStore()
    try:
        store.open_run("cot-run", "cot", "aime24", {})
    finally:
        store.close()
    result = scale("traces", "export", "cot-run", "--out", "x.jsonl")
    assert result.exit_code == 2 and "traces come from SCALE runs only" in result.stderr
    result = scale("traces", "generate", "--dataset", str(DATA / "aime24.jsonl"), "--out", "cot-run", "--limit", "1")
    assert result.exit_code == 2 and "evaluation 'cot-run' was run with method=cot, not scale" in result.stderr


def test_generate_resumes_without_repeating_work(run_dir, endpoint_env, fake_server):
    result = ok("generate", "--dataset", "aime24", "--data-dir", DATA, "--limit", "2", "--samples", "2",
                "--out", "tr", "-k", "2")
    assert "0 trace(s) generated now, 4 already stored" in result.stderr
    assert fake_server.stats()["requests"] == 0


# ---- other readers of the files --------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_datasets_json_loader_reads_the_export(run_dir, fmt, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the Hugging Face `datasets` library is not installed "
                                   "(pip install 'scale-graph[hub]')")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok("export", "tr", "--format", fmt, "--out", "out.jsonl", "--include-reasoning")
    loaded = datasets.load_dataset("json", data_files=str(run_dir / "out.jsonl"), split="train",
                                   cache_dir=str(run_dir / "hf-cache"))
    written = lines(run_dir / "out.jsonl")
    assert loaded.num_rows == 4 and set(loaded.column_names) == set(written[0])
    assert [dict(row) for row in loaded] == written  # nothing lost or reshaped


def _local_tokenizer():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    from scale_graph.servers.local_model import (
        LocalModelError,
        default_model_dir,
        is_prepared,
        prepare_local_model,
    )

    if not is_prepared(default_model_dir()):
        pytest.skip("the local SmolLM2 model is not converted yet (scale servers up, or prepare_local_model())")
    try:
        folder = prepare_local_model()
    except LocalModelError as exc:
        pytest.skip(f"local SmolLM2 model unavailable: {exc}")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def test_messages_render_through_a_chat_template(run_dir):
    tokenizer = _local_tokenizer()
    ok("export", "tr", "--out", "plain.jsonl")
    ok("export", "tr", "--out", "thinking.jsonl", "--include-reasoning")
    for row in lines(run_dir / "plain.jsonl"):
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        assert survives_chat_template(tokenizer, row)
        assert text.index(row["messages"][0]["content"]) < text.index(row["messages"][1]["content"])
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert len(ids) > 100 and row["messages"][1]["content"] in tokenizer.decode(ids)
    # The local template is Qwen3-style: it cuts an assistant turn at its last </think>, which
    # loses the plan and the earlier sub-problems of a trace with reasoning (README warns).
    with_thinking = [row for row in lines(run_dir / "thinking.jsonl") if "</think>" in row["messages"][1]["content"]]
    assert with_thinking and not any(survives_chat_template(tokenizer, row) for row in with_thinking)


def test_natural_order_and_stats_path():
    assert sorted(["10", "2", "1", "a10", "a2"], key=natural_key) == ["1", "2", "10", "a2", "a10"]
    assert stats_path_for(Path("out/traces.jsonl")) == Path("out/traces.stats.json")
    assert stats_path_for(Path("traces")) == Path("traces.stats.json")
