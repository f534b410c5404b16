"""The per-problem token budget (``Context.budget``; 0 = off): the rules every method keeps.

A run's *spent* tokens are the completion tokens of every call it received (reused ones too:
they are what the run would cost alone). What is *left* is ``budget − spent``. Every request
passes :meth:`Meter.admit` in :func:`scale_graph.journal.serve_call` (SCALE's nodes and the
baselines alike), the one place that clamps:

- ``max_tokens × n`` is at most what the meter allows: what is left of the total, and of the
  current allowance (a SCALE stage's share, a sub-problem's allowance);
- a thinking call keeps :data:`ANSWER_RESERVE` per choice for the forced answer
  (:mod:`scale_graph.forcing`) when the forced-answer policy is on, and a following
  non-thinking call (that forced answer) leaves the other choices their reserve;
- a call with ``n`` choices asks for fewer choices when each could not otherwise get its
  minimum (thinking: :data:`SYSTEM2_MINIMUM`; non-thinking: :data:`PLANNER_MINIMUM`);
- a native thinking budget (``ChatCall.thinking_budget``), where a call carries one, shrinks with ``max_tokens`` and keeps the answer's room;
- a call that cannot get a single token is not sent: it gets an empty reply cut by ``length``.

**SCALE's plan** (:func:`node_allowance`, :func:`plan_step`), after Plan-and-Budget
(Lin et al., arXiv 2505.16122: budgets per sub-question proportional to their estimated
complexity): decomposition may use :data:`DECOMPOSE_SHARE` of the budget and selection
:data:`SELECT_SHARE`; each assessment a quarter of an even share of what is left. After
sub-problem *i* is assessed (difficulty ``d_i``), with ``m`` sub-problems after it:

    held      = m × (this assessment's tokens + ANSWER_RESERVE)     # the later ones can still run
    available = left − held
    allowance = available × w(d_i) / (w(d_i) + m × mean w(d_1..d_i)) # the last one: all that is left
    w(d)      = d + WEIGHT_FLOOR

A sub-problem routed to System 2 whose allowance is below ``SYSTEM2_MINIMUM + ANSWER_RESERVE``
goes to System 1 instead, recorded as "routed by budget". Unused allowance flows to the next
sub-problem, since each allowance is taken from what is actually left.

**Budget reached**: a call was cut short (or not sent) because the run's total ran out. The
run then ends with the best answer it has — the last ``\\boxed{}`` it produced — marked
``budget_reached`` with a warning, never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from langgraph.types import Overwrite

from scale_graph.context import DEFAULT_CONTEXT_WINDOW, Context
from scale_graph.servers.chat import ChatCall, ChatReply, Choice
from scale_graph.state import total_usage

#: Tokens a thinking call leaves per choice for its forced answer (when the policy is on).
ANSWER_RESERVE = 256
#: Least thinking a System 2 call is worth: below it a sub-problem goes to System 1.
SYSTEM2_MINIMUM = 1024
#: Least a non-thinking choice of a multi-choice call needs (a decomposition candidate).
PLANNER_MINIMUM = 256
#: Shares of the budget SCALE's decomposition and selection may use.
DECOMPOSE_SHARE = 0.20
SELECT_SHARE = 0.05
#: Keeps an easy sub-problem's weight above zero in the proportional allowance.
WEIGHT_FLOOR = 0.1
#: The warning a run that reached its budget carries.
REACHED = "budget reached"


def answer_reserve(context: Context) -> int:
    """Tokens a thinking call leaves for its forced answer: none when the policy is off."""
    return min(ANSWER_RESERVE, context.force_answer_max_tokens) if context.force_answer else 0


@dataclass
class Meter:
    """What one run (SCALE: one node of it) may still spend; shared by concurrent calls, each
    reserving its ``max_tokens × n`` until its reply settles, so together they never overspend."""

    budget: int
    reserve: int  # per choice of a thinking call, for its forced answer
    spent: int = 0  # completion tokens the run received before this meter
    allowance: int | None = None  # the most this meter's calls may use together (None: up to the total)
    used: int = 0
    held: int = 0  # reserved by calls in flight
    reached: bool = False
    notes: list[str] = field(default_factory=list)
    answers_owed: int = 0  # thinking choices whose answer reserve no non-thinking call has drawn on yet
    _total_bound: dict[int, bool] = field(default_factory=dict, repr=False)

    def left(self) -> int:
        """Tokens the run may still spend in total."""
        return max(0, self.budget - self.spent - self.used - self.held)

    def room(self) -> int:
        """Tokens the next call may use: what is left of the total and of the allowance."""
        if self.allowance is None:
            return self.left()
        return max(0, min(self.left(), self.allowance - self.used - self.held))

    def admit(self, call: ChatCall) -> ChatCall | None:
        """``call`` clamped to what this meter allows, its tokens held until :meth:`settle`; None
        when it cannot get a single token (the caller answers it with :func:`not_sent`)."""
        room = self.room()
        total_bound = room == self.left()  # the run's total, not a stage's allowance, limits this call
        reserve = self.reserve if call.thinking else 0
        minimum = (SYSTEM2_MINIMUM + reserve) if call.thinking else PLANNER_MINIMUM
        n = max(1, min(call.n, room // minimum)) if call.n > 1 else 1
        limit = room // n - reserve
        if not call.thinking and self.answers_owed:  # leave the other cut choices their reserve
            limit = min(limit, room - (self.answers_owed - 1) * self.reserve)
            self.answers_owed -= 1
        if limit < 1:
            self._stopped(call, total_bound)
            return None
        clamped = with_max_tokens(replace(call, n=n), min(call.max_tokens, limit))
        if n < call.n:
            self.notes.append(f"budget: {call.key} asked {call.n} choices, {n} fit the {room:,} tokens it may use")
        self.held += clamped.max_tokens * n
        if call.thinking and self.reserve:
            self.answers_owed += n  # each choice may need its forced answer from the reserve
        # clamped by the run's total: a reply cut by length then reached the budget
        self._total_bound[id(clamped)] = total_bound and call.max_tokens > limit
        return clamped

    def settle(self, call: ChatCall, reply: ChatReply | None) -> None:
        """The reply to an admitted ``call`` came back (None: it failed): its hold becomes its usage."""
        self.held -= call.max_tokens * call.n
        total_bound = self._total_bound.pop(id(call), False)
        if reply is None:
            return
        self.record(reply)
        if total_bound and any(choice.finish_reason == "length" for choice in reply.choices):
            self._mark_reached(call.key)

    def record(self, reply: ChatReply) -> None:
        """A reply received without :meth:`admit` (from the run's call journal) counts too."""
        self.used += reply.completion_tokens

    def _stopped(self, call: ChatCall, total_bound: bool) -> None:
        if total_bound:
            self._mark_reached(call.key)
        else:
            self.notes.append(f"budget: {call.key} not sent: its allowance is spent")

    def _mark_reached(self, key: str) -> None:
        if not self.reached:
            self.notes.append(f"{REACHED}: {self.budget:,} tokens per problem; {key} was cut short")
        self.reached = True


def not_sent(call: ChatCall) -> ChatReply:
    """The reply to a call the budget could not afford: every choice empty, cut by ``length``."""
    return ChatReply(choices=[Choice("", "", "length") for _ in range(call.n)], requests=0,
                     warnings=[f"budget: {call.key} not sent, nothing left of the budget"])


def serve(meter: Meter | None, call: ChatCall) -> tuple[ChatCall | None, ChatReply | None]:
    """For :func:`scale_graph.journal.serve_call`: the call to send (clamped), or the reply without
    sending it; ``meter`` None (no budget) passes the call through unchanged."""
    if meter is None:
        return call, None
    admitted = meter.admit(call)
    return (admitted, None) if admitted is not None else (None, not_sent(call))


# ---- SCALE's plan ---------------------------------------------------------------------------
def spent_in(state: dict[str, Any]) -> int:
    """Completion tokens a SCALE run received so far (its state's usage, every stage)."""
    return total_usage(state.get("usage") or {}).get("completion_tokens", 0)


def node_meter(node: str, state: dict[str, Any], context: Context, *, starts_run: bool) -> Meter | None:
    """The meter of one SCALE node run (None without a budget): what is left of the run's total,
    and the node's allowance (:func:`node_allowance`)."""
    if not context.budget:
        return None
    spent = 0 if starts_run else spent_in(state)  # a run's first node replaces whatever the thread held
    meter = Meter(context.budget, answer_reserve(context), spent=spent)
    meter.allowance = node_allowance(node, state, context, meter.left())
    return meter


def node_allowance(node: str, state: dict[str, Any], context: Context, left: int) -> int | None:
    """What the calls of one SCALE node may use together (see the module docstring)."""
    if node == "decompose":
        return math.floor(context.budget * DECOMPOSE_SHARE)
    if node == "select":
        return math.floor(context.budget * SELECT_SHARE)
    index = state.get("solved", 0)
    remaining = max(1, len(state.get("subproblems") or []) - index)
    if node == "assess":
        return left // (4 * remaining)
    if node.startswith("solve"):
        steps = state.get("steps") or []
        return steps[index].get("allowance") if index < len(steps) else None
    return None


def plan_step(state: dict[str, Any], context: Context, index: int, difficulty: float, system: int,
              assess_tokens: int) -> dict[str, Any]:
    """The budget fields of sub-problem ``index``'s step, once assessed ({} without a budget):
    its ``allowance``, and ``routed_by_budget`` when System 2 cannot be afforded."""
    if not context.budget:
        return {}
    left = max(0, context.budget - spent_in(state) - assess_tokens)
    later = max(0, len(state.get("subproblems") or []) - index - 1)
    held = later * (max(1, assess_tokens) + ANSWER_RESERVE)
    available = max(0, left - held)
    weights = [step.get("difficulty", 1.0) + WEIGHT_FLOOR for step in (state.get("steps") or [])[:index]]
    weight = difficulty + WEIGHT_FLOOR
    mean = (sum(weights) + weight) / (len(weights) + 1)
    allowance = math.floor(available * weight / (weight + later * mean))
    allowance = max(allowance, min(left, ANSWER_RESERVE))  # every sub-problem gets a short answer if it can
    fields: dict[str, Any] = {"allowance": allowance, "budget_left": left}
    needed = SYSTEM2_MINIMUM + answer_reserve(context)
    if system == 2 and allowance < needed:
        fields["routed_by_budget"] = True
        warning = (f"budget: sub-problem {index + 1} routed to System 1 by the budget "
                   f"({allowance:,} tokens for it, System 2 needs {needed:,})")
        fields["warnings"] = [warning]
    return fields


def node_update(update: dict[str, Any], meter: Meter | None, *, fresh: bool = False) -> dict[str, Any]:
    """A SCALE node's update with what its meter saw: notes as warnings, ``budget_reached``;
    ``fresh`` (a run's first node on a thread an earlier run marked) clears the mark."""
    if fresh:
        update = {**update, "budget_reached": False}
    if meter is None or not (meter.notes or meter.reached):
        return update
    warnings = update.get("warnings")
    if isinstance(warnings, Overwrite):  # the first node replaces the thread's warnings
        warnings = Overwrite([*warnings.value, *meter.notes])
    else:
        warnings = [*(warnings or []), *meter.notes]
    update = {**update, "warnings": warnings}
    if meter.reached:
        update["budget_reached"] = True
    return update


# ---- the baselines --------------------------------------------------------------------------
def run_meter(context: Context) -> Meter | None:
    """A baseline sample's meter (None without a budget): every call of the sample shares it."""
    return Meter(context.budget, answer_reserve(context)) if context.budget else None


def whole(call: ChatCall, context: Context) -> ChatCall:
    """A baseline's thinking call asking for the whole budget (CoT's one call gets it; majority's
    votes share it, :meth:`Meter.admit` dividing it between them) as far as the model's context
    window leaves room after the prompt; unchanged without a budget."""
    if not context.budget:
        return call
    window = context.context_window or DEFAULT_CONTEXT_WINDOW
    # the prompt estimated as history.py does (3 characters a token, erring large) plus the template
    prompt = math.ceil(sum(len(text) for _, text in call.messages) / 3) + 64
    return with_max_tokens(call, max(1, min(max(call.max_tokens, context.budget), window - prompt)))


def with_max_tokens(call: ChatCall, max_tokens: int) -> ChatCall:
    """``call`` with another ``max_tokens``; a native thinking budget keeps the same room for the
    answer after it (at most half the call), so the answer still follows inside the call."""
    if call.thinking_budget is None or max_tokens == call.max_tokens:
        return replace(call, max_tokens=max_tokens)
    room = min(call.max_tokens - call.thinking_budget, max_tokens // 2)
    return replace(call, max_tokens=max_tokens, thinking_budget=max(1, max_tokens - room))


def last_iteration(meter: Meter | None) -> bool:
    """InftyThink: whether the next iteration would cross the budget — it could not think
    System 2's minimum after a summary — so this one is the last."""
    if meter is None:
        return False
    return meter.left() < SYSTEM2_MINIMUM + 2 * meter.reserve + ANSWER_RESERVE


__all__ = [
    "ANSWER_RESERVE",
    "PLANNER_MINIMUM",
    "REACHED",
    "SYSTEM2_MINIMUM",
    "Meter",
    "answer_reserve",
    "last_iteration",
    "node_meter",
    "node_update",
    "not_sent",
    "plan_step",
    "run_meter",
    "serve",
    "spent_in",
    "whole",
]
