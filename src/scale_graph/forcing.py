"""The forced-answer policy, one for every method: a thinking call that ended without an answer.

A System 2 call can stop while still thinking — its budget ran out, or the model never closed
``</think>`` — leaving ``content`` empty and everything in the reasoning field. When the run's
``force_answer`` switch is on (the default), a short non-thinking follow-up turns that partial
reasoning into an answer (budget forcing, as in s1); its tokens count in Tok. SCALE's solve
step and every baseline (CoT, each majority sample, InftyThink's last iteration) use this same
module, so the comparison plays by one rule.
"""

from __future__ import annotations

from scale_graph import prompts
from scale_graph.context import Context
from scale_graph.history import CHARS_PER_TOKEN, context_window, estimate_tokens, keep_tail, prompt_budget
from scale_graph.journal import derive_seed
from scale_graph.servers.chat import ChatCall, Choice


def needs_forced_answer(choice: Choice, context: Context) -> bool:
    """Whether this reply gets the follow-up: policy on, no visible answer, some reasoning to finish."""
    return context.force_answer and not choice.content.strip() and bool(choice.reasoning.strip())


def forced_answer_call(key: str, user_prefix: str, reasoning: str, context: Context, *,
                       instruction: str, window: int | None = None,
                       system_prompt: str | None = prompts.SYSTEM) -> ChatCall:
    """The non-thinking follow-up on System 1: ``user_prefix`` (the original question with its
    context), the cut-off reasoning, then ``instruction`` (how to end, e.g. box the result).

    The reasoning is kept whole when the call fits the context window (``window`` tokens, else
    the run's), with the follow-up's own budget reserved; otherwise as much of its end as fits,
    since the end holds the latest state of the work. ``system_prompt=None`` for the baselines,
    whose prompts carry no system message.
    """
    frame = user_prefix + prompts.FORCE_ANSWER.format(reasoning="", instruction=instruction)
    budget = prompt_budget(window or context_window(context), context.force_answer_max_tokens)
    room = (budget - estimate_tokens(system_prompt or "", frame)) * CHARS_PER_TOKEN
    user = user_prefix + prompts.FORCE_ANSWER.format(reasoning=keep_tail(reasoning, room), instruction=instruction)
    system = [("system", system_prompt)] if system_prompt is not None else []
    return ChatCall(key=key, system=1, messages=[*system, ("user", user)], thinking=False,
                    max_tokens=context.force_answer_max_tokens, temperature=context.system1_temperature,
                    top_p=context.system1_top_p, top_k=context.system1_top_k, seed=derive_seed(context.seed, key))
