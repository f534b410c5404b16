"""The fake server's vocabulary (stages, models, faults) and its settings (:class:`FakeOpenAIConfig`)."""


from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scale_graph import prompts
from scale_graph.nodes.assess import DIFFICULTY_SCHEMA
from scale_graph.nodes.decompose import decomposition_schema
from scale_graph.nodes.select import selection_schema

STAGES: tuple[str, ...] = ("decomposition", "selection", "difficulty", "solve")
"""The request kinds the server recognises, see :func:`detect_stage`."""

MODELS: tuple[str, ...] = ("scale-system1", "scale-system2")
"""Model ids listed by ``GET /v1/models`` (requests may name any model)."""

REASONING_FIELDS: tuple[str, ...] = ("reasoning", "reasoning_content", "inline", "none")
"""Where thinking text goes: newer vLLM, older vLLM, ``<think>`` in content, hidden."""

THINKING_BUDGETS: tuple[str, ...] = ("ignore", "enforce", "refuse")
"""What the server does with ``thinking_token_budget``, see :attr:`FakeOpenAIConfig.thinking_budget`."""

def _json_line(template: str, **fields: Any) -> str:
    """The closing ``Respond with JSON only: {"key"`` of a planner prompt, lower-cased: its key
    names the stage, and taking it from the prompt constants keeps the fake in step with them."""
    line = template.format(**fields).rstrip().splitlines()[-1]
    return line[: line.index('":') + 1].lower()


#: Stage → (JSON-schema name the node sends, what its prompt's last line starts with).
_PLANNER_STAGES = {
    "difficulty": (DIFFICULTY_SCHEMA["name"], _json_line(prompts.ASSESS, number=1)),
    "selection": (selection_schema(2)["name"], _json_line(prompts.SELECT, count=2, candidates="")),
    "decomposition": (decomposition_schema(2)["name"], _json_line(prompts.DECOMPOSE, max_subproblems=2)),
}
_JSON_STAGES = frozenset(_PLANNER_STAGES)
_ALL_STAGES = frozenset(STAGES)

FAULTS: dict[str, frozenset[str]] = {
    # Transport and HTTP-level faults: meaningful for every stage.
    "refuse": _ALL_STAGES,  # close the socket without answering
    "500": _ALL_STAGES,
    "502": _ALL_STAGES,
    "503": _ALL_STAGES,
    "429": _ALL_STAGES,  # with Retry-After: 0
    "400": _ALL_STAGES,
    "timeout": _ALL_STAGES,  # hold the request open for hang_seconds, then close
    "drop": _ALL_STAGES,  # headers with Content-Length, then close mid-body
    "context_length": _ALL_STAGES,  # HTTP 400 worded as vLLM words a prompt longer than the context
    "echo_auth_500": _ALL_STAGES,  # HTTP 500 whose message echoes the request's Authorization header
    # Malformed 200 replies.
    "no_choices": _ALL_STAGES,  # "choices": []
    "no_message": _ALL_STAGES,  # a choice without "message"
    "not_json": _ALL_STAGES,  # a 200 whose body is not JSON (an HTML page)
    # Content faults.
    "empty": _ALL_STAGES,  # content "", no reasoning, finish_reason "stop"
    "reasoning_only": _ALL_STAGES,  # content "", the whole answer in the reasoning field
    "length": _ALL_STAGES,  # thinking cut at the budget: content "", finish_reason "length"
    "malformed_json": _JSON_STAGES,  # the JSON answer cut in half
    "difficulty_out_of_range": frozenset({"difficulty"}),  # {"difficulty": 7.5}
    "no_difficulty": frozenset({"difficulty"}),  # "I cannot tell."
    "zero_subproblems": frozenset({"decomposition"}),  # {"subproblems": []}
    "many_subproblems": frozenset({"decomposition"}),  # 200 sub-problems
    "no_boxed": frozenset({"solve"}),  # solve answer without \\boxed{}
}
"""Injectable faults, each mapped to the stages it can apply to. ``inject(f)`` without a
stage is consumed by the next request of any of these stages."""

_HTTP_FAULTS = {"500": 500, "502": 502, "503": 503, "429": 429, "400": 400}
#: vLLM's wording (renderers/params.py) for a request that does not fit the model's context.
CONTEXT_LENGTH_MESSAGE = ("This model's maximum context length is {limit} tokens. However, you requested {requested} "
                          "tokens ({prompt} in the messages, {output} in the completion). Please reduce the length "
                          "of the messages or completion.")
