"""The graph state: small, plain-JSON records that every checkpoint can afford to copy.

Long text (solutions, reasoning traces, raw candidate outputs) lives in the LangGraph store
under ``("scale", run_id, "calls")``; records point to it by key and carry short previews. That
keeps each checkpoint snapshot small, so the SQLite file grows with the text produced rather
than with the square of the number of sub-problems.
"""

from __future__ import annotations

from typing import Annotated, Literal

from langgraph.channels.delta import DeltaChannel
from typing_extensions import TypedDict  # not typing's: pydantic (Studio's schemas) needs this one on Python < 3.12

PREVIEW_CHARS = 240


class Usage(TypedDict, total=False):
    """Token counts reported by the servers, summed over calls."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


class Step(TypedDict, total=False):
    """One sub-problem s_i: its difficulty d_i (Eq. 3), system m_i (Eq. 4) and solution S(s_i) (Eq. 6).

    ``assess`` opens the record of sub-problem ``index`` and ``solve`` completes the same record
    by that index (:func:`merge_steps`); both take the index from the state's ``solved`` count.
    """

    index: int  # 0-based position in the chosen decomposition
    text: str
    difficulty: float
    system: Literal[1, 2]
    call_keys: list[str]  # store keys of this sub-problem's solve calls, in order
    result: str | None  # last \boxed{} of the solution
    solution_preview: str
    forced_answer: bool  # the solve call stopped before answering; answer written by a follow-up call
    ended_by: str  # what ended the solve call's thinking: stop | thinking_budget | length | forced_answer
    finish_reason: str | None
    assess_tokens: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    latency_s: float
    warnings: list[str]
    forced_system: Literal[1, 2]  # the route was forced by a fork (scale_graph.forks), not Eq. 4
    assessed_difficulty: float  # the assessed d_i, when a fork replaced ``difficulty``
    allowance: int  # tokens this sub-problem may use under the run's budget (scale_graph.budget)
    budget_left: int  # tokens of the run's budget left when it was assessed
    routed_by_budget: bool  # System 2 could not be afforded: solved on System 1


class Selection(TypedDict, total=False):
    """Which candidate D* the model chose (Eq. 2) and how."""

    chosen: int  # 0-based index into candidates
    method: Literal["model", "single", "fallback", "human"]
    call_keys: list[str]


def add_counts(total: Usage, more: Usage) -> Usage:
    """Two usage counters added key by key."""
    return {key: total.get(key, 0) + more.get(key, 0) for key in {*total, *more}}  # type: ignore[return-value]


def merge_steps(current: list[Step], updates: list[Step]) -> list[Step]:
    """Reducer: an update completes the record with the same index (its warnings appended to the
    record's) or, for the next index, appends a new record."""
    merged = list(current)
    for update in updates:
        index = update["index"]
        if index < len(merged):
            before = merged[index]
            merged[index] = {**before, **update}
            if "warnings" in update and "warnings" in before:
                merged[index]["warnings"] = [*before["warnings"], *update["warnings"]]
        else:
            merged.append(update)
    return merged


def merge_step_batches(current: list[Step] | None, batches: list[list[Step]]) -> list[Step]:
    """Batched form of :func:`merge_steps` for a delta channel (replays writes in any grouping)."""
    merged = list(current or [])
    for batch in batches:
        merged = merge_steps(merged, batch)
    return merged


def last_value(current: list | None, batches: list[list]) -> list | None:
    """Batched "last write wins" for a delta channel."""
    return batches[-1] if batches else current


def concat_batches(current: list[str] | None, batches: list[list[str]]) -> list[str]:
    """Batched list concatenation for a delta channel."""
    return [*(current or []), *(item for batch in batches for item in batch)]


def add_usage(current: dict[str, Usage], updates: dict[str, Usage]) -> dict[str, Usage]:
    """Reducer: per-stage usage counters are summed."""
    merged = dict(current)
    for stage, usage in updates.items():
        merged[stage] = add_counts(merged.get(stage, {}), usage)
    return merged


class InputState(TypedDict):
    """What a caller provides."""

    problem: str


class OutputState(TypedDict, total=False):
    """What a finished run returns."""

    run_id: str
    answer: str | None
    # Delta channels: a checkpoint stores only what changed in a step, not the whole value again.
    candidates: Annotated[list[list[str]], DeltaChannel(last_value)]  # D_1..D_k (usable ones)
    selection: Selection  # D* (Eq. 2)
    subproblems: Annotated[list[str], DeltaChannel(last_value)]
    steps: Annotated[list[Step], DeltaChannel(merge_step_batches)]
    usage: Annotated[dict[str, Usage], add_usage]
    warnings: Annotated[list[str], DeltaChannel(concat_batches)]
    budget_reached: bool  # a call was cut short by the run's token budget (scale_graph.budget)


class State(InputState, OutputState, total=False):
    """Full state: problem, candidates D_1..D_k, selection D*, per-sub-problem steps, answer."""

    # Sub-problems solved so far: the one assess and solve work on is number ``solved`` (0-based).
    solved: int
    finished: bool  # set by finalize alone: the run reached its end (see runner.is_finished)


def total_usage(usage: dict[str, Usage]) -> Usage:
    """Usage summed over all stages."""
    total: Usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
    for stage_usage in usage.values():
        total = add_counts(total, stage_usage)
    return total
