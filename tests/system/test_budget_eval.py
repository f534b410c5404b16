"""Equal-compute evaluation end to end: `scale eval --budget 2000,6000` of every method on the fake
server, checked by the server's own usage per run, then `scale report`'s equal-budget table and plot."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scale_graph.cli import app
from scale_graph.evaluation.frontier import FRONTIER_PLOT
from scale_graph.evaluation.store import ResultsStore
from tests.support.fake_openai import FakeOpenAIServer, _Reply

PROBLEMS = 40
BUDGETS = (2000, 6000)
METHODS = ("scale", "cot", "majority", "inftythink")
runner = CliRunner()


class MeteredServer(FakeOpenAIServer):
    """The fake server, answering like a real one within ``max_tokens`` (content cut too, not only the
    reasoning) and keeping the completion tokens it reported per session (one run's problem sample)."""

    def __init__(self, **config):
        super().__init__(**config)
        self.completion_by_session: dict[str, int] = defaultdict(int)
        self.limits: list[tuple[str, int, int]] = []  # (session, max_tokens, n) of every request
        self._lock = threading.Lock()

    async def _answer(self, body, stage, cfg, fault, headers) -> _Reply:
        reply = await super()._answer(body, stage, cfg, fault, headers)
        assert not body.get("stream"), "SCALE's chat layer does not stream"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        used = 0
        for choice in (reply.payload or {}).get("choices", []):
            message = choice["message"]
            reasoning, content = message.get("reasoning") or "", message.get("content") or ""
            if len(reasoning + content) > 4 * limit:  # a real server stops at max_tokens
                reasoning = reasoning[: 4 * limit]
                content = content[: max(0, 4 * limit - len(reasoning))]
                message.update(reasoning=reasoning or None, content=content)
                choice["finish_reason"] = "length"
            used += len(reasoning + content) // 4
        if reply.payload:
            reply.payload["usage"]["completion_tokens"] = used
        session = headers.get("x-session-id", "")
        with self._lock:
            self.completion_by_session[session] += used
            self.limits.append((session, limit, body.get("n") or 1))
        return reply


@pytest.fixture
def metered(monkeypatch):
    with MeteredServer(reasoning_bytes=12_000) as server:  # thinking wants 3,000 tokens: cut at these budgets
        for system in (1, 2):
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_BASE_URL", server.base_url)
            monkeypatch.setenv(f"SCALE_SYSTEM{system}_MODEL", f"scale-system{system}")
        yield server


def dataset(folder: Path) -> Path:
    path = folder / "generated.jsonl"
    path.write_text("".join(json.dumps({"id": f"g{i}", "problem": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)})
                            + "\n" for i in range(PROBLEMS)), encoding="utf-8")
    return path


def test_every_method_keeps_its_budget_by_the_servers_usage_and_the_report_compares_them(metered, tmp_path):
    data = dataset(tmp_path)
    result = runner.invoke(app, ["eval", "--dataset", str(data), "--method", ",".join(METHODS), "--samples", "1",
                                 "--budget", ",".join(map(str, BUDGETS)), "--name", "eq", "--concurrency", "32"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # the server's own count, per run and problem sample (the session is the sample's thread id)
    by_run: dict[str, list[int]] = defaultdict(list)
    for session, tokens in metered.completion_by_session.items():
        run = session.split("/")[1]
        by_run[run].append(tokens)
        assert tokens <= int(run.rsplit("budget", 1)[1]), (session, tokens)
    assert {run.rsplit("-", 1)[0] for run in by_run} >= {f"eq-{m}" for m in METHODS}

    with ResultsStore() as store:
        runs = store.runs(["eq-*"])
    assert len(runs) == len(METHODS) * len(BUDGETS)
    reached = 0
    for run in runs:
        assert run.config["budget"] in BUDGETS
        assert len(run.results) == PROBLEMS
        for sample in run.results:
            assert sample.error is None
            assert sample.completion_tokens <= run.config["budget"]  # what the run counts, reused calls included
            if sample.budget_reached:
                reached += 1
                assert sample.answer is not None, (run.name, sample.problem_id)
    assert reached > 0  # the budgets bind: thinking wants 3,000 tokens

    out = tmp_path / "report"
    shown = runner.invoke(app, ["report", "eq-*", "--out", str(out), "--markdown"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "Equal budget" in shown.output and "hit budget (%)" in shown.output
    rows = [line for line in shown.output.splitlines() if line.startswith(("| 2,000", "| 6,000"))]
    assert len(rows) == len(METHODS) * len(BUDGETS)
    assert (out / FRONTIER_PLOT).stat().st_size > 0


def test_solve_keeps_its_budget_and_says_what_is_left(metered):
    result = runner.invoke(app, ["solve", "What is 2+3?", "--budget", "3000", "--threshold", "0", "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert 0 < shown["usage"]["total"]["completion_tokens"] <= 3000
    assert sum(metered.completion_by_session.values()) <= 3000  # the server's own count
    assert shown["answer"] is not None
    assert "tokens left after sub-problem 1" in result.stderr


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_a_bad_budget_is_one_error_line(metered, value):
    result = runner.invoke(app, ["solve", "What is 2+3?", "--budget", value], catch_exceptions=False)
    assert result.exit_code == 2 and "budget" in result.output and "Traceback" not in result.output
