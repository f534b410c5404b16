"""Endpoint settings of System 1 and System 2: where they are, and their keys.

Keys come from ``SCALE_SYSTEM{1,2}_API_KEY`` or the config file, only here, and are never
part of the run parameters, so they cannot reach checkpoints, logs or results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scale_graph.context import DEFAULT_CONTEXT_WINDOW, Context
from scale_graph.servers import identity
from scale_graph.settings import ConfigError, api_key

START_LOCAL_HINT = ("no System {system} endpoint configured: start the local CPU servers with "
                    "`scale servers up` (or set SCALE_SYSTEM{system}_BASE_URL and SCALE_SYSTEM{system}_MODEL)")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible chat endpoint."""

    system: int
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 900.0
    max_retries: int = 3


@dataclass(frozen=True)
class Keys:
    """The API keys of System 1 and System 2 (None: none), read once by the entry point."""

    system1: str | None = field(default=None, repr=False)
    system2: str | None = field(default=None, repr=False)

    def of(self, system: int) -> str | None:
        return self.system1 if system == 1 else self.system2


def read_keys() -> Keys:
    """The keys from ``SCALE_SYSTEM{1,2}_API_KEY`` or the config file: the one place they are read."""
    return Keys(api_key(1), api_key(2))


#: The keys the entry point read (:func:`scale_graph.setup.build`); None: read on each use.
_installed: Keys | None = None


def install_keys(keys: Keys | None) -> None:
    """Hand the entry point's keys down to every later :func:`endpoints` call of this process."""
    global _installed
    _installed = keys


def endpoints(context: Context, keys: Keys | None = None) -> tuple[Endpoint, Endpoint]:
    """The two endpoints a context points at, with ``keys`` (default: those the entry point
    installed, else read now); ConfigError names what is missing."""
    keys = keys or _installed or read_keys()
    found = []
    for system in (1, 2):
        base_url = getattr(context, f"system{system}_base_url").strip()
        model = getattr(context, f"system{system}_model").strip()
        if not base_url or not model:
            raise ConfigError(START_LOCAL_HINT.format(system=system))
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"SCALE_SYSTEM{system}_BASE_URL must start with http:// or https://, got {base_url!r}")
        found.append(Endpoint(system=system, base_url=base_url.rstrip("/"), model=model, api_key=keys.of(system),
                              timeout=context.request_timeout, max_retries=context.max_retries))
    return found[0], found[1]


def with_context_window(context: Context, timeout: float = 5.0) -> Context:
    """``context`` with ``context_window`` filled from the servers' ``/v1/models`` (vLLM reports
    ``max_model_len``; the smaller of the two systems), when it is not configured; a server that
    does not say leaves the documented fallback (32,768 tokens). The same one request per
    server reads each endpoint's model identity (:func:`scale_graph.servers.identity.probe`), so a
    command calls this once, at its start, and later look-ups of the identity ask nothing."""
    probed = identity.probe(context, timeout)
    if context.context_window:
        return context
    windows = [found.max_model_len for found in probed.values() if found.max_model_len is not None]
    return context.replace(context_window=min(windows) if windows else DEFAULT_CONTEXT_WINDOW)
