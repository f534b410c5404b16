"""RunSetup: what an entry point settles once, before any work, and hands down.

Every entry point (``scale solve``, ``runs resume``, ``eval``, ``serve``, Studio, the Ray worker)
builds one :class:`RunSetup` with :func:`build`; below the entry points nothing reads the
environment, the config file or the servers record. The order, lowest to highest, per field::

    default < servers record < config file < environment < explicit < saved run < request

(the first five are :func:`scale_graph.settings.resolve_layers`; a *saved run*'s parameters replace all
but where its endpoints are, which a resume takes from now; a *request* — a ``scale serve``
request's ``scale`` object, a resume's overrides — wins over everything). Each value's source is
recorded in ``sources``. The API keys are read here, once, into :class:`Keys`, and installed for
the chat layer (:func:`scale_graph.servers.endpoints.install_keys`): no key or config-file read
per LLM call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from scale_graph.context import ENDPOINT_FIELDS, Context
from scale_graph.database import Database, db_path, results_db
from scale_graph.servers.endpoints import Endpoint, Keys, endpoints, install_keys, read_keys
from scale_graph.settings import DEFAULT, Resolved, resolve_layers

SAVED = "saved run"
REQUEST = "request"


def running_servers() -> dict[str, Any] | None:
    """Endpoints recorded by ``scale servers up`` if its processes are alive."""
    from scale_graph.servers.manager import running_endpoints  # lazy: process tooling, not needed otherwise

    try:
        return running_endpoints()
    except (OSError, ValueError):
        return None


def resolve(explicit: Mapping[str, Any] | None = None, *, servers: bool = True,
            only: tuple[str, ...] | None = None) -> Resolved:
    """default < servers record (read here) < config file < environment < ``explicit``."""
    return resolve_layers(explicit, record=running_servers() if servers else None, only=only)


@dataclass(frozen=True)
class RunSetup:
    """One entry point's settled values: run parameters with their sources, keys, databases."""

    context: Context
    sources: Mapping[str, str]
    keys: Keys = field(repr=False)
    run_db: Database
    results_db: str

    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        """System 1 and System 2, with the keys read at the entry point."""
        return endpoints(self.context, self.keys)

    def source(self, name: str) -> str:
        """Where ``name``'s value came from (``default`` when nothing set it)."""
        return self.sources.get(name, DEFAULT)

    def describe(self) -> str:
        """One line: every non-default setting with its source, e.g. ``threshold=0.5 (option)``."""
        return Resolved(self.context, dict(self.sources)).describe()


def build(explicit: Mapping[str, Any] | None = None, *, saved: Mapping[str, Any] | None = None,
          request: Mapping[str, Any] | None = None, db: Any = None, results: str | None = None,
          servers: bool = True) -> RunSetup:
    """The whole documented order once (see the module doc); the keys are read once and installed."""
    # With a saved run, the layers below it only say where the endpoints are now: a bad unrelated
    # variable must not block a resume.
    resolved = resolve(explicit, servers=servers, only=None if saved is None else ENDPOINT_FIELDS)
    values, sources = resolved.context.given(), dict(resolved.sources)
    for source, layer in ((SAVED, _saved_layer(saved, values)), (REQUEST, dict(request or {}))):
        for name, value in layer.items():
            if name in Context.model_fields:
                values[name], sources[name] = value, source
    context = Context(**values)
    keys = read_keys()
    install_keys(keys)
    run_db = db_path(db)
    return RunSetup(context, {name: sources[name] for name in context.non_defaults() if name in sources},
                    keys, run_db, results_db(results, run_db))


def _saved_layer(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run's parameters, except where its endpoints were when they are configured ``now``
    (a run continues against servers that moved)."""
    return {name: value for name, value in (saved or {}).items() if not (name in ENDPOINT_FIELDS and now.get(name))}


def complete(partial: Context | Mapping[str, Any] | None) -> Context:
    """A run context that may lack endpoints (Studio's context panel, ``context={...}`` passed to
    ``graph.invoke``, none at all) made whole once per run: what the caller set wins, every other
    field comes from the environment, the config file, the servers record or its default."""
    if isinstance(partial, Context) and partial.has_endpoints():
        return partial
    given = partial.given() if isinstance(partial, Context) else dict(partial or {})
    return build(given).context


__all__ = ["REQUEST", "RunSetup", "SAVED", "build", "complete", "resolve", "running_servers"]
