"""What model an endpoint really serves: its identity, read from ``GET /v1/models`` once per invocation.

A served name says little: both GPU profiles serve every model as ``scale-system2``, so a model
swapped behind that name would look the same. vLLM lists, per served id, ``root`` (the model
path it loaded) and ``max_model_len``; that is the identity runs, results and the reuse cache are
bound to. A server that lists the id without a root (most other OpenAI-compatible servers) is
identified by the id alone, and the identity says so (``source: "id only"``); one that does not
answer ``/v1/models`` at all, likewise (``source: "no answer"``).

:func:`probe` asks each base URL once and keeps the answer for the rest of the process
(:func:`known`); the commands call it once at their start, so every later look-up (the context
window, the reuse key, run records) costs no request, and a new invocation sees a swapped model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scale_graph.context import Context
from scale_graph.servers.probe import model_entries
from scale_graph.settings import api_key

Source = Literal["/v1/models", "id only", "no answer"]
#: The systems a run identity names, in order.
SYSTEMS = ("system1", "system2")


@dataclass(frozen=True)
class ModelIdentity:
    """The model behind one served id: its path (``root``) and window when the server says."""

    id: str
    root: str | None = None
    max_model_len: int | None = None
    source: Source = "id only"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model(self) -> str:
        """What tells models apart: the root when the server reports it, else the served id."""
        return self.root if self.root is not None else self.id

    def describe(self) -> str:
        """E.g. ``/m/qwq (max_model_len 32768)`` or ``scale-system2 (id only)``."""
        if self.root is None:
            return f"{self.id} ({self.source})"
        return self.root + (f" (max_model_len {self.max_model_len})" if self.max_model_len else "")


_known: dict[tuple[str, str], ModelIdentity] = {}
_lock = threading.Lock()


def identify(entries: list[dict] | None, model: str) -> ModelIdentity:
    """The identity of served id ``model`` among a server's ``/v1/models`` entries (None: no answer)."""
    if entries is None:
        return ModelIdentity(id=model, source="no answer")
    for entry in entries:
        if entry.get("id") == model:
            root, window = entry.get("root"), entry.get("max_model_len")
            root = root if isinstance(root, str) and root else None
            window = window if isinstance(window, int) and not isinstance(window, bool) else None
            return ModelIdentity(id=model, root=root, max_model_len=window, source="/v1/models" if root else "id only")
    return ModelIdentity(id=model)


def probe(context: Context, timeout: float = 5.0) -> dict[str, ModelIdentity]:
    """Both systems' identities, asked now (one request per base URL) and kept for :func:`known`."""
    asked: dict[str, list[dict] | None] = {}
    found = {}
    for number, system in enumerate(SYSTEMS, 1):
        base_url = getattr(context, f"{system}_base_url").rstrip("/")
        model = getattr(context, f"{system}_model")
        if base_url not in asked:
            asked[base_url] = model_entries(base_url, timeout, api_key(number))
        found[system] = identify(asked[base_url], model)
        with _lock:
            _known[base_url, model] = found[system]
    return found


def known(base_url: str, model: str, system: int) -> ModelIdentity:
    """The identity of ``model`` at ``base_url``: as probed in this process, else asked now (once)."""
    key = (base_url.rstrip("/"), model)
    with _lock:
        found = _known.get(key)
    if found is None:
        found = identify(model_entries(key[0], 5.0, api_key(system)), model)
        with _lock:
            found = _known.setdefault(key, found)
    return found


def models(context: Context) -> dict[str, dict[str, Any]]:
    """Both systems' identities as plain JSON (for run records and results), without a request
    when :func:`probe` ran for these endpoints."""
    return {system: known(getattr(context, f"{system}_base_url"), getattr(context, f"{system}_model"), number).to_dict()
            for number, system in enumerate(SYSTEMS, 1)}


def model_differences(stored: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[str]:
    """What differs between two recorded identities, e.g. ``system2 model root /m/qwq, not /m/qwen3``.

    Nothing for a system whose identity either side does not know: a run stored before identities
    were recorded, or a server that did not answer ``/v1/models`` (a run started while its server
    was still loading must not be refused once it is up)."""
    differences = []
    for system in SYSTEMS:
        old, new = (_recorded(side, system) for side in (stored, now))
        if old is None or new is None:
            continue
        if old.model != new.model:
            what = "root" if old.root is not None or new.root is not None else "id"
            differences.append(f"{system} model {what} {_shown(old, what)}, not {_shown(new, what)}")
    return differences


def _recorded(identities: Mapping[str, Any] | None, system: str) -> ModelIdentity | None:
    found = (identities or {}).get(system)
    if not found or found.get("source") == "no answer":
        return None
    return ModelIdentity(**found)


def _shown(identity: ModelIdentity, what: str) -> str:
    if what == "id" or identity.root is not None:
        return identity.model
    return f"unknown (the server reports only the id {identity.id})"


__all__ = ["ModelIdentity", "SYSTEMS", "identify", "known", "model_differences", "models", "probe"]
