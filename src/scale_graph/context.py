"""Run parameters of a SCALE run: the graph's typed context schema (a pydantic model).

Every value the paper parameterises has a documented default here, with its valid values declared
beside it (``Field`` bounds; the upper bounds of the parameters that multiply work make
``MAXIMA``). ``Context`` is plain data: it reads no environment and no file. Where a run's values
come from (default < servers record < config file < environment < explicit) is decided once per
run by :func:`scale_graph.setup.build`. API keys are not run parameters: they never enter the
context (which Studio shows and runs persist); see :mod:`scale_graph.servers.endpoints`.
"""

from __future__ import annotations

import functools
import math
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from scale_graph.errors import ConfigError

Carry = Literal["final", "reasoning"]
Sampling = Literal["paper", "authors"]

#: What ``sampling="authors"`` changes (the authors' code samples the non-thinking model at T 0.7, top-p 0.8).
AUTHORS_SAMPLING: dict[str, float] = {"system1_temperature": 0.7, "system1_top_p": 0.8}

#: Fields that say *where* the systems are, not *how* to run: re-resolved on resume.
ENDPOINT_FIELDS = ("system1_base_url", "system1_model", "system2_base_url", "system2_model")


#: The model context assumed when neither the configuration nor the server says (``context_window`` 0).
DEFAULT_CONTEXT_WINDOW = 40_960  # Qwen3 and QwQ max_position_embeddings: room for a 32,768-token budget

#: Largest token budget of any one call.
TOKENS = 1_048_576


class MultipliesWork:
    """Field marker: the parameter multiplies work or memory, so its upper bound is in ``MAXIMA``
    (and a value past it is refused as "at most", not as outside an interval)."""


MULTIPLIES_WORK = MultipliesWork()


def _param(default: Any, description: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, work_le: int | None = None) -> Any:
    """A documented field with its valid values beside it; ``work_le`` is the upper bound of a
    parameter that multiplies work or memory (see ``MAXIMA``)."""
    info = Field(default, description=description, ge=ge, gt=gt, le=le if work_le is None else work_le, lt=lt)
    if work_le is not None:
        info.metadata.append(MULTIPLIES_WORK)
    return info


