"""Network checks of a server: does it list its models at ``GET /v1/models``, is a port free."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping

import httpx

Probe = Callable[[str], list[str] | None]  # a replacement for probe_models (tests)


def _is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def model_entries(base_url: str, timeout: float = 3.0, api_key: str | None = None) -> list[dict] | None:
    """The entries of ``GET {base_url}/models`` (vLLM's carry ``max_model_len``), or None if it
    does not answer."""
    url = base_url.rstrip("/") + "/models"
    try:
        # a proxy from the environment must not stand between us and a server on this machine
        with httpx.Client(timeout=timeout, trust_env=not _is_loopback(url)) as client:
            response = client.get(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else None)
        if response.status_code != 200:
            return None
        return [item for item in response.json().get("data") or [] if isinstance(item, dict)]
    except (httpx.HTTPError, ValueError, AttributeError, OSError):
        return None


def probe_models(base_url: str, timeout: float = 3.0) -> list[str] | None:
    """Model ids listed by ``GET {base_url}/models``, or None if it does not answer."""
    entries = model_entries(base_url, timeout)
    return None if entries is None else [str(item.get("id")) for item in entries]


def serves(base_url: str, models: Iterable[str | None], timeout: float = 3.0, probe: Probe | None = None) -> bool:
    """True when the server at ``base_url`` answers and lists every one of ``models``
    (``probe`` replaces :func:`probe_models`, e.g. in tests)."""
    listed = probe(base_url) if probe is not None else probe_models(base_url, timeout=timeout)
    return listed is not None and all(model in listed for model in models)


def endpoints_answer(endpoints: Mapping, patience: float = 0.0) -> bool:
    """Both endpoints list their model; retried for ``patience`` seconds (a busy CPU server
    can be slow to answer)."""
    entries = [endpoints.get(system) or {} for system in ("system1", "system2")]
    deadline = time.monotonic() + patience
    while True:
        ok = all(serves(entry.get("base_url", ""), [entry.get("model")], timeout=5.0) for entry in entries)
        if ok or time.monotonic() >= deadline:
            return ok
        time.sleep(1.0)


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (we cannot bind it)."""
    bind_host = "127.0.0.1" if host in ("", "localhost") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return True
    return False


__all__ = ["endpoints_answer", "model_entries", "port_in_use", "probe_models", "serves"]