CONTEXT_LIMIT = 8192
#: The ``max_model_len`` reported with ``model_root`` (Qwen3's native window: larger than any default budget).
MAX_MODEL_LEN = 40_960
_NOT_JSON_BODY = b"<html><body><h1>Welcome</h1>This is not the API you are looking for.</body></html>"
_MANY_SUBPROBLEMS = 200
_OUT_OF_RANGE_DIFFICULTY = 7.5
_STREAM_PIECE_CHARS = 256
_REASONING_FILLER = "Let me think about this step carefully and check each quantity. "
_CONTENT_FILLER = "We work through the sub-problem one quantity at a time. "


@dataclass(frozen=True)
class FakeOpenAIConfig:
    """Behaviour of a :class:`FakeOpenAIServer`; every field is also a constructor kwarg,
    a ``POST /_config`` key and a CLI flag (``--reasoning-bytes`` ...)."""

    latency: float = 0.0
    """Seconds every chat completion waits before answering."""
    reasoning_bytes: int = 200
    """Length of the reasoning text of a thinking request."""
    content_bytes: int = 64
    """Length of the worked-solution text before the final sentence of a non-thinking solve."""
    reasoning_field: str = "reasoning"
    """One of :data:`REASONING_FIELDS`."""
    subproblem_count: int = 3
    """Sub-problems per decomposition."""
    difficulties: Sequence[float] | Callable[[dict[str, Any]], float] = (0.1, 0.8)
    """Difficulty answers cycled per difficulty request (all ``n`` choices share one), or
    (in-process only) a callable receiving the parsed request body and returning the
    difficulty; it runs on the server's event loop thread and must not block."""
    choice: int = 1
    """1-based decomposition index returned by the selection stage."""
    supports_json_schema: bool = True
    """If false, ``response_format`` of type ``json_schema`` gets HTTP 400."""
    supports_n: bool = True
    """If false, ``n > 1`` gets HTTP 400."""
    supports_thinking_flag: bool = True
    """If false, any ``chat_template_kwargs`` gets HTTP 400."""
    thinking_budget: str = "ignore"
    """What ``thinking_token_budget`` does: ``"ignore"`` (accepted, no effect: servers that drop unknown
    fields), ``"enforce"`` (vLLM ≥ 0.19 with a reasoning parser: the reasoning is cut at the budget,
    the thinking closed and the answer follows in the same reply) or ``"refuse"`` (HTTP 400)."""
    supports_continuation: bool = True
    """If false, ``continue_final_message`` gets HTTP 400 (a server that cannot continue a message)."""
    api_key: str | None = None
    """If set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401."""
    hang_seconds: float = 30.0
    """How long the ``timeout`` fault holds a request open before closing it."""
    model_root: str | None = None
    """If set, ``GET /v1/models`` describes every model as vLLM does: ``root`` (the model path,
    this value) and ``max_model_len`` (:data:`MAX_MODEL_LEN`); a new value swaps the model behind
    the served names."""

    def __post_init__(self) -> None:
        for name in ("latency", "hang_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("reasoning_bytes", "content_bytes", "subproblem_count", "choice"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.choice < 1:
            raise ValueError(f"choice is 1-based, got {self.choice!r}")
        if self.thinking_budget not in THINKING_BUDGETS:
            raise ValueError(f"thinking_budget must be one of {THINKING_BUDGETS}, got {self.thinking_budget!r}")
        for name in ("supports_json_schema", "supports_n", "supports_thinking_flag", "supports_continuation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(f"reasoning_field must be one of {REASONING_FIELDS}, got {self.reasoning_field!r}")
        for name in ("api_key", "model_root"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        if not callable(self.difficulties):
            values = self.difficulties
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"difficulties must be a non-empty list of numbers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise ValueError(f"difficulties must be numbers, got {values!r}")
            object.__setattr__(self, "difficulties", tuple(float(v) for v in values))

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (a difficulty callable is shown by its repr)."""
        data = dataclasses.asdict(self)
        data["difficulties"] = repr(self.difficulties) if callable(self.difficulties) else list(self.difficulties)
        return data


