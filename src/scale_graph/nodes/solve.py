"""Eq. 5–6: S(s_i) = m_i(C_i, s_i) on System 1 or System 2."""

from __future__ import annotations

from typing import Any, Generator, Literal

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.forcing import forced_answer_call, needs_forced_answer
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
    """The solve request of one system, with that system's budget and sampling."""
    return ChatCall(key=key, system=system, messages=messages(user), thinking=system == 2,
                    max_tokens=getattr(context, f"system{system}_max_tokens"),
                    temperature=getattr(context, f"system{system}_temperature"),
                    top_p=getattr(context, f"system{system}_top_p"), top_k=getattr(context, f"system{system}_top_k"),
                    seed=derive_seed(context.seed, "solve", key, attempt))


def solve_subproblem(state: State, context: Context, system: Literal[1, 2]) -> Generator[Request, Any, dict]:
    """Eq. 6: solve s_i with context C_i; cut-off System 2 thinking is finished by a short follow-up."""
    index: int = state.get("solved", 0)
    last = index == len(state["subproblems"]) - 1
    history = yield from previous_solutions(state, context, index)
    instruction = (prompts.SOLVE_LAST if last else prompts.SOLVE).format(number=index + 1)
    replies: list[ChatReply] = []
    keys: list[str] = []
    usage: dict[str, Usage] = {}
    warnings: list[str] = []
    forced = False
    prefix = ""  # C_i and s_i as the last solve call carried them, for the forced answer
    for attempt in range(context.parse_retries + 1):
        def build(window: int, attempt: int = attempt) -> tuple[ChatCall, list[str]]:
            nonlocal prefix
            prompt = fit_prompt(state["problem"], state["subproblems"], history, index, instruction, window=window,
                                max_tokens=getattr(context, f"system{system}_max_tokens"), stage="solve")
            prefix = prompt.prefix
            return solve_call(f"solve/{index}/{attempt}", system, prompt.user, context, attempt=attempt), prompt.warnings

        call, reply, fitting = yield from fitted_call(build, context, "solve")
        warnings += [w for w in fitting if w not in warnings]
        replies.append(reply)
        keys.append(call.journal_key)
        usage = add_usage(usage, {f"solve_system{system}": reply.usage})
        warnings += reply.warnings
        choice = reply.choices[0]
        if choice.content.strip():
            break
        if system == 2 and needs_forced_answer(choice, context):
            forced = True
            force_call, forced_reply, fitting = yield from fitted_call(
                lambda window, attempt=attempt, reasoning=choice.reasoning: (forced_answer_call(
                    f"force/{index}/{attempt}", prefix, reasoning, context, window=window,
                    instruction=prompts.FORCE_SUBPROBLEM.format(number=index + 1)), []),
                context, "solve (forced answer)")
            warnings += fitting
            replies.append(forced_reply)
            keys.append(force_call.journal_key)
            usage = add_usage(usage, {"force_answer": forced_reply.usage})
            warnings.append(f"solve: System 2 stopped thinking on sub-problem {index + 1} "
                            f"(finish_reason={choice.finish_reason}); answer forced by a follow-up call")
            if forced_reply.choices[0].content.strip():
                break
        elif choice.reasoning.strip():
            warnings.append(f"solve: System 1 answered sub-problem {index + 1} only in the reasoning field; used it")
            break
        warnings.append(f"solve: empty solution for sub-problem {index + 1} (attempt {attempt + 1})")
    solution, _ = solution_texts(replies)
    result = last_boxed(solution)
    if result is None:
        warnings.append(f"solve: no \\boxed{{}} result in the solution of sub-problem {index + 1}")
    step: Step = {
        "index": index, "system": system, "call_keys": keys, "result": result,
        "solution_preview": solution[-PREVIEW_CHARS:], "forced_answer": forced,
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
