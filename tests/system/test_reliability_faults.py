"""Server faults: every fault the fake server can inject, through the `scale` CLI.

Transport faults (refused connection, 5xx, 429, timeout, dropped body) are retried a bounded
number of times (SCALE_MAX_RETRIES=1 here): one occurrence is absorbed, two make the run stop
with one `error:` line, exit 1 and a resume hint, and `scale runs resume` then completes it
without repeating a finished call. Malformed 200 replies (no choices, a choice without a
message, a body that is not JSON) are retried and named the same way. A 400 drops an optional
request feature only when the server says it does not support it (a "degraded:" warning); any
other 400 stops the run, and never switches the thinking flag off. Content faults fall back as documented, each with a warning in the
run (`runs show --json`) where the run's result is affected. Every test is time-bounded.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from scale_graph.cli import app
from scale_graph.servers import chat
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.reliability import difficulty_by_index

pytestmark = pytest.mark.timeout(60)

runner = CliRunner()
# Requests of an uninterrupted run with 3 sub-problems: decompose, select, 3 × (assess, solve);
# difficulties 0.1, 0.8, 0.1 by sub-problem (not by request count, so a repeated request gets
# the same answer) → System 1, 2, 1 (no cut-off thinking).
FULL_RUN = 8


@pytest.fixture
def server(monkeypatch):
    # features an endpoint refused (HTTP 400) are remembered per process by base URL: start clean
    monkeypatch.setattr(chat, "_refused", {})
    with FakeOpenAIServer(hang_seconds=5, difficulties=difficulty_by_index([0.1, 0.8, 0.1])) as fake:
        for system in (1, 2):
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", fake.base_url)
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_MODEL", f"scale-system{system}")
        monkeypatch.setenv("SCALE_MAX_RETRIES", "1")
        monkeypatch.setenv("SCALE_REQUEST_TIMEOUT", "2")
        monkeypatch.setenv("SCALE_CANDIDATES", "2")
        yield fake


def cli(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result, code: int) -> str:
    """The run failed cleanly: exit ``code``, no traceback, exactly one `error:` line, last."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def solved(*args: str) -> dict:
    result = cli("solve", "What is 1+1?", *args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def shown(thread: str) -> dict:
    result = cli("runs", "show", thread, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def all_warnings(run: dict) -> list[str]:
    return run["warnings"] + [w for row in run["subproblems"] for w in row["warnings"]]


def answered_bodies(server: FakeOpenAIServer) -> list[str]:
    return [json.dumps(e["body"], sort_keys=True) for e in server.stats()["log"] if e["status"] == 200]


# ---- transport faults ------------------------------------------------------------------------
# what the one error line must say when the fault persists ("refuse": its wording is checked below)
TRANSPORT = {"refuse": "after 1 retries", "500": "HTTP 500", "502": "HTTP 502", "503": "HTTP 503",
             "429": "HTTP 429", "timeout": "timed out after 1 retries (timeout 2 s)", "drop": "after 1 retries",
             "no_choices": "malformed response from System 1 endpoint", "no_message": "a choice without a message",
             "not_json": "the body is not a JSON object"}


@pytest.mark.parametrize("fault", sorted(TRANSPORT))
def test_transport_fault_is_retried_then_reported_and_resumable(server, fault):
    # once: absorbed by the bounded retry, nothing else is asked twice
    run = solved("--thread-id", "once")
    assert run["answer"] is not None
    server.reset()
    server.inject(fault, times=1, stage="difficulty")
    again = solved("--thread-id", "absorbed")
    assert again["answer"] == run["answer"]  # the same seeds give the same run
    stats = server.stats()
    assert stats["faults_served"] == 1 and stats["requests"] == FULL_RUN + 1
    assert len(set(answered_bodies(server))) == FULL_RUN

    # twice (more than SCALE_MAX_RETRIES=1): the run stops with one line, resumably
    server.reset()
    server.inject(fault, times=2, stage="solve")
    started = time.monotonic()
    failed = cli("solve", "What is 1+1?", "--thread-id", "down")
    error = one_error_line(failed, 1)
    assert TRANSPORT[fault] in error and "scale runs resume down" in error, error
    assert time.monotonic() - started < 30
    assert shown("down")["status"] == "stopped before solve_system1"
    before = server.stats()["by_stage"]
    assert before["solve"] == 2 and before["decomposition"] == 1 and before["difficulty"] == 1

    resumed = cli("runs", "resume", "down", "--json")
    assert resumed.exit_code == 0, resumed.output
    result = json.loads(resumed.stdout)
    assert result["answer"] == run["answer"]
    after = server.stats()["by_stage"]
    # nothing that had finished is asked again: only the failed solve is retried
    assert after == {"decomposition": 1, "selection": 1, "difficulty": 3, "solve": 3 + 2}
    assert shown("down")["status"] == "done"


def test_a_server_closing_the_connection_is_not_reported_as_a_timeout(server):
    server.inject("refuse", times=2)
    started = time.monotonic()
    error = one_error_line(cli("solve", "What is 1+1?", "--thread-id", "closed"), 1)
    assert time.monotonic() - started < 2 * 2, "the client waited for a timeout"
    assert "timed out" not in error and "unreachable" in error, error


def test_unsupported_feature_400_drops_it_with_a_warning(server):
    server.configure(supports_json_schema=False)
    run = solved("--thread-id", "degraded")
    assert run["answer"] is not None
    assert any(w.startswith("degraded: System 1 endpoint refused schema (HTTP 400: response_format not supported)")
               for w in run["warnings"]), run["warnings"]
    assert any("refused schema" in w for w in shown("degraded")["warnings"])
    log = server.stats()["log"]
    assert log[0]["status"] == 400 and "response_format" in log[0]["body"]
    assert "response_format" not in log[1]["body"] and log[1]["status"] == 200
    assert all(e["body"]["chat_template_kwargs"]["enable_thinking"] in (True, False) for e in log)


def test_any_other_400_stops_cleanly_and_resumes(server):
    # a 400 that names no unsupported feature is final: nothing is dropped and retried
    server.inject("400", times=1, stage="solve")
    failed = cli("solve", "What is 1+1?", "--thread-id", "rejected")
    error = one_error_line(failed, 1)
    assert "rejected the request (HTTP 400)" in error and "scale runs resume rejected" in error
    assert shown("rejected")["status"].startswith("stopped before solve_system")
    resumed = cli("runs", "resume", "rejected", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["answer"] is not None


# ---- content faults: documented fallbacks, each with a warning ---------------------------------
# (fault, stage, times, warning expected in the run or None, extra check on the --json result)
CONTENT = [
    ("empty", "decomposition", 1, "decompose: 2 of 2 candidates unusable (attempt 1)", None),
    ("empty", "decomposition", 3, "no usable decomposition; solving the problem as one sub-problem",
     lambda r: len(r["subproblems"]) == 1 and r["subproblems"][0]["text"] == "What is 1+1?"),
    ("empty", "selection", 3, "select: no valid choice after 3 attempts; using candidate 1",
     lambda r: r["selection"]["method"] == "fallback" and r["selection"]["chosen"] == 0),
    ("empty", "difficulty", 3, "assess: no difficulty for sub-problem 1 after 3 attempts; treated as hard",
     lambda r: r["subproblems"][0]["difficulty"] == 1.0 and r["subproblems"][0]["system"] == 2),
    ("empty", "solve", 1, "solve: empty solution for sub-problem 1 (attempt 1)",
     lambda r: r["subproblems"][0]["result"] is not None),
    ("empty", "solve", 3, "solve: no \\boxed{} result in the solution of sub-problem 1",
     lambda r: r["subproblems"][0]["result"] is None and r["answer"] is not None),
    ("reasoning_only", "decomposition", 1, None, lambda r: len(r["subproblems"]) == 3),
    ("reasoning_only", "solve", 1, "System 1 answered sub-problem 1 only in the reasoning field; used it",
     lambda r: r["subproblems"][0]["result"] is not None),
    ("length", "difficulty", 1, None, lambda r: r["subproblems"][0]["difficulty"] == 0.1),
    ("length", "solve", 1, "solve: empty solution for sub-problem 1 (attempt 1)",
     lambda r: r["subproblems"][0]["result"] is not None),
    ("malformed_json", "decomposition", 3, "no usable decomposition; solving the problem as one sub-problem",
     lambda r: len(r["subproblems"]) == 1),
    ("malformed_json", "selection", 3, "select: no valid choice after 3 attempts; using candidate 1", None),
    ("malformed_json", "difficulty", 1, None, lambda r: r["subproblems"][0]["difficulty"] == 0.1),
    ("malformed_json", "difficulty", 3, "treated as hard", lambda r: r["subproblems"][0]["system"] == 2),
    ("difficulty_out_of_range", "difficulty", 1, "assess: difficulty 7.5 of sub-problem 1 outside [0, 1]; clamped to 1",
     lambda r: r["subproblems"][0]["difficulty"] == 1.0 and r["subproblems"][0]["system"] == 2),
    ("no_difficulty", "difficulty", 3, "treated as hard", lambda r: r["subproblems"][0]["difficulty"] == 1.0),
    ("zero_subproblems", "decomposition", 1, "decompose: 2 of 2 candidates unusable (attempt 1)",
     lambda r: len(r["subproblems"]) == 3),
    ("zero_subproblems", "decomposition", 3, "no usable decomposition", lambda r: len(r["subproblems"]) == 1),
    ("many_subproblems", "decomposition", 1, "(2 longer than 12 sub-problems)", lambda r: len(r["subproblems"]) == 3),
    ("no_boxed", "solve", 1, "solve: no \\boxed{} result in the solution of sub-problem 1",
     lambda r: r["subproblems"][0]["result"] is None and r["answer"] is not None),
    ("no_boxed", "solve", 3, "finalize: the last sub-problem's solution has no \\boxed{} answer",
     lambda r: r["answer"] is None),
]


@pytest.mark.parametrize("fault, stage, times, warning, check", CONTENT,
                         ids=[f"{c[0]}-{c[1]}-x{c[2]}" for c in CONTENT])
def test_content_fault_falls_back_with_a_warning(server, fault, stage, times, warning, check):
    server.inject(fault, times=times, stage=stage)
    run = solved("--thread-id", "f")
    assert server.stats()["faults_served"] == times
    assert not server.stats()["pending_faults"]
    warnings = all_warnings(run)
    if warning is not None:
        assert any(warning in w for w in warnings), warnings
        stored = shown("f")
        assert stored["status"] == "done" and any(warning in w for w in all_warnings(stored))
    if check is not None:
        assert check(run), run
    # bounded: parse_retries=2 gives at most 3 attempts per call
    assert server.stats()["requests"] <= FULL_RUN + 2 * 3 + 3


def test_cut_off_system2_thinking_is_forced_to_an_answer(server):
    server.configure(difficulties=[0.9])  # System 2 first
    server.inject("length", times=1, stage="solve")
    run = solved("--thread-id", "cut")
    first = run["subproblems"][0]
    assert first["system"] == 2 and first["forced_answer"] and first["result"] is not None
    assert any("System 2 stopped thinking on sub-problem 1 (finish_reason=length)" in w for w in first["warnings"])


def test_faults_everywhere_never_loop(server):
    """Every content fault at once, many times: the run still ends, bounded."""
    for _ in range(10):  # interleaved: each request takes the oldest fault that applies to it
        for fault in ("empty", "malformed_json", "no_difficulty", "zero_subproblems", "no_boxed", "length",
                      "reasoning_only", "many_subproblems", "difficulty_out_of_range"):
            server.inject(fault)
    started = time.monotonic()
    result = cli("solve", "What is 1+1?", "--thread-id", "chaos", "--json")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    run = json.loads(result.stdout)
    assert run["warnings"] and server.stats()["requests"] < 40


# ---- the server goes away in the middle of a run -------------------------------------------------
def test_server_stopped_mid_run_fails_clearly_then_resumes(server):
    server.configure(latency=0.1)
    reference = solved("--thread-id", "ref")
    server.reset()

    def stop_after(count: int) -> None:
        deadline = time.monotonic() + 30
        while server.stats()["requests"] < count and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop()

    stopper = threading.Thread(target=stop_after, args=(4,))
    stopper.start()
    failed = cli("solve", "What is 1+1?", "--thread-id", "gone")
    stopper.join()
    error = one_error_line(failed, 1)
    assert "unreachable after 1 retries" in error and "scale runs resume gone" in error
    served = server.stats()["requests"]
    assert 4 <= served < FULL_RUN

    server.start()
    status = shown("gone")["status"]
    assert status.startswith("stopped before"), status
    resumed = cli("runs", "resume", "gone", "--json")
    assert resumed.exit_code == 0, resumed.output
    result = json.loads(resumed.stdout)
    assert result["answer"] == reference["answer"]
    assert [(r["difficulty"], r["system"], r["result"]) for r in result["subproblems"]] == \
        [(r["difficulty"], r["system"], r["result"]) for r in reference["subproblems"]]
    # the request cut by stop() may be asked again; nothing that had been answered to the client
    bodies = answered_bodies(server)
    assert FULL_RUN <= len(bodies) <= FULL_RUN + 1 and len(set(bodies)) == FULL_RUN


def test_a_context_length_400_does_not_degrade_later_runs(server):
    server.inject("context_length", times=1, stage="solve")  # the first solve is System 1's
    first = cli("solve", "What is 1+1?", "--thread-id", "first", "--json")
    if first.exit_code != 0:  # a run that cannot shrink its context stops, naming the cause
        assert "maximum context length" in one_error_line(first, 1)
    server.reset()
    later = solved("--thread-id", "later")  # same process, e.g. `scale eval` or `scale serve`
    system1 = [e["body"] for e in server.stats()["log"] if e["model"] == "scale-system1"]
    assert system1 and all(b.get("chat_template_kwargs") == {"enable_thinking": False} for b in system1), \
        "System 1 now runs with the server's default thinking mode"
    assert not any(w.startswith("degraded:") for w in all_warnings(later))
