"""One sample of one problem by one method — SCALE or a baseline of the paper — as an Outcome.

- ``scale``: the checkpointed workflow (one thread per run, problem and sample, so a re-run
  resumes an interrupted problem after its last finished node).
- ``cot``: one System 2 call with the paper's prompt, thinking on, budget ``system2_max_tokens``.
- ``majority``: ``votes`` CoT samples in one ``n=k`` request; the most common answer up to
  mathematical equivalence (empty answers skipped, ties to the answer seen first). The paper's
  protocol: one vote per problem (:func:`problem_samples`), so Acc counts whole problems and Tok
  is ``votes`` × CoT's; ``majority-repeated`` averages ``--samples`` independent votes.
- ``inftythink``: prompt-based InftyThink — iterations of thinking with their own budget
  ``inftythink_max_tokens`` (8,192, the official value), at most ``inftythink_max_iterations``
  (50, the official cap), each cut iteration condensed by a summary the reasoning model writes
  (its reply continued after an empty closed think block) that replaces the previous summary.

**One forced-answer rule for every method** (:mod:`scale_graph.forcing`): when a call stops
before answering (still thinking, or cut before its boxed result) and ``force_answer`` is on, the
same model continues its own reply after a closed think block (System 1 with the work pasted
into a prompt only where the endpoint cannot continue) — for CoT, for each majority sample that
needs it (concurrently), and for InftyThink's last iteration when the cap is reached; SCALE does
the same per sub-problem. Its tokens are stage ``force_answer`` and count in Tok.
``force_answer=False`` turns it off for all methods at once. **One empty-reply rule**: a call
that returns nothing at all is made again up to ``empty_retries`` times, in every method.
**No system message** unless ``system_message`` sets one, then the same on every call.

**Budget sweeps** (``--system2-max-tokens a,b,c``) set the per-call thinking budget of every
method the same way: SCALE's System 2 budget per sub-problem, CoT's and each majority sample's
budget, and InftyThink's per-iteration budget (``inftythink_max_tokens``, which the sweep sets
together with ``system2_max_tokens``).

**A per-problem token budget** (``budget``, :mod:`scale_graph.budget`) is kept by every
method under one rule: each sample's calls share one meter that clamps every call to what is
left; CoT's call asks for the whole budget, majority's votes share it, InftyThink's iterations
stop before one would cross it (:func:`scale_graph.budget.last_iteration`).

Baseline calls use System 2's sampling (T=0.6, top-p 0.95 by default) and, where the server
enforces it, the native thinking budget of SCALE's System 2 calls; every sample gets its own seed. Stage names in ``usage`` follow the workflow's: System 2 reasoning is
``solve_system2``; InftyThink's summaries are ``summarize``. Degradations the chat layer
reports (reply warnings starting ``degraded: ``) are kept with the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from scale_graph import budget, journal, prompts, runner
from scale_graph.context import ENDPOINT_FIELDS, Context
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.grading import equivalent
from scale_graph.forcing import forced_answer_call, needs_forced_answer
from scale_graph.history import messages
from scale_graph.nodes.solve import solve_call
from scale_graph.parsing import last_boxed
from scale_graph.prompts import COT
from scale_graph.runs import summary
from scale_graph.servers.chat import ChatCall, ChatReply, Choice, session
from scale_graph.state import Usage, add_usage

INFTYTHINK_CONTINUE = (
    "\n\nHere is a summary of your reasoning on this problem so far:\n{summary}\n\n"
    "Continue from this summary; do not start over."
)
INFTYTHINK_SUMMARY = (
    "{problem}\n\n{previous}Reasoning since then, cut off before it finished:\n{reasoning}\n\n"
    "Write an updated summary of all the reasoning so far: a concise bullet list of the steps "
    "taken and the intermediate results obtained, enough to continue from. Do not give a final answer."
)
INFTYTHINK_PREVIOUS = "Summary of the earlier reasoning:\n{summary}\n\n"
#: The chat layer's prefix of a warning that a feature was given up for this call.
DEGRADED = "degraded: "
_SAMPLING2 = ("system2_temperature", "system2_top_p", "system2_top_k")
# the forced-answer follow-up and InftyThink's summaries run on System 1's sampling
_FORCE = ("force_answer", "force_answer_max_tokens", "system1_temperature", "system1_top_p", "system1_top_k")
#: The run parameters each baseline uses (SCALE uses all but :data:`BASELINE_ONLY`).
_PROTOCOL = ("system_message", "empty_retries", "thinking_budget", "answer_reserve", "sampling")
BASELINE_PARAMS = {"cot": ("seed", "system2_max_tokens", *_SAMPLING2, *_FORCE, *_PROTOCOL),
                   "majority": ("seed", "system2_max_tokens", *_SAMPLING2, *_FORCE, *_PROTOCOL, "votes"),
                   "majority-repeated": ("seed", "system2_max_tokens", *_SAMPLING2, *_FORCE, *_PROTOCOL, "votes"),
                   "inftythink": ("seed", "inftythink_max_tokens", "inftythink_max_iterations", *_SAMPLING2, *_FORCE,
                                  *_PROTOCOL)}
BASELINE_ONLY = ("votes", "inftythink_max_tokens", "inftythink_max_iterations")
#: How to talk to the servers, not what to compute: may change between invocations of a run.
#: ``reuse_group`` too: reuse changes which run makes a call, never a run's results (scale_graph.reuse).
SERVER_PARAMS = ("request_timeout", "max_retries", "thinking_flag", "structured_output", "use_n", "max_in_flight",
                 "context_window", "reuse_group")
SUMMARY_MAX_TOKENS = 1024
SUMMARY_TEMPERATURE = 0.5
THREAD_ID_MAX = 200


@dataclass
class Outcome:
    """What a method produced for one problem sample; the same record for every method."""

    answer: str | None = None
    usage: dict[str, Usage] = field(default_factory=dict)  # by stage, as the workflow counts it
    iterations: int = 0  # SCALE: sub-problems solved; InftyThink: iterations; CoT: 1; majority: votes
    subproblems: int = 0  # SCALE: sub-problems of the chosen decomposition
    hard: int | None = None  # SCALE: sub-problems solved on System 2
    latency_s: float = 0.0
    error: str | None = None
    degraded: list[str] = field(default_factory=list)  # the chat layer's "degraded: …" warnings, once each
    generated: int | None = None  # completion tokens generated for it: its calls not reused from another run
    budget_reached: bool = False  # a call was cut short by the per-problem token budget (scale_graph.budget)


@dataclass
class Setup:
    """Everything a method needs besides the problem; ``graph`` only for SCALE, ``store`` for
    SCALE's checkpoints and every method's shared calls (:mod:`scale_graph.reuse`); ``models``
    the identity of the model behind each endpoint (:mod:`scale_graph.servers.identity`), which
    SCALE's threads record beside :meth:`config`."""

    run: str
    context: Context
    graph: CompiledStateGraph | None = None
    store: BaseStore | None = None
    models: dict[str, Any] | None = None

    def thread_record(self, problem_id: str, sample: int) -> dict[str, Any]:
        """What a SCALE thread of this run records besides problem and parameters: its identity
        (the run's :meth:`config` and models) and where it belongs (``--replace`` finds it by that)."""
        record: dict[str, Any] = {"evaluation": {"run": self.run, "problem": problem_id, "sample": sample,
                                                 "params": self.config("scale")}}
        return record | ({"models": self.models} if self.models else {})

    def config(self, method: str) -> dict[str, Any]:
        """The parameters that define a run of ``method`` (what it uses, and where the endpoints are);
        always including the forced-answer policy, which reports show."""
        params = {key: value for key, value in self.context.to_dict().items() if key not in SERVER_PARAMS}
        # every method keeps the per-problem budget; off, it is left out, as runs stored before it were
        kept = ("budget",) if params.get("budget") else ()
        if method in BASELINE_PARAMS:
            return {key: params[key] for key in (*ENDPOINT_FIELDS, *BASELINE_PARAMS[method], *kept)}
        return {key: value for key, value in params.items() if key not in BASELINE_ONLY and (key != "budget" or kept)}


