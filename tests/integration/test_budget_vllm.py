"""One budgeted SCALE run on the real local vLLM server (tiny SmolLM2-135M, CPU) stays within its
per-problem token budget by the server's own usage (every reply as the server counted it, journalled).

Run with ``pytest -m vllm``; skipped without vllm unless SCALE_REQUIRE_VLLM.
"""

from __future__ import annotations

import pytest
from langgraph.store.memory import InMemoryStore

from scale_graph import Context, build_graph
from scale_graph.journal import calls_namespace
from tests.support.vllm import vllm_server  # noqa: F401  (shared with conftest through a refcount)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

BUDGET = 1500


def test_a_budgeted_run_stays_within_its_budget_by_the_servers_usage(vllm_server):  # noqa: F811
    params = {**vllm_server.get("run_defaults", {}), "candidates": 2, "max_subproblems": 3, "threshold": 0.0,
              "budget": BUDGET}  # the local profile's small per-call budgets and context window, System 2 wanted everywhere
    context = Context(system1_base_url=vllm_server["system1"]["base_url"], system1_model=vllm_server["system1"]["model"],
                      system2_base_url=vllm_server["system2"]["base_url"], system2_model=vllm_server["system2"]["model"],
                      **params)
    store = InMemoryStore()
    out = build_graph(store=store).invoke({"problem": "What is 7 * 6 + 5?"}, context=context)
    replies = [item.value for item in store.search(calls_namespace(out["run_id"]), limit=1000)]
    assert len(replies) >= 3  # decomposition, selection, at least one assessment and solve
    assert sum(reply["completion_tokens"] for reply in replies) <= BUDGET  # the server's usage, call by call
    assert sum(usage["completion_tokens"] for usage in out["usage"].values()) <= BUDGET
    assert "answer" in out  # the run ended (a budget is never an error)