class Context(BaseModel):
    """Run parameters for one SCALE run (paper Eq. 1–6)."""

    # --- endpoints (non-secret part) ---
    system1_base_url: str = _param("", "System 1 (fast, non-thinking) OpenAI-compatible base URL, e.g. http://127.0.0.1:8100/v1.")
    system1_model: str = _param("", "System 1 model name as served.")
    system2_base_url: str = _param("", "System 2 (deliberate, thinking) OpenAI-compatible base URL.")
    system2_model: str = _param("", "System 2 model name as served.")

    # --- the method ---
    threshold: float = _param(0.2, "τ of Eq. 4: difficulty > τ goes to System 2. Paper range 0.2–0.9, best 0.2.", ge=0, le=1)
    candidates: int = _param(8, "k of Eq. 2: number of candidate decompositions compared by `select`.", ge=1, work_le=64)
    max_subproblems: int = _param(12, "Largest accepted decomposition; longer candidates are rejected.", ge=1, work_le=64)
    planner_system: Literal[1, 2] = _param(1, "System whose endpoint (non-thinking) decomposes, selects and assesses.")
    planner_max_tokens: int = _param(1024, "Token budget of a decomposition, selection or assessment call.", ge=1, work_le=TOKENS)
    planner_temperature: float = _param(0.7, "Sampling temperature of decomposition/selection/assessment.", ge=0, le=2)
    system1_max_tokens: int = _param(4096, "System 1 token budget per sub-problem (fixed in the paper).", ge=1, work_le=TOKENS)
    system1_temperature: float = _param(0.6, "System 1 temperature (paper text: 0.6 for every model; `sampling` 'authors' makes it 0.7).", ge=0, le=2)
    system1_top_p: float = _param(0.95, "System 1 top-p (paper text: 0.95 for every model; `sampling` 'authors' makes it 0.8).", gt=0, le=1)
    system1_top_k: int = _param(20, "System 1 top-k (0 = not sent).", ge=0)
    system2_max_tokens: int = _param(32768, "Thinking budget per call: System 2 per sub-problem, CoT, each majority sample (the authors' 32,768; Figure 2 sweeps 4,096–32,768).", ge=1, work_le=TOKENS)
    system2_temperature: float = _param(0.6, "System 2 temperature (thinking recommendation).", ge=0, le=2)
    system2_top_p: float = _param(0.95, "System 2 top-p.", gt=0, le=1)
    system2_top_k: int = _param(20, "System 2 top-k (0 = not sent).", ge=0)
    sampling: Sampling = _param("paper", "Source of the sampling defaults: 'paper' (the paper's text: T 0.6, top-p 0.95 for every model) or 'authors' (the authors' code: T 0.7, top-p 0.8 for the non-thinking System 1). Fills only the System 1 sampling fields not set explicitly.")
    system_message: str = _param("", "System message sent first in every call of every method (SCALE's stages, CoT, majority, InftyThink alike); \"\" = none, as in the paper's prompts.")
    thinking_budget: bool = _param(True, "Native thinking budgets: where the server takes `thinking_token_budget` (vLLM >= 0.19 with a reasoning parser; probed once per endpoint), thinking calls send it (the call's budget minus `answer_reserve`), so the thinking ends inside the budget and the answer follows in the same reply. Off, or on other servers: the forced-answer follow-up.")
    answer_reserve: int = _param(1024, "Tokens of a thinking call's budget kept for the answer after a native thinking budget ends the thinking (at most half the call's budget).", ge=1, work_le=TOKENS)
    empty_retries: int = _param(2, "The same for every method: a call that returns nothing at all (no answer, no reasoning) is made again with a new seed up to this many times (SCALE's solve, CoT, each majority sample, each InftyThink iteration).", ge=0, work_le=10)
    force_answer: bool = _param(True, "Forced-answer policy, the same for every method: a thinking call that ends without an answer (budget exhausted, thinking never closed) gets a short non-thinking follow-up whose tokens count in Tok. Off: such a call just has no answer.")
    force_answer_max_tokens: int = _param(1024, "Budget of the non-thinking follow-up that turns cut-off reasoning into an answer.", ge=1, work_le=TOKENS)
    inftythink_max_tokens: int = _param(8192, "InftyThink baseline: thinking budget per iteration (official value 8,192).", ge=1, work_le=TOKENS)
    inftythink_max_iterations: int = _param(50, "InftyThink baseline: most iterations per problem (official maximum 50; the paper's runs average about 6).", ge=1, work_le=200)
    votes: int = _param(8, "Majority-voting baseline: CoT samples voted on per problem sample (k=8 in the paper).", ge=1, work_le=64)
    context_window: int = _param(0, "Model context length in tokens. Each earlier solution is carried whole (Eq. 5) while the prompt fits this window with the call's own max_tokens reserved (estimated at 3 characters a token); only then do the oldest shrink to their boxed result, with a warning. 0 = read max_model_len from the server's /v1/models, else 40,960.", work_le=10_485_760)
    seed: int = _param(0, "Base seed; each candidate and each retry gets its own derived seed. 0 ≤ seed < 2**63 (stored as a 64-bit integer).", ge=0, lt=9223372036854775808)
    carry: Carry = _param("final", "What of each solved sub-problem is carried forward: 'final' text, or 'reasoning' too (fills the context window sooner).")
    max_problem_chars: int = _param(20000, "Longest accepted problem text.", ge=1, work_le=1_000_000)
    parse_retries: int = _param(2, "Extra attempts (new seed) when an output cannot be parsed.", ge=0, work_le=10)
    review: bool = _param(False, "Pause after `select` for a human to accept or edit the decomposition.")
    budget: int = _param(0, "Per-problem token budget: the completion tokens of everything a run generates (decomposition, selection, assessments, solves, forced answers; a baseline's calls alike) never exceed it. 0 = off (the paper's protocol: only the per-call budgets). See scale_graph.budget.", ge=0, le=TOKENS * 16)
    reuse_group: str = _param("", "Call reuse across runs: runs naming the same group share every identical call (same endpoint, messages, sampling, seed, budget) instead of making it again; each run still counts its own tokens. \"\" = no reuse. `scale eval` sets one group per evaluation; see scale_graph.reuse.")

    # --- server capabilities ---
    thinking_flag: bool = _param(True, "Send chat_template_kwargs.enable_thinking (turn off for servers that reject it).")
    structured_output: bool = _param(True, "Ask for JSON-schema guided output where the server supports it.")
    use_n: bool = _param(True, "Sample the k candidates in one request with n=k where the server supports it.")
    max_in_flight: int = _param(64, "Most requests in flight at once per endpoint, whatever the number of runs or candidates.", ge=1, work_le=1024)
    request_timeout: float = _param(900.0, "Seconds before one HTTP request is abandoned (then retried).")
    max_retries: int = _param(3, "Retries with backoff on connection errors, timeouts, 429 and 5xx.", ge=0, work_le=10)

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **given: Any) -> None:
        try:
            super().__init__(**given)
        except ValidationError as error:  # one line, as every configuration error
            raise ConfigError(_message(error)) from None

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        """Option, environment and config-file strings become the field's type (one-line errors)."""
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"unknown run parameter(s): {', '.join(unknown)}")
        return {name: coerce(name, value) for name, value in data.items()}

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Context:
        if not math.isfinite(self.request_timeout) or self.request_timeout <= 0:  # said in seconds, not as (0, ∞)
            raise ConfigError(f"request_timeout must be a positive number of seconds, got {self.request_timeout}")
        if self.context_window < 0:
            raise ConfigError(f"context_window must be 0 (ask the server) or a number of tokens, got {self.context_window}")
        if self.sampling == "authors":  # a preset: fills only what the caller left to its default
            for name, value in AUTHORS_SAMPLING.items():
                if name not in self.model_fields_set:
                    self.__dict__[name] = value  # not through setattr: the field stays "not given"
        return self

    def replace(self, **changes: Any) -> Context:
        """A validated copy with ``changes`` (what was given stays given; the changes are given too)."""
        return type(self)(**{**self.given(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON parameters (no secrets: the context holds none) for persisting with a run."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, saved: dict[str, Any], **overrides: Any) -> Context:
        """A run's saved parameters (unknown keys from other versions ignored), with ``overrides``."""
        return cls(**{k: v for k, v in {**saved, **overrides}.items() if k in cls.model_fields})

    def given(self) -> dict[str, Any]:
        """The fields passed when this context was made (the rest took their defaults); a context
        made without endpoints (Studio's panel, a dict passed to graph.invoke) is completed by the
        settings from these."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    def has_endpoints(self) -> bool:
        return all(getattr(self, name) for name in ENDPOINT_FIELDS)

    def non_defaults(self) -> dict[str, Any]:
        """The fields whose value differs from the documented default."""
        return {name: getattr(self, name) for name, info in type(self).model_fields.items()
                if getattr(self, name) != info.default}


def _bounds(info: FieldInfo) -> dict[type, Any]:
    return {type(item): item for item in info.metadata if isinstance(item, (Ge, Gt, Le, Lt))}


def _multiplies_work(info: FieldInfo) -> bool:
    return any(item is MULTIPLIES_WORK for item in info.metadata)


#: Documented upper bounds of every parameter that multiplies work or memory (issue: unbounded fan-out).
MAXIMA: dict[str, int] = {name: _bounds(info)[Le].le for name, info in Context.model_fields.items()
                          if _multiplies_work(info)}


def interval(name: str) -> str:
    """The field's valid values written as in mathematics, ``"[0, 2]"`` or ``"(0, 1]"``."""
    bounds = _bounds(Context.model_fields[name])
    low = f"[{bounds[Ge].ge}" if Ge in bounds else f"({bounds[Gt].gt}"
    high = f"{bounds[Le].le}]" if Le in bounds else f"{bounds[Lt].lt})"
    return f"{low}, {high}"


def _message(error: ValidationError) -> str:
    """The first problem of a failed validation, in the project's one-line wording."""
    first = error.errors()[0]
    if first["type"] == "value_error":  # a ConfigError raised by a validator: already worded
        return str(first["ctx"]["error"])
    name, value = str(first["loc"][0]) if first["loc"] else "", first.get("input")
    info = Context.model_fields.get(name)
    if info is None:
        return f"{name or 'run parameters'}: {first['msg']}"
    bounds = _bounds(info)
    both_ends = (Ge in bounds or Gt in bounds) and (Le in bounds or Lt in bounds)
    if both_ends and not _multiplies_work(info):
        return f"{name} must be within {interval(name)}, got {value}"
    if first["type"] in ("less_than_equal", "less_than"):
        return f"{name} must be at most {bounds[Le].le:,}, got {value:,}"
    if first["type"] in ("greater_than_equal", "greater_than") and Ge in bounds:
        wanted = "non-negative" if bounds[Ge].ge == 0 else f"at least {bounds[Ge].ge}"
        return f"{name} must be {wanted}, got {value}"
    return f"{name}: {first['msg']}, got {value!r}"


def coerce(name: str, value: Any) -> Any:
    """Convert option/env/config values to the field's type, with a one-line error when impossible."""
    hint = _hints()[name]
    origin = typing.get_origin(hint)
    try:
        if origin is Literal:
            choices = typing.get_args(hint)
            kind = type(choices[0])
            converted = kind(value)
            if converted not in choices:
                raise ValueError
            return converted
        if hint is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if hint in (int, float, str):
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} (expected {_type_name(hint)})") from None
    return value


@functools.cache
def _hints() -> dict[str, Any]:
    return {name: info.annotation for name, info in Context.model_fields.items()}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


__all__ = ["Context", "ConfigError", "DEFAULT_CONTEXT_WINDOW", "ENDPOINT_FIELDS", "MAXIMA", "coerce"]
