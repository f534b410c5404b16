"""A run's identity: every resolved parameter that can change its output, and the real model
behind each endpoint (:mod:`scale_graph.servers.identity`).

Evaluation runs (results store), their SCALE threads (run records) and trace runs record it; a
re-opened run whose identity differs is refused with one line naming what differs
(:func:`refusal`), so a reused name never mixes two configurations' results, and a reused
thread never returns another τ's or another model's answer.

Where the endpoints are (base URL, served name) is not part of it: servers may move between
invocations; what they serve is compared instead (vLLM's ``root``, else the served id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scale_graph.context import ENDPOINT_FIELDS
from scale_graph.servers.identity import model_differences


def param_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``name=stored, not wanted`` for each parameter that differs (endpoint locations aside), in
    the order of ``wanted`` (what the caller puts first is named first), then those only stored."""
    names = [name for name in dict.fromkeys([*wanted, *stored]) if name not in ENDPOINT_FIELDS]
    return [f"{name}={_shown(stored.get(name))}, not {_shown(wanted.get(name))}"
            for name in names if stored.get(name) != wanted.get(name)]


def differences(stored_params: Mapping[str, Any], stored_models: Mapping[str, Any] | None,
                params: Mapping[str, Any], models: Mapping[str, Any] | None) -> list[str]:
    """Every difference between a stored identity and the wanted one: parameters, then models."""
    return param_differences(stored_params, params) + model_differences(stored_models, models)


def refusal(subject: str, found: list[str], ways: str, verb: str = "was run with") -> str:
    """One line: ``<subject> was run with a=1, not 2 (and b=…, not …): <ways>``."""
    rest = f" (and {', '.join(found[1:])})" if len(found) > 1 else ""
    return f"{subject} {verb} {found[0]}{rest}: {ways}"


def latest_models(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The models a thread's run record says it runs on now: the last allowed change, else those it started on."""
    changes = record.get("model_changes") or []
    return changes[-1].get("models") if changes else record.get("models")


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


__all__ = ["differences", "latest_models", "param_differences", "refusal"]
