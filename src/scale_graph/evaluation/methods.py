"""One sample of one problem by one method — SCALE or a baseline of the paper — as an Outcome.

- ``scale``: the checkpointed workflow (one thread per run, problem and sample, so a re-run
  resumes an interrupted problem after its last finished node).
- ``cot``: one System 2 call with the paper's prompt, thinking on, budget ``system2_max_tokens``.
- ``majority``: ``votes`` CoT samples in one ``n=k`` request; the most common answer up to
  mathematical equivalence (empty answers skipped, ties to the answer seen first).
- ``inftythink``: prompt-based InftyThink — bounded thinking iterations, each cut iteration
  condensed by a non-thinking summary call that replaces the previous summary.

Baseline calls use System 2's sampling (T=0.6, top-p 0.95 by default); every sample gets its
own seed. Stage names in ``usage`` follow the workflow's: System 2 reasoning is
``solve_system2``; InftyThink's summaries are ``summarize``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from scale_graph import journal, runner
from scale_graph.context import ENDPOINT_FIELDS, Context
from scale_graph.evaluation.datasets import Problem
from scale_graph.evaluation.grading import equivalent
from scale_graph.nodes.solve import solve_call
from scale_graph.parsing import last_boxed
from scale_graph.prompts import COT
from scale_graph.runs import summary
from scale_graph.servers.chat import ChatCall, ChatReply, Choice
from scale_graph.settings import ConfigError
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
_SYSTEM2 = ("seed", "system2_max_tokens", "system2_temperature", "system2_top_p", "system2_top_k")
#: The run parameters each baseline uses (SCALE uses them all).
BASELINE_PARAMS = {"cot": _SYSTEM2, "majority": _SYSTEM2, "inftythink": (*_SYSTEM2, "system1_top_p", "system1_top_k")}
#: How to talk to the servers, not what to compute: may change between invocations of a run.
SERVER_PARAMS = ("request_timeout", "max_retries", "thinking_flag", "structured_output", "use_n")
SUMMARY_MAX_TOKENS = 1024
SUMMARY_TEMPERATURE = 0.5


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


@dataclass
class Setup:
    """Everything a method needs besides the problem; ``graph``/``store`` only for SCALE."""

    run: str
    context: Context
    votes: int = 8
    max_iterations: int = 10
    graph: CompiledStateGraph | None = None
    store: BaseStore | None = None

    def __post_init__(self) -> None:
        for name in ("votes", "max_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    def config(self, method: str) -> dict[str, Any]:
        """The parameters that define a run of ``method`` (what it uses, and where the endpoints are)."""
        params = {key: value for key, value in self.context.to_dict().items() if key not in SERVER_PARAMS}
        if method in BASELINE_PARAMS:
            params = {key: params[key] for key in (*ENDPOINT_FIELDS, *BASELINE_PARAMS[method])}
        options = {"majority": {"votes": self.votes}, "inftythink": {"max_iterations": self.max_iterations}}
        return {**params, **options.get(method, {})}


Method = Callable[[Problem, int, Setup], Awaitable[Outcome]]


async def solve(method: str, problem: Problem, sample: int, setup: Setup) -> Outcome:
    """Run ``method`` on one sample, timed; a failure becomes the outcome's one-line error."""
    started = time.perf_counter()
    try:
        outcome = await METHODS[method](problem, sample, setup)
    except runner.RunBusy:  # another live process works on this sample and will store it
        raise
    except Exception as exc:  # recorded and retried on the next run; the evaluation goes on
        outcome = Outcome(error=" ".join(f"{type(exc).__name__}: {exc}".split())[:500])
    outcome.latency_s = round(time.perf_counter() - started, 3)
    return outcome


def thread_id(run: str, problem_id: str, sample: int) -> str:
    """The checkpoint thread of a SCALE problem sample: stable, so a re-run resumes it.

    Readable, without the periods the store's namespaces refuse, and told apart by a digest
    of the exact (run, problem, sample).
    """
    exact = "\0".join((run, problem_id, str(sample)))
    digest = hashlib.sha256(exact.encode()).hexdigest()[:8]
    return f"eval/{run}/{problem_id}/{sample}#{digest}".replace(".", "_")