Method = Callable[[Problem, int, Setup], Awaitable[Outcome]]


async def solve(method: str, problem: Problem, sample: int, setup: Setup) -> Outcome:
    """Run ``method`` on one sample, timed; a failure becomes the outcome's one-line error."""
    started = time.perf_counter()
    try:
        runner.validate_problem(problem.problem, setup.context)  # every method, as SCALE's start does
        with session(thread_id(setup.run, problem.id, sample)):  # a router keeps a sample on one replica
            outcome = await METHODS[method](problem, sample, setup)
    except runner.RunBusy:  # another live process works on this sample and will store it
        raise
    except Exception as exc:  # recorded and retried on the next run; the evaluation goes on
        outcome = Outcome(error=" ".join(f"{type(exc).__name__}: {exc}".split())[:500])
    outcome.latency_s = round(time.perf_counter() - started, 3)
    return outcome


def thread_id(run: str, problem_id: str, sample: int) -> str:
    """The checkpoint thread of a SCALE problem sample: stable, so a re-run resumes it.

    Any run name and problem id give a valid id (:func:`scale_graph.runner.validate_thread_id`):
    a readable part with whitespace and periods (which the store's namespaces refuse) made
    ``_``, shortened to keep the whole within 200 characters, and a digest of the exact
    (run, problem, sample) that tells apart ids the readable part would merge. Ids that were
    already valid keep the form earlier versions gave them, so their checkpoints resume.
    """
    exact = "\0".join((run, problem_id, str(sample)))
    digest = hashlib.sha256(exact.encode()).hexdigest()[:8]
    run_part, problem_part = (re.sub(r"[\s.]", "_", text) for text in (run, problem_id))
    fixed = len(f"eval///{sample}#{digest}")
    room = THREAD_ID_MAX - fixed
    if len(run_part) + len(problem_part) > room:
        run_part = run_part[: max(room // 2, room - len(problem_part))]
        problem_part = problem_part[: room - len(run_part)]
    return f"eval/{run_part}/{problem_part}/{sample}#{digest}"


def sample_context(context: Context, sample: int) -> Context:
    """The run's parameters with a seed of this sample's own (samples must differ), never
    pausing for a human review (evaluations are unattended)."""
    seed = journal.derive_seed(context.seed, "sample", sample)
    return Context.from_dict({**context.to_dict(), "seed": seed, "review": False})


async def scale(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """SCALE through the checkpointed workflow: resumed when the thread exists, else started."""
    thread = thread_id(setup.run, problem.id, sample)
    try:
        # this invocation's reuse group, not the one saved with the run (--no-reuse must hold on resume)
        values = await runner.resume(setup.graph, setup.store, thread, reuse_group=setup.context.reuse_group)
    except runner.UnknownRun:
        try:
            values = await runner.start(setup.graph, setup.store, problem.problem,
                                        sample_context(setup.context, sample), thread,
                                        record=setup.thread_record(problem.id, sample))
        except runner.RunExists:  # another worker of a shared evaluation started it meanwhile
            values = await runner.resume(setup.graph, setup.store, thread, reuse_group=setup.context.reuse_group)
    shown = summary(values, thread)
    solved = [step for step in shown["subproblems"] if step["system"]]
    warnings = shown["warnings"] + [w for step in shown["subproblems"] for w in step["warnings"]]
    return Outcome(answer=shown["answer"], usage=shown["usage"]["by_stage"], iterations=len(solved),
                   subproblems=len(shown["planned_subproblems"]), hard=sum(step["system"] == 2 for step in solved),
                   degraded=degradations(warnings), generated=await journal.agenerated_tokens(setup.store, thread),
                   budget_reached=bool(values.get("budget_reached")))


@dataclass
class _Calls:
    """A baseline sample's calls: their usage by stage and the degradations they reported."""

    context: Context
    store: BaseStore | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    generated: int = 0
    meter: budget.Meter | None = None  # the sample's token budget, shared by all its calls

    def __post_init__(self) -> None:
        self.meter = budget.run_meter(self.context)

    async def call(self, call: ChatCall, stage: str) -> ChatReply:
        reply = await journal.aserve_call(self.context, self.store, call, meter=self.meter)
        self.usage = add_usage(self.usage, {stage: reply.usage})
        self.generated += 0 if reply.reused else reply.completion_tokens
        self.warnings += reply.warnings
        return reply

    async def until_not_empty(self, make: Callable[[int], ChatCall], stage: str, *,
                              first: int = 0) -> tuple[ChatCall, Choice]:
        """The call ``make(attempt)`` made again while it returns nothing at all, up to attempt
        ``empty_retries`` (from attempt ``first``: a sample of an ``n`` request had attempt 0 there),
        the rule SCALE's solve follows too."""
        for attempt in range(first, self.context.empty_retries + 1):
            call = make(attempt)
            choice = (await self.call(call, stage)).choices[0]
            if choice.content.strip() or choice.reasoning.strip():
                break
        return call, choice

    async def answer(self, key: str, call: ChatCall, choice: Choice) -> str | None:
        """The answer of ``choice`` to ``call``; forced by the follow-up when it stopped before answering."""
        if needs_forced_answer(choice, self.context, thinking=call.thinking):
            forced = forced_answer_call(key, call.messages, choice, self.context, system=call.system,
                                        instruction=prompts.FORCE_FINAL)
            written = (await self.call(forced, "force_answer")).choices[0]
            answer = last_boxed(written.content) or last_boxed(written.reasoning)
            if answer is not None:
                return answer
        return answer_of(choice)

    def outcome(self, answer: str | None, iterations: int) -> Outcome:
        reached = self.meter is not None and self.meter.reached
        return Outcome(answer=answer, usage=self.usage, iterations=iterations, degraded=degradations(self.warnings),
                       generated=self.generated, budget_reached=reached)


async def cot(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """One thinking call with the paper's CoT prompt."""
    context = sample_context(setup.context, sample)
    calls = _Calls(context, setup.store)
    user = COT.format(problem=problem.problem)
    call, choice = await calls.until_not_empty(
        lambda attempt: budget.whole(_thinking_call("cot", user, context, attempt=attempt), context), "solve_system2")
    return calls.outcome(await calls.answer("force/cot", call, choice), 1)


async def majority(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """``votes`` CoT samples in one request (each cut one forced, each empty one made again, concurrently);
    the answer most agree on. The paper's protocol runs it once per problem (:data:`PROBLEM_SAMPLES`)."""
    context = sample_context(setup.context, sample)
    calls = _Calls(context, setup.store)
    user = COT.format(problem=problem.problem)
    votes = budget.whole(_thinking_call("majority", user, context, n=context.votes), context)
    reply = await calls.call(votes, "solve_system2")

    async def answer(index: int, choice: Choice) -> str | None:
        call = replace(votes, n=1)
        if not (choice.content.strip() or choice.reasoning.strip()) and context.empty_retries:
            call, choice = await calls.until_not_empty(
                lambda attempt: budget.whole(_thinking_call(f"majority/{index}", user, context, attempt=attempt), context),
                "solve_system2", first=1)
        return await calls.answer(f"force/majority/{index}", call, choice)

    answers = await asyncio.gather(*(answer(index, choice) for index, choice in enumerate(reply.choices)))
    answer_text = await asyncio.to_thread(vote, list(answers))
    return calls.outcome(answer_text, len(reply.choices))


async def inftythink(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """Iterations of bounded thinking; a cut one is summarised and the summary replaces the reasoning."""
    context = sample_context(setup.context, sample)
    calls = _Calls(context, setup.store)
    summary_text = ""
    for iteration in range(1, context.inftythink_max_iterations + 1):
        question = problem.problem + (INFTYTHINK_CONTINUE.format(summary=summary_text) if summary_text else "")
        user = COT.format(problem=question)
        # the iteration's cut is the method: no native thinking budget ends it early
        call, choice = await calls.until_not_empty(
            lambda attempt: replace(_thinking_call(f"reason/{iteration}", user, context, attempt=attempt),
                                    max_tokens=context.inftythink_max_tokens, thinking_budget=None),
            "solve_system2")
        finished = choice.finish_reason == "stop" and last_boxed(choice.content) is not None
        if finished:
            return calls.outcome(answer_of(choice), iteration)
        if iteration == context.inftythink_max_iterations or budget.last_iteration(calls.meter):  # the cap or the budget: the last iteration's answer, forced if cut
            return calls.outcome(await calls.answer("force/inftythink", call, choice), iteration)
        reasoning = "\n".join(text for text in (choice.reasoning, choice.content) if text.strip())
        previous = INFTYTHINK_PREVIOUS.format(summary=summary_text) if summary_text else ""
        prompt = INFTYTHINK_SUMMARY.format(problem=problem.problem, previous=previous, reasoning=reasoning)
        written = (await calls.call(summary_call(f"summary/{iteration}", prompt, context), "summarize")).choices[0]
        summary_text = written.content.strip() or written.reasoning.strip() or summary_text
    raise AssertionError("unreachable: the loop returns at its last iteration")  # inftythink_max_iterations >= 1


def summary_call(key: str, prompt: str, context: Context) -> ChatCall:
    """An InftyThink summary, written by the reasoning model itself: its reply continued after an
    empty closed think block (no thinking, on any Qwen3-style template); System 1 writes it only
    where the endpoint cannot continue a message (a ``degraded:`` warning says so)."""
    asked = messages(prompt, context.system_message)
    own = replace(solve_call(key, 2, prompt, context, attempt=0), messages=[*asked, ("assistant", prompts.FORCE_CONTINUATION.format(work=""))],
                  thinking=False, max_tokens=SUMMARY_MAX_TOKENS, temperature=SUMMARY_TEMPERATURE, thinking_budget=None,
                  continue_final=True)
    fallback = replace(solve_call(key, 1, prompt, context, attempt=0), max_tokens=SUMMARY_MAX_TOKENS,
                       temperature=SUMMARY_TEMPERATURE)
    return replace(own, fallback=fallback)


METHODS: dict[str, Method] = {"scale": scale, "cot": cot, "majority": majority, "majority-repeated": majority,
                              "inftythink": inftythink}
#: Problem samples a method runs per problem when not ``--samples``: the paper's majority voting is one
#: vote over ``votes`` samples per problem (Acc a whole number of problems, Tok ``votes`` × CoT's);
#: ``majority-repeated`` averages ``--samples`` independent votes instead.
PROBLEM_SAMPLES: dict[str, int] = {"majority": 1}


def problem_samples(method: str, samples: int) -> int:
    """How many samples of each problem ``method`` runs when the evaluation asks for ``samples``."""
    return min(samples, PROBLEM_SAMPLES.get(method, samples))


def answer_of(choice: Choice) -> str | None:
    """Last ``\\boxed{}`` of the answer; of the reasoning when thinking was cut with no answer text."""
    if choice.content.strip():
        return last_boxed(choice.content)
    return last_boxed(choice.reasoning)


def vote(answers: list[str | None]) -> str | None:
    """The most common answer up to mathematical equivalence; empty ones skipped, ties to the first seen."""
    groups: list[list[str]] = []
    for answer in answers:
        if not answer or not answer.strip():
            continue
        for group in groups:
            if equivalent(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    return max(groups, key=len)[0] if groups else None


def degradations(warnings: list[str]) -> list[str]:
    """The chat layer's degradation warnings among ``warnings``, each once, in order."""
    return list(dict.fromkeys(w for w in warnings if w.startswith(DEGRADED)))


def _thinking_call(key: str, user: str, context: Context, n: int = 1, attempt: int = 0) -> ChatCall:
    """A System 2 call (its budget, native thinking budget, sampling and the run's system message)
    carrying the baseline's prompt."""
    return replace(solve_call(key, 2, user, context, attempt=attempt), n=n)
