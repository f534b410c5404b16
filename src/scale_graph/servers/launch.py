"""Server profiles: the exact vLLM command lines behind ``scale servers up``.

Profiles
--------
``local`` (default)
    One CPU vLLM server for the tiny SmolLM2-135M model converted by
    :func:`scale_graph.servers.local_model.prepare_local_model`. The one model is served under two
    names, ``scale-system1`` and ``scale-system2``; the mode is switched per request with
    ``chat_template_kwargs.enable_thinking`` (a Qwen3-style template + ``--reasoning-parser qwen3``).
``qwen3``
    One GPU vLLM server for a Qwen3 hybrid-thinking model (default ``Qwen/Qwen3-32B``) serving both
    systems under the two names, as in the paper.
``paired``
    Two GPU vLLM servers: System 2 = a reasoning-only model (default ``Qwen/QwQ-32B``, reasoning
    parser ``deepseek_r1``) on ``port``; System 1 = a Qwen3 model (default ``Qwen/Qwen3-32B``)
    on ``port + 1`` with thinking off by default. Assumption: the two servers run on disjoint GPU
    sets. By default System 2 gets GPUs ``0..tp2-1`` and System 1 the next ``tp1`` GPUs, through
    ``CUDA_VISIBLE_DEVICES`` (override with ``system2_gpus`` / ``system1_gpus``). To put both on
    one GPU set instead, give both the same devices and memory fractions that add up to < 1.
``external``
    No servers: the user gives the URLs (and model names) of running OpenAI-compatible servers.

``--replicas N`` (every profile but ``external``) starts N copies of each server behind one
``vllm-router`` on the server's port (:mod:`scale_graph.servers.router`).

The command line of each server is written by :func:`scale_graph.servers.vllm.vllm_argv`, the
router's by :func:`scale_graph.servers.router.router_argv`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from scale_graph.servers.local_model import chat_template_path, packaged_template_path
from scale_graph.servers.router import (
    DEFAULT_ROUTER_POLICY,
    ROUTER_POLICIES,
    last_port,
    replicated,
)
from scale_graph.servers.vllm import (
    DEFAULT_HOST,
    Gpu,
    ServerSpec,
    VllmServer,
    server_spec,
)

PROFILES: tuple[str, ...] = ("local", "qwen3", "paired", "external")

SYSTEM1_NAME = "scale-system1"
SYSTEM2_NAME = "scale-system2"
# Which served name each system is reached under, in the order the systems are listed.
SYSTEMS: tuple[tuple[str, str], ...] = (("system1", SYSTEM1_NAME), ("system2", SYSTEM2_NAME))
BOTH_NAMES = (SYSTEM1_NAME, SYSTEM2_NAME)  # one server answering for both systems
DEFAULT_PORT = 8100

DEFAULT_QWEN3_MODEL = "Qwen/Qwen3-32B"
DEFAULT_REASONING_MODEL = "Qwen/QwQ-32B"
DEFAULT_GPU_MAX_MODEL_LEN = 40960  # Qwen3-32B and QwQ-32B: max_position_embeddings 40960
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90

# SmolLM2-135M: max_position_embeddings 8192. With VLLM_CPU_KVCACHE_SPACE=1 (1 GiB) and float32
# the KV cache holds 23,296 tokens, i.e. 2.8 full-length sequences.
LOCAL_MAX_MODEL_LEN = 8192
# float32: on this AVX2-only CPU (no AVX-512 BF16) bfloat16 measured slower (15 vs 18 tok/s for
# one request, 22 vs 51 tok/s aggregate for 4 concurrent requests).
LOCAL_DTYPE = "float32"
LOCAL_KVCACHE_SPACE_GIB = 1

# Recommended run settings for the tiny local model (read by the workflow through
# endpoints.json "run_defaults"; the keys are fields of scale_graph.Context): small budgets so
# that a System 2 call that never closes its thinking (the tiny model never does) costs
# seconds, not minutes (~18 tokens/s for one request on 2 cores), and short carried context
# because prefill runs at only ~100 tokens/s and a prompt is prefilled in one step.
LOCAL_RUN_DEFAULTS: dict = {
    "system1_max_tokens": 192,
    "system2_max_tokens": 192,
    "candidates": 2,
    "planner_max_tokens": 256,
    "force_answer_max_tokens": 128,
}


class LaunchError(ValueError):
    """Invalid profile options (message is one line, meant for the user)."""


@dataclass
class ProfileOptions:
    """All knobs of the profiles. ``None`` means the profile's default."""

    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    # System 2 model (local: converted folder; qwen3: the one model; paired: reasoning model).
    model: str | None = None
    # paired: System 1 model (default Qwen/Qwen3-32B); external: System 1 model name.
    system1_model: str | None = None
    tensor_parallel_size: int = 1
    system1_tensor_parallel_size: int | None = None  # paired; default: tensor_parallel_size
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    system1_gpu_memory_utilization: float | None = None  # paired; default: the same
    max_model_len: int | None = None
    system1_max_model_len: int | None = None  # paired; default: max_model_len
    dtype: str | None = None  # local default float32; GPU default: vLLM's "auto"
    system2_gpus: str | None = None  # paired: CUDA_VISIBLE_DEVICES of the System 2 server
    system1_gpus: str | None = None  # paired: CUDA_VISIBLE_DEVICES of the System 1 server
    extra_args: tuple[str, ...] = ()  # appended to every server's argv
    system1_extra_args: tuple[str, ...] = ()  # paired: appended to the System 1 server only
    python: str = field(default_factory=lambda: sys.executable)
    # external profile
    system1_base_url: str | None = None
    system2_base_url: str | None = None
    # local profile: the converted model folder (set by the manager after prepare_local_model)
    local_model_dir: str | None = None
    replicas: int = 1  # > 1: that many copies of each server behind vllm-router
    router_policy: str = DEFAULT_ROUTER_POLICY


