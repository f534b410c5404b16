"""Eq. 5–6: S(s_i) = m_i(C_i, s_i) on System 1 or System 2."""

from __future__ import annotations

from typing import Any, Generator, Literal

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.forcing import forced_answer_call, needs_forced_answer, thinking_budget
from scale_graph.history import (
    fit_prompt,
    fitted_call,
    messages,
    previous_solutions,
    solution_texts,
)
from scale_graph.journal import Request, derive_seed, emit
from scale_graph.parsing import last_boxed
from scale_graph.servers.chat import ChatCall, ChatReply
from scale_graph.state import PREVIEW_CHARS, State, Step, Usage, add_usage


def solve_call(key: str, system: Literal[1, 2], user: str, context: Context, *, attempt: int) -> ChatCall:
    """The solve request of one system, with that system's budget and sampling; a thinking call
    carries its native thinking budget (sent where the server enforces it)."""
    max_tokens: int = getattr(context, f"system{system}_max_tokens")
    return ChatCall(key=key, system=system, messages=messages(user, context.system_message), thinking=system == 2,
                    max_tokens=max_tokens, temperature=getattr(context, f"system{system}_temperature"),
                    top_p=getattr(context, f"system{system}_top_p"), top_k=getattr(context, f"system{system}_top_k"),
                    seed=derive_seed(context.seed, "solve", key, attempt),
                    thinking_budget=thinking_budget(context, max_tokens) if system == 2 else None)


def solve_subproblem(state: State, context: Context, system: Literal[1, 2]) -> Generator[Request, Any, dict]:
    """Eq. 6: solve s_i with context C_i; a reply cut before its answer is finished by the forced-answer
    follow-up (:mod:`scale_graph.forcing`), an empty one made again (``empty_retries``, as for every method)."""
    index: int = state.get("solved", 0)
    last = index == len(state["subproblems"]) - 1
    history = yield from previous_solutions(state, context, index)
    instruction = (prompts.SOLVE_LAST if last else prompts.SOLVE).format(number=index + 1)
    replies: list[ChatReply] = []
    keys: list[str] = []
    usage: dict[str, Usage] = {}
    warnings: list[str] = []
    forced = False
    ended_by = None
    for attempt in range(context.empty_retries + 1):
        def build(window: int, attempt: int = attempt) -> tuple[ChatCall, list[str]]:
            prompt = fit_prompt(state["problem"], state["subproblems"], history, index, instruction, window=window,
                                max_tokens=getattr(context, f"system{system}_max_tokens"), stage="solve")
            return solve_call(f"solve/{index}/{attempt}", system, prompt.user, context, attempt=attempt), prompt.warnings

        call, reply, fitting = yield from fitted_call(build, context, "solve")
        warnings += [w for w in fitting if w not in warnings]
        replies.append(reply)
        keys.append(call.journal_key)
        usage = add_usage(usage, {f"solve_system{system}": reply.usage})
        warnings += reply.warnings
        choice = reply.choices[0]
        ended_by = choice.ended_by
        if needs_forced_answer(choice, context, thinking=call.thinking):
            forced, ended_by = True, "forced_answer"
            force_call, forced_reply, fitting = yield from fitted_call(
                lambda window, attempt=attempt, asked=call.messages, cut=choice: (forced_answer_call(
                    f"force/{index}/{attempt}", asked, cut, context, system=system, window=window,
                    instruction=prompts.FORCE_SUBPROBLEM.format(number=index + 1)), []),
                context, "solve (forced answer)")
            warnings += fitting + forced_reply.warnings
            replies.append(forced_reply)
            keys.append(force_call.journal_key)
            usage = add_usage(usage, {"force_answer": forced_reply.usage})
            how = "stopped thinking" if not choice.content.strip() else "was cut before its boxed result"
            warnings.append(f"solve: System {system} {how} on sub-problem {index + 1} "
                            f"(finish_reason={choice.finish_reason}); answer forced by a follow-up call")
            break
        if choice.content.strip():
            break
        if choice.reasoning.strip():  # thinking that ended without an answer, the policy off
            warnings.append(f"solve: System {system} answered sub-problem {index + 1} only in the reasoning field; used it")
            break
        warnings.append(f"solve: empty solution for sub-problem {index + 1} (attempt {attempt + 1})")
    solution, _ = solution_texts(replies)
    result = last_boxed(solution)
    if result is None:
        warnings.append(f"solve: no \\boxed{{}} result in the solution of sub-problem {index + 1}")
    step: Step = {
        "index": index, "system": system, "call_keys": keys, "result": result,
        "solution_preview": solution[-PREVIEW_CHARS:], "forced_answer": forced, "ended_by": ended_by,
        "finish_reason": replies[0].choices[0].finish_reason,
        "prompt_tokens": sum(r.prompt_tokens for r in replies),
        "completion_tokens": sum(r.completion_tokens for r in replies),
        "reasoning_tokens": sum(r.reasoning_tokens for r in replies),
        "latency_s": round(sum(r.latency_s for r in replies), 3),
        "warnings": warnings,  # appended to the assessment's by the steps reducer
    }
    emit("solved", index=index, system=system, result=result, completion_tokens=step["completion_tokens"])
    return {"steps": [step], "solved": index + 1, "usage": usage, "warnings": warnings}


def solve_system1(state: State, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 6 with m_i = System 1 (fast, non-thinking)."""
    return (yield from solve_subproblem(state, context, 1))


def solve_system2(state: State, context: Context) -> Generator[Request, Any, dict]:
    """Eq. 6 with m_i = System 2 (deliberate, thinking)."""
    return (yield from solve_subproblem(state, context, 2))
