"""Run parameters of a SCALE run: the graph's typed context schema.

Every value the paper parameterises has a documented default here. ``Context`` is plain data:
it reads no environment and no file. Where a run's values come from (option › environment ›
config file › servers record › default) is decided once per run by
:func:`scale_graph.settings.resolve`. API keys are not run parameters: they never enter the
context (which Studio shows and runs persist); see :mod:`scale_graph.servers.endpoints`.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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


def _param(default: Any, description: str, *, at_least: float | None = None, most: int | None = None,
           within: str | None = None) -> Any:
    """A documented field with its valid values beside it: ``at_least`` a lower bound, ``most``
    the bound on a parameter that multiplies work or memory (see ``MAXIMA``), ``within`` an
    interval written as in mathematics, ``"[0, 2]"`` or ``"(0, 1]"``."""
    bounds = {key: value for key, value in (("at_least", at_least), ("most", most), ("within", within))
              if value is not None}
    return field(default=default, metadata={"description": description, **bounds})


@dataclass(kw_only=True)
class Context:
    """Run parameters for one SCALE run (paper Eq. 1–6)."""

    # --- endpoints (non-secret part) ---
    system1_base_url: str = _param("", "System 1 (fast, non-thinking) OpenAI-compatible base URL, e.g. http://127.0.0.1:8100/v1.")
    system1_model: str = _param("", "System 1 model name as served.")
    system2_base_url: str = _param("", "System 2 (deliberate, thinking) OpenAI-compatible base URL.")
    system2_model: str = _param("", "System 2 model name as served.")

    # --- the method ---
    threshold: float = _param(0.2, "τ of Eq. 4: difficulty > τ goes to System 2. Paper range 0.2–0.9, best 0.2.", within="[0, 1]")
    candidates: int = _param(8, "k of Eq. 2: number of candidate decompositions compared by `select`.", at_least=1, most=64)
    max_subproblems: int = _param(12, "Largest accepted decomposition; longer candidates are rejected.", at_least=1, most=64)
    planner_system: Literal[1, 2] = _param(1, "System whose endpoint (non-thinking) decomposes, selects and assesses.")
    planner_max_tokens: int = _param(1024, "Token budget of a decomposition, selection or assessment call.", at_least=1, most=TOKENS)
    planner_temperature: float = _param(0.7, "Sampling temperature of decomposition/selection/assessment.", within="[0, 2]")
    system1_max_tokens: int = _param(4096, "System 1 token budget per sub-problem (fixed in the paper).", at_least=1, most=TOKENS)
    system1_temperature: float = _param(0.6, "System 1 temperature (paper text: 0.6 for every model; `sampling` 'authors' makes it 0.7).", within="[0, 2]")
    system1_top_p: float = _param(0.95, "System 1 top-p (paper text: 0.95 for every model; `sampling` 'authors' makes it 0.8).", within="(0, 1]")
    system1_top_k: int = _param(20, "System 1 top-k (0 = not sent).", at_least=0)
    system2_max_tokens: int = _param(32768, "Thinking budget per call: System 2 per sub-problem, CoT, each majority sample (the authors' 32,768; Figure 2 sweeps 4,096–32,768).", at_least=1, most=TOKENS)
    system2_temperature: float = _param(0.6, "System 2 temperature (thinking recommendation).", within="[0, 2]")
    system2_top_p: float = _param(0.95, "System 2 top-p.", within="(0, 1]")
    system2_top_k: int = _param(20, "System 2 top-k (0 = not sent).", at_least=0)
    sampling: Sampling = _param("paper", "Source of the sampling defaults: 'paper' (the paper's text: T 0.6, top-p 0.95 for every model) or 'authors' (the authors' code: T 0.7, top-p 0.8 for the non-thinking System 1). Fills only the System 1 sampling fields not set explicitly.")
    system_message: str = _param("", "System message sent first in every call of every method (SCALE's stages, CoT, majority, InftyThink alike); \"\" = none, as in the paper's prompts.")
    thinking_budget: bool = _param(True, "Native thinking budgets: where the server takes `thinking_token_budget` (vLLM >= 0.19 with a reasoning parser; probed once per endpoint), thinking calls send it (the call's budget minus `answer_reserve`), so the thinking ends inside the budget and the answer follows in the same reply. Off, or on other servers: the forced-answer follow-up.")
    answer_reserve: int = _param(1024, "Tokens of a thinking call's budget kept for the answer after a native thinking budget ends the thinking (at most half the call's budget).", at_least=1, most=TOKENS)
    empty_retries: int = _param(2, "The same for every method: a call that returns nothing at all (no answer, no reasoning) is made again with a new seed up to this many times (SCALE's solve, CoT, each majority sample, each InftyThink iteration).", at_least=0, most=10)
    force_answer: bool = _param(True, "Forced-answer policy, the same for every method: a thinking call that ends without an answer (budget exhausted, thinking never closed) gets a short non-thinking follow-up whose tokens count in Tok. Off: such a call just has no answer.")
    force_answer_max_tokens: int = _param(1024, "Budget of the non-thinking follow-up that turns cut-off reasoning into an answer.", at_least=1, most=TOKENS)
    inftythink_max_tokens: int = _param(8192, "InftyThink baseline: thinking budget per iteration (official value 8,192).", at_least=1, most=TOKENS)
    inftythink_max_iterations: int = _param(50, "InftyThink baseline: most iterations per problem (official maximum 50; the paper's runs average about 6).", at_least=1, most=200)
    votes: int = _param(8, "Majority-voting baseline: CoT samples voted on per problem sample (k=8 in the paper).", at_least=1, most=64)
    context_window: int = _param(0, "Model context length in tokens. Each earlier solution is carried whole (Eq. 5) while the prompt fits this window with the call's own max_tokens reserved (estimated at 3 characters a token); only then do the oldest shrink to their boxed result, with a warning. 0 = read max_model_len from the server's /v1/models, else 40,960.", most=10_485_760)
    seed: int = _param(0, "Base seed; each candidate and each retry gets its own derived seed. 0 ≤ seed < 2**63 (stored as a 64-bit integer).", within="[0, 9223372036854775808)")
    carry: Carry = _param("final", "What of each solved sub-problem is carried forward: 'final' text, or 'reasoning' too (fills the context window sooner).")
    max_problem_chars: int = _param(20000, "Longest accepted problem text.", at_least=1, most=1_000_000)
    parse_retries: int = _param(2, "Extra attempts (new seed) when an output cannot be parsed.", at_least=0, most=10)
    review: bool = _param(False, "Pause after `select` for a human to accept or edit the decomposition.")
    budget: int = _param(0, "Per-problem token budget: the completion tokens of everything a run generates (decomposition, selection, assessments, solves, forced answers; a baseline's calls alike) never exceed it. 0 = off (the paper's protocol: only the per-call budgets). See scale_graph.budget.", within=f"[0, {TOKENS * 16}]")
    reuse_group: str = _param("", "Call reuse across runs: runs naming the same group share every identical call (same endpoint, messages, sampling, seed, budget) instead of making it again; each run still counts its own tokens. \"\" = no reuse. `scale eval` sets one group per evaluation; see scale_graph.reuse.")

    # --- server capabilities ---
    thinking_flag: bool = _param(True, "Send chat_template_kwargs.enable_thinking (turn off for servers that reject it).")
    structured_output: bool = _param(True, "Ask for JSON-schema guided output where the server supports it.")
    use_n: bool = _param(True, "Sample the k candidates in one request with n=k where the server supports it.")
    max_in_flight: int = _param(64, "Most requests in flight at once per endpoint, whatever the number of runs or candidates.", at_least=1, most=1024)
    request_timeout: float = _param(900.0, "Seconds before one HTTP request is abandoned (then retried).")
    max_retries: int = _param(3, "Retries with backoff on connection errors, timeouts, 429 and 5xx.", at_least=0, most=10)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (one line) for values outside their meaningful range."""
        for f in fields(self):
            _check_bounds(f.name, getattr(self, f.name), f.metadata)
        if not math.isfinite(self.request_timeout) or self.request_timeout <= 0:  # said in seconds, not as (0, ∞)
            raise ConfigError(f"request_timeout must be a positive number of seconds, got {self.request_timeout}")
        if self.context_window < 0:
            raise ConfigError(f"context_window must be 0 (ask the server) or a number of tokens, got {self.context_window}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON parameters (no secrets: the context holds none) for persisting with a run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], **overrides: Any) -> Context:
        """A run's saved parameters (unknown keys from other versions ignored), with ``overrides``."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**saved, **overrides}.items() if k in known})

    def given(self) -> dict[str, Any]:
        """The fields passed when this context was made (the rest took their defaults)."""
        return {name: getattr(self, name) for name in getattr(self, "_given", ())}

    def has_endpoints(self) -> bool:
        return all(getattr(self, name) for name in ENDPOINT_FIELDS)

    def non_defaults(self) -> dict[str, Any]:
        """The fields whose value differs from the documented default."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


#: Documented upper bounds of every parameter that multiplies work or memory (issue: unbounded fan-out).
MAXIMA: dict[str, int] = {f.name: f.metadata["most"] for f in fields(Context) if "most" in f.metadata}


def _check_bounds(name: str, value: Any, bounds: Mapping[str, Any]) -> None:
    if "within" in bounds:
        if not _inside(value, bounds["within"]):
            raise ConfigError(f"{name} must be within {bounds['within']}, got {value}")
    if "at_least" in bounds and value < bounds["at_least"]:
        wanted = "non-negative" if bounds["at_least"] == 0 else f"at least {bounds['at_least']}"
        raise ConfigError(f"{name} must be {wanted}, got {value}")
    if "most" in bounds and value > bounds["most"]:
        raise ConfigError(f"{name} must be at most {bounds['most']:,}, got {value:,}")


@functools.cache
def _interval(written: str) -> tuple[float, float, bool, bool]:
    """``"(0, 1]"`` → low 0, high 1, low end open, high end closed."""
    opening, low, high, closing = re.fullmatch(r"([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])", written).groups()
    return float(low), float(high), opening == "[", closing == "]"


def _inside(value: float, written: str) -> bool:
    low, high, low_closed, high_closed = _interval(written)  # NaN fails every comparison: outside
    return (low <= value if low_closed else low < value) and (value <= high if high_closed else value < high)


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


_dataclass_init = Context.__init__


def _init_recording_given(self: Context, **given: Any) -> None:
    _dataclass_init(self, **given)
    if self.sampling == "authors":  # a preset: fills only what the caller left to its default
        for name, value in AUTHORS_SAMPLING.items():
            if name not in given:
                setattr(self, name, value)
    # Which fields a caller set: a context made without endpoints (Studio's context panel, a
    # dict passed to graph.invoke) takes them and every unset field from the settings.
    self._given = frozenset(given)


Context.__init__ = _init_recording_given  # type: ignore[method-assign]


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Context)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


__all__ = ["Context", "ConfigError", "DEFAULT_CONTEXT_WINDOW", "ENDPOINT_FIELDS", "MAXIMA", "coerce"]
