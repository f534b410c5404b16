"""Where a run's settings come from, resolved once per run in one place.

Precedence, lowest to highest, per field::

    built-in default < servers record < config file < environment < explicit value

- *built-in default*: the documented default of each :class:`~scale_graph.context.Context` field;
- *servers record*: the endpoints (and, for the local profile, small run defaults) recorded by
  ``scale servers up`` while its processes are alive. Its run defaults apply only to runs whose
  endpoints are that record's: a run pointed at other servers never inherits a tiny model's
  192-token budgets;
- *config file*: ``SCALE_CONFIG``, else ``./scale.toml``::

      [system1]
      base_url = "http://127.0.0.1:8100/v1"
      model = "scale-system1"
      api_key_env = "MY_SYSTEM1_KEY"     # name of a variable holding the key (preferred)

      [system2]
      base_url = "http://127.0.0.1:8100/v1"
      model = "scale-system2"

      [run]
      threshold = 0.2
      system2_max_tokens = 8192

- *environment*: ``SCALE_<FIELD>`` (e.g. ``SCALE_THRESHOLD``);
- *explicit*: command-line options, a ``scale serve`` request, a Studio context, a saved run's
  parameters on resume. An explicit value wins even when it equals the default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from scale_graph.context import Context, coerce
from scale_graph.errors import ConfigError

DEFAULT = "default"
SERVERS = "servers record"
ENVIRONMENT = "environment"
EXPLICIT = "option"


def config_path() -> Path | None:
    """The config file in force, or None."""
    explicit = os.environ.get("SCALE_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} (from SCALE_CONFIG) does not exist")
        return path
    default = Path("scale.toml")
    return default if default.is_file() else None


_parsed: dict[tuple[str, int, int], dict[str, Any]] = {}


def read_config() -> dict[str, Any]:
    """The parsed config file ({} when there is none); parsed again only when the file changes."""
    path = config_path()
    if path is None:
        return {}
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in _parsed:
            _parsed[key] = tomllib.loads(path.read_text(encoding="utf-8"))
        data = _parsed[key]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is malformed: {exc}") from None
    for section in ("system1", "system2", "run"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
    unknown = set(data.get("run", {})) - set(Context.model_fields)
    if unknown:
        raise ConfigError(f"config file {path}: unknown run parameter(s) {', '.join(sorted(unknown))}")
    return data


def api_key(system: int) -> str | None:
    """The API key of a system: ``SCALE_SYSTEM{n}_API_KEY``, else the config file's key entry."""
    env = os.environ.get(f"SCALE_SYSTEM{system}_API_KEY")
    if env:
        return env
    section = read_config().get(f"system{system}", {})
    if section.get("api_key_env"):
        return os.environ.get(section["api_key_env"]) or None
    return section.get("api_key") or None


@dataclass(frozen=True)
class Resolved:
    """A run's parameters and, for each field not at its default, where its value came from."""

    context: Context
    sources: dict[str, str]

    def describe(self) -> str:
        """One line: every non-default setting with its source, e.g. ``threshold=0.5 (option)``."""
        shown = [f"{name}={value} ({self.sources.get(name, DEFAULT)})"
                 for name, value in self.context.non_defaults().items()]
        return "settings: " + (", ".join(shown) if shown else "all defaults")


def _endpoint_layer(section: Mapping[str, Any], system: int) -> dict[str, Any]:
    return {f"system{system}_{key}": section[key] for key in ("base_url", "model") if section.get(key)}


def resolve_layers(explicit: Mapping[str, Any] | None = None, *, record: Mapping[str, Any] | None = None,
                   only: Iterable[str] | None = None) -> Resolved:
    """Merge default < servers ``record`` < config file < environment < ``explicit``, once.

    Values are converted to each field's type with a one-line ConfigError naming the source.
    ``record`` is the servers record as the entry point read it (:func:`scale_graph.setup.running_servers`;
    None: none); ``only`` takes just those fields from the layers (the rest keep their defaults).
    """
    known = set(Context.model_fields)
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = set(explicit) - known
    if unknown:
        raise ConfigError(f"unknown run parameter(s) {', '.join(sorted(unknown))}")
    config = read_config()
    where = f"config file {config_path()}"
    layers: list[tuple[str, dict[str, Any]]] = []
    if record:
        layers.append((SERVERS, {**_endpoint_layer(record.get("system1") or {}, 1),
                                 **_endpoint_layer(record.get("system2") or {}, 2)}))
    layers.append((where, {**_endpoint_layer(config.get("system1", {}), 1),
                           **_endpoint_layer(config.get("system2", {}), 2), **config.get("run", {})}))
    layers.append((ENVIRONMENT, {name: os.environ[f"SCALE_{name.upper()}"] for name in known
                                 if os.environ.get(f"SCALE_{name.upper()}", "").strip()}))
    layers.append((EXPLICIT, dict(explicit)))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    wanted = known if only is None else set(only)
    for source, layer in layers:
        for name, value in layer.items():
            if name not in wanted:
                continue
            values[name], sources[name] = _converted(name, value, source), source
    if record and all(values.get(f"system{s}_{k}") == (record.get(f"system{s}") or {}).get(k)
                      for s in (1, 2) for k in ("base_url", "model")):
        # The record's run defaults belong to its servers (e.g. the tiny local model's budgets).
        for name, value in (record.get("run_defaults") or {}).items():
            if name in wanted and sources.get(name, SERVERS) == SERVERS:
                values[name], sources[name] = _converted(name, value, SERVERS), SERVERS
    context = Context(**values)
    return Resolved(context, {name: sources[name] for name in context.non_defaults() if name in sources})


def _converted(name: str, value: Any, source: str) -> Any:
    try:
        return coerce(name, value)
    except ConfigError as exc:
        label = f"SCALE_{name.upper()}" if source == ENVIRONMENT else f"{name} ({source})"
        raise ConfigError(f"{label}: {str(exc).split(': ', 1)[-1]}") from None


__all__ = ["ConfigError", "Resolved", "api_key", "config_path", "read_config", "resolve_layers"]
