"""`scale traces generate` + `export` end to end against the real local vLLM server (the tiny CPU
model): two AIME problems, well-formed files and consistent statistics — never correctness."""

from __future__ import annotations

import json

import pytest

from scale_graph.traces.render import FORMATS
from scale_graph.traces.validate import assistant_text, user_text, validate_file
from tests.support.datasets import write_datasets
from tests.support.cli import scale

pytestmark = pytest.mark.vllm


def test_generate_and_export_two_aime_problems(vllm_server, isolated, monkeypatch):
    data = write_datasets(isolated / "data")
    for system in ("system1", "system2"):
        monkeypatch.setenv(f"SCALE_{system.upper()}_BASE_URL", vllm_server[system]["base_url"])
        monkeypatch.setenv(f"SCALE_{system.upper()}_MODEL", vllm_server[system]["model"])
    params = {**vllm_server.get("run_defaults", {}), "max_subproblems": 3}  # the local profile's small budgets
    for name, value in params.items():
        monkeypatch.setenv(f"SCALE_{name.upper()}", str(value))

    generated = scale("traces", "generate", "--dataset", data / "aime24.jsonl", "--limit", "2", "--out", "local",
                       "--threshold", "0.3", "--concurrency", "2")
    assert generated.exit_code == 0, generated.output
    assert "traces run local (aime24)" in generated.stdout

    problems = [json.loads(line) for line in (data / "aime24.jsonl").read_text().splitlines()[:2]]
    for fmt in FORMATS:
        out = isolated / f"local-{fmt}.jsonl"
        exported = scale("traces", "export", "local", "--format", fmt, "--out", out, "--include-reasoning")
        assert exported.exit_code == 0, exported.output
        assert validate_file(out, fmt) == []
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        stats = json.loads((isolated / f"local-{fmt}.stats.json").read_text())
        assert (stats["problems"], stats["traces"]) == (2, 2)
        assert stats["kept"] == len(rows) == 2 and sum(stats["dropped"].values()) == 0  # both runs finished
        assert {user_text(row, fmt) for row in rows} == {p["problem"] for p in problems}
        for row in rows:
            response = assistant_text(row, fmt)
            assert response.startswith("Let me break this problem into ") and "### Sub-problem 1: " in response
            last_line = response.rsplit("\n", 1)[-1]
            assert last_line == "No final answer was reached." or last_line.startswith(
                "Therefore, the final answer is \\boxed{")
        assert stats["mean_completion_tokens"] > stats["mean_solve_tokens"] > 0
        assert stats["mean_assistant_chars"] == sum(len(assistant_text(r, fmt)) for r in rows) / 2
        assert 0.0 <= stats["system2_share"] <= 1.0 and 0.0 <= stats["answer_agreement"] <= 1.0
        correct = scale("traces", "export", "local", "--format", fmt, "--out", isolated / "correct.jsonl", "--correct-only")
        assert correct.exit_code == 0, correct.output  # the tiny model is always wrong: an empty, valid file
        assert (isolated / "correct.jsonl").read_text() == "" and "no trace was kept" in correct.stderr
