"""One request log of a four-method `scale eval` against the fake server (issue 19, done-when):
identical system messages and retry rules across methods, majority's generations per problem
sample = ``--votes``, and budgets equal to the documented defaults."""

from __future__ import annotations

from collections import defaultdict

import pytest

from scale_graph.context import Context
from tests.support.cli import scale
from tests.support.datasets import write_datasets

METHODS = ("scale", "cot", "majority", "inftythink")
DEFAULTS = Context()


@pytest.fixture(autouse=True)
def preset_files(isolated):
    return write_datasets(isolated / "data")


def evaluate(name: str, *extra: str) -> None:
    result = scale("eval", "--dataset", "aime24", "--data-dir", "data", "--limit", "2", "--samples", "2",
                   "--method", ",".join(METHODS), "--name", name, "--candidates", "2", *extra)
    assert result.exit_code == 0, result.output


def by_method(log: list[dict], name: str) -> dict[str, list[dict]]:
    """The requests of each method's run, told apart by the router session every request carries
    (``eval/<run>/<problem>/<sample>#…``; runs are named ``<name>-<method>``)."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for entry in log:
        run = entry["session"].split("/")[1]
        method = next(m for m in METHODS if run == f"{name}-{m}")
        grouped[method].append(entry)
    return grouped


def max_tokens(body: dict) -> int:
    return body.get("max_completion_tokens") or body["max_tokens"]


def system_messages(entries: list[dict]) -> set[tuple[str, ...]]:
    return {tuple(m["content"] for m in entry["body"]["messages"] if m["role"] == "system") for entry in entries}


def test_four_methods_send_the_same_system_message_the_documented_budgets_and_one_vote(endpoint_env, fake_server):
    evaluate("protocol", "--votes", "3")
    log = fake_server.stats()["log"]
    methods = by_method(log, "protocol")
    assert set(methods) == set(METHODS)
    assert {method: system_messages(entries) for method, entries in methods.items()} == {m: {()} for m in METHODS}

    thinking = [e["body"] for e in log if e["body"]["chat_template_kwargs"]["enable_thinking"]]
    budgets = {(max_tokens(b), b.get("thinking_token_budget")) for b in thinking
               if not b["messages"][-1]["role"] == "assistant"}
    # SCALE's System 2, CoT and each majority sample: 32,768 with the native budget minus the answer's reserve;
    # InftyThink's iterations: their own 8,192, cut by design (no native budget)
    assert budgets == {(DEFAULTS.system2_max_tokens, DEFAULTS.system2_max_tokens - DEFAULTS.answer_reserve),
                       (DEFAULTS.inftythink_max_tokens, None)} and DEFAULTS.system2_max_tokens == 32_768
    system1 = {max_tokens(b) for e in methods["scale"] for b in [e["body"]]
               if e["stage"] == "solve" and b["model"] == "scale-system1"}
    assert system1 == {DEFAULTS.system1_max_tokens}

    generations: dict[str, int] = defaultdict(int)
    for entry in methods["majority"]:
        generations[entry["session"]] += entry["body"].get("n", 1)
    # the paper's protocol: one problem sample (one vote) per problem, --votes generations in it, whatever -n
    assert sorted(generations.values()) == [3, 3]


def test_an_empty_reply_is_made_again_the_same_number_of_times_by_every_method(endpoint_env, fake_server):
    fake_server.inject("empty", times=10_000, stage="solve")  # every solve-like request comes back with nothing
    evaluate("empty", "--votes", "3", "--max-iterations", "1")
    methods = by_method(fake_server.stats()["log"], "empty")
    attempts = DEFAULTS.empty_retries + 1

    scale_solves: dict[tuple, int] = defaultdict(int)
    for entry in methods["scale"]:
        if entry["stage"] == "solve":
            scale_solves[entry["session"], entry["body"]["messages"][-1]["content"].split("### Sub-problem")[-1][:12]] += 1
    per_answer = {
        "scale": set(scale_solves.values()),  # per sub-problem
        "cot": {len([e for e in methods["cot"] if e["session"] == s]) for s in {e["session"] for e in methods["cot"]}},
        "inftythink": {len([e for e in methods["inftythink"] if e["session"] == s])
                       for s in {e["session"] for e in methods["inftythink"]}},
    }
    majority_generations = defaultdict(int)
    for entry in methods["majority"]:
        majority_generations[entry["session"]] += entry["body"].get("n", 1)
    per_answer["majority"] = {total // 3 for total in majority_generations.values()}  # per vote
    assert per_answer == {method: {attempts} for method in METHODS} and attempts == 3
