"""Where settings come from besides the command line: environment, config file, running servers.

The config file (``SCALE_CONFIG``, else ``./scale.toml`` when present) looks like::

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
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message is one line for the user."""


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


def read_config() -> dict[str, Any]:
    """The parsed config file ({} when there is none)."""
    path = config_path()
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is malformed: {exc}") from None
    for section in ("system1", "system2", "run"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
    return data


def running_servers() -> dict[str, Any] | None:
    """Endpoints recorded by ``scale servers up`` if its processes are alive."""
    try:
        from scale_graph.servers.manager import running_endpoints
    except ImportError:  # pragma: no cover - servers module is part of the package
        return None
    try:
        return running_endpoints()
    except (OSError, ValueError):
        return None


def file_settings() -> dict[str, Any]:
    """Run parameters from running servers (lowest) and the config file, flattened to field names."""
    merged: dict[str, Any] = {}
    servers = running_servers()
    if servers:
        merged.update(servers.get("run_defaults") or {})
        for system in ("system1", "system2"):
            for key in ("base_url", "model"):
                if servers.get(system, {}).get(key):
                    merged[f"{system}_{key}"] = servers[system][key]
    config = read_config()
    for system in ("system1", "system2"):
        for key in ("base_url", "model"):
            if key in config.get(system, {}):
                merged[f"{system}_{key}"] = config[system][key]
    merged.update(config.get("run", {}))
    return merged


def api_key(system: int) -> str | None:
    """The API key of a system: ``SCALE_SYSTEM{n}_API_KEY``, else the config file's key entry."""
    env = os.environ.get(f"SCALE_SYSTEM{system}_API_KEY")
    if env:
        return env
    section = read_config().get(f"system{system}", {})
    if section.get("api_key_env"):
        return os.environ.get(section["api_key_env"]) or None
    return section.get("api_key") or None