def _check_common(options: ProfileOptions) -> None:
    if not (1 <= options.port <= 65535):
        raise LaunchError(f"port must be between 1 and 65535, got {options.port}")
    for label, value in (
        ("--gpu-memory-utilization", options.gpu_memory_utilization),
        ("System 1 GPU memory utilization", options.system1_gpu_memory_utilization),
    ):
        if value is not None and not (0.0 < value <= 1.0):
            raise LaunchError(f"{label} must be in (0, 1], got {value}")
    for label, value in (
        ("--tensor-parallel-size", options.tensor_parallel_size),
        ("System 1 tensor parallel size", options.system1_tensor_parallel_size),
        ("--max-model-len", options.max_model_len),
        ("System 1 max model len", options.system1_max_model_len),
    ):
        if value is not None and value < 1:
            raise LaunchError(f"{label} must be a positive integer, got {value}")
    if options.replicas < 1:
        raise LaunchError(f"--replicas must be a positive integer, got {options.replicas}")
    if options.router_policy not in ROUTER_POLICIES:
        raise LaunchError(
            f"unknown router policy {options.router_policy!r}; choose one of: {', '.join(ROUTER_POLICIES)}"
        )


def _specs(options: ProfileOptions, servers: list[VllmServer]) -> list[ServerSpec]:
    """The processes of a profile's servers: each alone, or its replicas behind a router."""
    if options.replicas == 1:
        return [server_spec(options.python, options.host, server) for server in servers]
    highest = last_port(servers, options.replicas)
    if highest > 65535:
        raise LaunchError(f"{options.replicas} replicas need ports up to {highest}; choose a lower --port")
    return replicated(options.python, options.host, servers, options.replicas, options.router_policy)


def _local_template(options: ProfileOptions, model_dir: str) -> str:
    template = chat_template_path(Path(model_dir))
    if options.model and not template.is_file():
        # a model folder of the user's own: use the packaged Qwen3-style template
        return str(packaged_template_path())
    return str(template)


def local_servers(options: ProfileOptions) -> list[ServerSpec]:
    """One CPU server; ``options.local_model_dir`` must point at the converted model folder
    (the manager fills it in from :func:`prepare_local_model`)."""
    _check_common(options)
    model_dir = options.model or options.local_model_dir
    if not model_dir:
        raise LaunchError("the local profile needs the converted model folder (local_model_dir)")
    server = VllmServer(
        name="local",
        model=str(model_dir),
        port=options.port,
        served_names=BOTH_NAMES,
        reasoning_parser="qwen3",
        max_model_len=options.max_model_len or LOCAL_MAX_MODEL_LEN,
        dtype=options.dtype or LOCAL_DTYPE,
        chat_template=_local_template(options, str(model_dir)),
        enforce_eager=True,
        chunked_prefill=False,
        # VLLM_CPU_OMP_THREADS_BIND is left to vLLM's "auto": on 2 cores it binds the model
        # worker's OpenMP threads to one core and keeps the other for the API server and the
        # engine loop. Binding both cores ("0-1") measured 2-3x slower.
        env={
            "VLLM_CPU_KVCACHE_SPACE": str(LOCAL_KVCACHE_SPACE_GIB),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        },
        extra_args=options.extra_args,
    )
    return _specs(options, [server])


def qwen3_servers(options: ProfileOptions) -> list[ServerSpec]:
    """One GPU server for a Qwen3 hybrid-thinking model serving both systems."""
    _check_common(options)
    server = VllmServer(
        name="qwen3",
        model=options.model or DEFAULT_QWEN3_MODEL,
        port=options.port,
        served_names=BOTH_NAMES,
        reasoning_parser="qwen3",
        max_model_len=options.max_model_len or DEFAULT_GPU_MAX_MODEL_LEN,
        dtype=options.dtype,
        gpu=Gpu(options.gpu_memory_utilization, options.tensor_parallel_size),
        extra_args=options.extra_args,
    )
    return _specs(options, [server])


def _gpu_range(start: int, count: int) -> str:
    return ",".join(str(i) for i in range(start, start + count))


