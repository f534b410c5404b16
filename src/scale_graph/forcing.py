"""The forced-answer policy, one for every method and both systems: a call that ended without an answer.

A call can stop before it answers: a thinking call still thinking when its budget ran out (or it
never closed ``</think>``), leaving everything in the reasoning field; any call, System 1's too,
cut at ``max_tokens`` before its ``\\boxed{}`` result. When the run's ``force_answer`` switch is
on (the default), the *same model* finishes: its work so far becomes a closed think block ended
as Qwen3's own thinking budget ends one ("Considering the limited time…" then ``</think>``), and
the model continues that message with its answer (vLLM's ``continue_final_message``). Where the
endpoint cannot continue a message, the chat layer sends the fallback instead — the cut-off work
as a new prompt to System 1 — and says so in a ``degraded:`` warning. Its tokens count in Tok.

Where the server enforces a native thinking budget (:mod:`scale_graph.servers.capabilities`)
the thinking already ends inside the budget and the answer follows in the same reply, so the
follow-up is needed only when the answer itself is cut.

SCALE's solve step and every baseline (CoT, each majority sample, InftyThink's last iteration)
use this module, so the comparison plays by one rule.
"""

from __future__ import annotations

from typing import Literal

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.history import CHARS_PER_TOKEN, context_window, estimate_tokens, keep_tail, prompt_budget
from scale_graph.journal import derive_seed
from scale_graph.parsing import last_boxed
from scale_graph.servers.chat import ChatCall, Choice


def needs_forced_answer(choice: Choice, context: Context, *, thinking: bool) -> bool:
    """Whether this reply gets the follow-up: policy on, and it stopped before answering — a
    thinking call still thinking (no answer text, some reasoning), or any call cut at its budget
    before a boxed result. (A non-thinking reply that ended by itself with its text in the
    reasoning field is an answer: some servers put it there.)"""
    if not context.force_answer:
        return False
    cut = choice.finish_reason == "length"
    if not choice.content.strip():
        return bool(choice.reasoning.strip()) and (thinking or cut)
    return cut and last_boxed(choice.content) is None


def thinking_budget(context: Context, max_tokens: int) -> int | None:
    """The native thinking budget of a thinking call with ``max_tokens``: the budget minus the
    answer's reserve (at most half of it), or None when the switch is off."""
    if not context.thinking_budget:
        return None
    return max_tokens - min(context.answer_reserve, max_tokens // 2)


def forced_answer_call(key: str, messages: list[tuple[str, str]], choice: Choice, context: Context, *,
                       system: Literal[1, 2], instruction: str, window: int | None = None) -> ChatCall:
    """The follow-up to a cut reply of ``system`` to ``messages``: that model continues its own
    work after a closed think block; the fallback (an endpoint that cannot continue) asks System 1
    with the work pasted into a prompt ending in ``instruction``.

    The work is kept whole when the call fits the context window (``window`` tokens, else the
    run's) with the follow-up's own budget reserved; otherwise as much of its end as fits, since
    the end holds the latest state of the work.
    """
    work = "\n\n".join(text for text in (choice.reasoning.strip(), choice.content.strip()) if text)
    budget = prompt_budget(window or context_window(context), context.force_answer_max_tokens)
    asked = "".join(text for _, text in messages)
    frame = prompts.FORCE_CONTINUATION.format(work=prompts.FORCE_END)
    room = (budget - estimate_tokens(asked, frame)) * CHARS_PER_TOKEN
    prefill = prompts.FORCE_CONTINUATION.format(work=(keep_tail(work, room) + prompts.FORCE_END).strip("\n"))
    seed = derive_seed(context.seed, key)
    return ChatCall(key=key, system=system, messages=[*messages, ("assistant", prefill)], thinking=False,
                    max_tokens=context.force_answer_max_tokens, temperature=getattr(context, f"system{system}_temperature"),
                    top_p=getattr(context, f"system{system}_top_p"), top_k=getattr(context, f"system{system}_top_k"),
                    seed=seed, continue_final=True,
                    fallback=_system1_follow_up(key, messages, work, context, instruction=instruction, window=window))


def _system1_follow_up(key: str, messages: list[tuple[str, str]], work: str, context: Context, *,
                       instruction: str, window: int | None) -> ChatCall:
    """The cut-off work as a new prompt to System 1, non-thinking (an endpoint that cannot continue)."""
    system_messages = [(role, text) for role, text in messages if role == "system"]
    user_prefix = next((text for role, text in reversed(messages) if role == "user"), "")
    frame = user_prefix + prompts.FORCE_ANSWER.format(reasoning="", instruction=instruction)
    budget = prompt_budget(window or context_window(context), context.force_answer_max_tokens)
    room = (budget - estimate_tokens(*(text for _, text in system_messages), frame)) * CHARS_PER_TOKEN
    user = user_prefix + prompts.FORCE_ANSWER.format(reasoning=keep_tail(work, room), instruction=instruction)
    return ChatCall(key=key, system=1, messages=[*system_messages, ("user", user)], thinking=False,
                    max_tokens=context.force_answer_max_tokens, temperature=context.system1_temperature,
                    top_p=context.system1_top_p, top_k=context.system1_top_k, seed=derive_seed(context.seed, key))