def sample_context(context: Context, sample: int) -> Context:
    """The run's parameters with a seed of this sample's own (samples must differ), never
    pausing for a human review (evaluations are unattended)."""
    seed = journal.derive_seed(context.seed, "sample", sample)
    return Context.from_dict({**context.to_dict(), "seed": seed, "review": False})


async def scale(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """SCALE through the checkpointed workflow: resumed when the thread exists, else started."""
    thread = thread_id(setup.run, problem.id, sample)
    try:
        values = await runner.resume(setup.graph, setup.store, thread)
    except runner.UnknownRun:
        values = await runner.start(setup.graph, setup.store, problem.problem,
                                    sample_context(setup.context, sample), thread)
    shown = summary(values, thread)
    solved = [step for step in shown["subproblems"] if step["system"]]
    return Outcome(answer=shown["answer"], usage=shown["usage"]["by_stage"], iterations=len(solved),
                   subproblems=len(shown["planned_subproblems"]), hard=sum(step["system"] == 2 for step in solved))


async def cot(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """One thinking call with the paper's CoT prompt."""
    context = sample_context(setup.context, sample)
    reply = await _call(_thinking_call("cot", COT.format(problem=problem.problem), context), context)
    return Outcome(answer=answer_of(reply.choices[0]), usage={"solve_system2": reply.usage}, iterations=1)


async def majority(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """``votes`` CoT samples in one request; the answer most of them agree on."""
    context = sample_context(setup.context, sample)
    reply = await _call(_thinking_call("majority", COT.format(problem=problem.problem), context, n=setup.votes), context)
    answer = await asyncio.to_thread(vote, [answer_of(choice) for choice in reply.choices])
    return Outcome(answer=answer, usage={"solve_system2": reply.usage}, iterations=len(reply.choices))


async def inftythink(problem: Problem, sample: int, setup: Setup) -> Outcome:
    """Iterations of bounded thinking; a cut one is summarised and the summary replaces the reasoning."""
    context = sample_context(setup.context, sample)
    usage: dict[str, Usage] = {}
    summary_text = ""
    for iteration in range(1, setup.max_iterations + 1):
        question = problem.problem + (INFTYTHINK_CONTINUE.format(summary=summary_text) if summary_text else "")
        reply = await _call(_thinking_call(f"reason/{iteration}", COT.format(problem=question), context), context)
        usage = add_usage(usage, {"solve_system2": reply.usage})
        choice = reply.choices[0]
        answer = answer_of(choice)
        finished = choice.finish_reason == "stop" and last_boxed(choice.content) is not None
        if finished or iteration == setup.max_iterations:
            break
        reasoning = "\n".join(text for text in (choice.reasoning, choice.content) if text.strip())
        previous = INFTYTHINK_PREVIOUS.format(summary=summary_text) if summary_text else ""
        prompt = INFTYTHINK_SUMMARY.format(problem=problem.problem, previous=previous, reasoning=reasoning)
        summary_call = replace(solve_call(f"summary/{iteration}", 1, prompt, context, attempt=0),
                               messages=[("user", prompt)], max_tokens=SUMMARY_MAX_TOKENS,
                               temperature=SUMMARY_TEMPERATURE)
        summarised = await _call(summary_call, context)
        usage = add_usage(usage, {"summarize": summarised.usage})
        written = summarised.choices[0]
        summary_text = written.content.strip() or written.reasoning.strip() or summary_text
    return Outcome(answer=answer, usage=usage, iterations=iteration)


METHODS: dict[str, Method] = {"scale": scale, "cot": cot, "majority": majority, "inftythink": inftythink}


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


def _thinking_call(key: str, user: str, context: Context, n: int = 1) -> ChatCall:
    """A System 2 call (its budget and sampling) carrying the baseline's prompt alone."""
    return replace(solve_call(key, 2, user, context, attempt=0), messages=[("user", user)], n=n)


async def _call(call: ChatCall, context: Context) -> ChatReply:
    return await journal.systems_for(context).acall(call)