def paired_servers(options: ProfileOptions) -> list[ServerSpec]:
    """System 2 = reasoning-only model on ``port``; System 1 = Qwen3 (thinking off by default)
    on ``port + 1``; disjoint GPU sets through ``CUDA_VISIBLE_DEVICES``."""
    _check_common(options)
    if options.port + 1 > 65535:
        raise LaunchError(f"the paired profile needs ports {options.port} and {options.port + 1}")
    if options.replicas > 1 and (options.system1_gpus or options.system2_gpus):
        # one GPU set per server does not say how to split it among replicas
        raise LaunchError(
            "--system1-gpus/--system2-gpus name one server's GPUs; with --replicas each replica "
            "takes the next tensor-parallel-size GPUs in order (System 2's replicas first)"
        )
    tp2 = options.tensor_parallel_size
    tp1 = options.system1_tensor_parallel_size or tp2
    mem1 = options.system1_gpu_memory_utilization
    len2 = options.max_model_len or DEFAULT_GPU_MAX_MODEL_LEN
    system2 = VllmServer(
        name="system2",
        model=options.model or DEFAULT_REASONING_MODEL,
        port=options.port,
        served_names=(SYSTEM2_NAME,),
        reasoning_parser="deepseek_r1",
        max_model_len=len2,
        dtype=options.dtype,
        gpu=Gpu(options.gpu_memory_utilization, tp2),
        env={"CUDA_VISIBLE_DEVICES": options.system2_gpus or _gpu_range(0, tp2)},
        extra_args=options.extra_args,
    )
    system1 = VllmServer(
        name="system1",
        model=options.system1_model or DEFAULT_QWEN3_MODEL,
        port=options.port + 1,
        served_names=(SYSTEM1_NAME,),
        reasoning_parser="qwen3",
        chat_template_kwargs={"enable_thinking": False},
        max_model_len=options.system1_max_model_len or len2,
        dtype=options.dtype,
        gpu=Gpu(options.gpu_memory_utilization if mem1 is None else mem1, tp1),
        env={"CUDA_VISIBLE_DEVICES": options.system1_gpus or _gpu_range(tp2, tp1)},
        extra_args=options.extra_args + options.system1_extra_args,
    )
    return _specs(options, [system2, system1])


def servers_for_profile(profile: str, options: ProfileOptions | None = None) -> list[ServerSpec]:
    """The servers a profile starts (``external``: none)."""
    options = options or ProfileOptions()
    if profile == "local":
        return local_servers(options)
    if profile == "qwen3":
        return qwen3_servers(options)
    if profile == "paired":
        return paired_servers(options)
    if profile == "external":
        return []
    raise LaunchError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")


def run_defaults_for_profile(profile: str) -> dict:
    """Recommended run settings recorded in endpoints.json; empty = the workflow's defaults."""
    if profile == "local":
        return dict(LOCAL_RUN_DEFAULTS)
    return {}


def endpoints_for_servers(specs: list[ServerSpec]) -> dict:
    """``{"system1": {"base_url", "model"}, "system2": {...}}`` for the servers of a profile."""
    out: dict = {}
    for system, name in SYSTEMS:
        for spec in specs:
            if spec.role != "replica" and name in spec.served_names:
                out[system] = {"base_url": spec.base_url, "model": name}
                break
        else:
            raise LaunchError(f"no server serves {name}")
    return out


def external_endpoints(options: ProfileOptions) -> dict:
    """Endpoints of the ``external`` profile from the user's URLs and model names."""
    if options.replicas != 1:
        # a router of one's own is just another OpenAI-compatible URL
        raise LaunchError("the external profile starts no servers to replicate; give your router's URL as --system2-url")
    url2 = options.system2_base_url or options.system1_base_url
    url1 = options.system1_base_url or options.system2_base_url
    if not url2:
        raise LaunchError(
            "the external profile needs --system2-url (and --system1-url if System 1 is elsewhere)"
        )
    model2 = options.model or SYSTEM2_NAME
    model1 = options.system1_model or options.model or SYSTEM1_NAME
    # checked here because nothing else looks at these URLs before a run sends requests to them
    flag1 = "--system1-url" if options.system1_base_url else "--system2-url"
    return {
        "system1": {"base_url": _http_url(flag1, url1), "model": model1},
        "system2": {"base_url": _http_url("--system2-url", url2), "model": model2},
    }


def _http_url(flag: str, url: str) -> str:
    """``url`` without its trailing slash; LaunchError unless it is an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        valid = False
    if not valid:
        raise LaunchError(f"{flag} must be an http(s) URL such as http://host:8000/v1, got {url!r}")
    return url.rstrip("/")


__all__ = [
    "DEFAULT_PORT",
    "LOCAL_RUN_DEFAULTS",
    "PROFILES",
    "SYSTEM1_NAME",
    "SYSTEM2_NAME",
    "SYSTEMS",
    "LaunchError",
    "ProfileOptions",
    "ServerSpec",
    "endpoints_for_servers",
    "external_endpoints",
    "local_servers",
    "paired_servers",
    "qwen3_servers",
    "run_defaults_for_profile",
    "servers_for_profile",
]
