"""Seed streams of different base seeds never overlap (issue 19).

The engines give the i-th of ``n`` samples of one request ``seed + i`` (vLLM's parallel sampling;
the chat layer's fan-out when a server refuses ``n``), so derived seeds must lie far apart for
neighbouring base seeds, not one apart.
"""

from __future__ import annotations

from scale_graph.context import Context
from scale_graph.evaluation.methods import _thinking_call, sample_context
from scale_graph.journal import derive_seed
from scale_graph.nodes.decompose import planner_call


def engine_seeds(seed: int, n: int) -> set[int]:
    return {seed + index for index in range(n)}


def majority_seeds(base: int, samples: int = 8, votes: int = 8) -> set[int]:
    seeds: set[int] = set()
    for sample in range(samples):
        context = sample_context(Context(seed=base, votes=votes), sample)
        seeds |= engine_seeds(_thinking_call("majority", "q", context, n=votes).seed, votes)
    return seeds


def candidate_seeds(base: int, k: int = 8) -> set[int]:
    call = planner_call("decompose/0", "q", Context(seed=base), seed_parts=("decompose", 0), n=k)
    return engine_seeds(call.seed, k)


def test_neighbouring_base_seeds_share_no_majority_sample():
    for base in range(20):
        assert not majority_seeds(base) & majority_seeds(base + 1), base


def test_neighbouring_base_seeds_share_no_decomposition_candidate():
    for base in range(20):
        assert not candidate_seeds(base) & candidate_seeds(base + 1), base


def test_derived_seeds_are_stable_and_distinct_per_purpose():
    assert derive_seed(0, "solve", "a", 0) == derive_seed(0, "solve", "a", 0)
    assert derive_seed(0, "solve", "a", 0) != derive_seed(0, "solve", "a", 1)
    assert 0 <= derive_seed(10**12, "x") < 2**31 - 1
