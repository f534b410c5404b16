"""vLLM replicas behind ``vllm-router`` (PyPI ``vllm-router``, a Rust load balancer).

``scale servers up --replicas N`` turns each vLLM server of a profile into N replicas (each on its
own port and, on GPU profiles, its own GPU set) and puts one router on the server's own port, so
the recorded endpoints — what ``scale solve`` uses — are the router's and nothing else changes for
the client.

Routing: the default policy ``sticky_least_loaded`` gives a new session to the replica with the
fewest active sessions and keeps every later request of that session on the same replica (its
prefix cache). The session is read from the ``X-Session-ID`` header, which
:mod:`scale_graph.servers.chat` sets to the run id on every request, so one run's calls share a
replica while runs spread over all of them. ``consistent_hash`` keys on the same header (a fixed
function of the run id); ``cache_aware`` matches prompt prefixes instead.

:func:`router_argv` is the one place where router flags are written; the replicas' command lines
still come from :func:`scale_graph.servers.vllm.vllm_argv`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scale_graph.servers.vllm import ServerSpec, VllmServer, server_spec

ROUTER_MODULE = "vllm_router.launch_router"
# vllm-router 0.1.17 policies. The first two key on the X-Session-ID header (session affinity).
ROUTER_POLICIES: tuple[str, ...] = (
    "sticky_least_loaded",
    "consistent_hash",
    "cache_aware",
    "power_of_two",
    "round_robin",
    "random",
)
DEFAULT_ROUTER_POLICY = "sticky_least_loaded"
# The router refuses to serve until every worker answers /health; a GPU replica loading a 32B
# model can take many minutes, and `scale servers up --timeout` already bounds the wait.
ROUTER_WORKER_STARTUP_SECS = 3600
# Its default re-checks workers only every 30 s during start-up, which would add up to 30 s to
# every `up`.
ROUTER_STARTUP_CHECK_SECS = 2


@dataclass(frozen=True)
class Router:
    """Everything the router's command line says."""

    name: str
    port: int
    metrics_port: int
    workers: tuple[str, ...]  # worker URLs without /v1, e.g. http://127.0.0.1:8101
    served_names: tuple[str, ...]
    policy: str = DEFAULT_ROUTER_POLICY


def router_argv(python: str, host: str, router: Router) -> tuple[str, ...]:
    """The router's command line: the one place where vllm-router flags are written."""
    return (
        python, "-m", ROUTER_MODULE,
        "--host", host, "--port", str(router.port),
        "--worker-urls", *router.workers,
        "--policy", router.policy,
        "--prometheus-host", host, "--prometheus-port", str(router.metrics_port),
        "--worker-startup-timeout-secs", str(ROUTER_WORKER_STARTUP_SECS),
        "--worker-startup-check-interval", str(ROUTER_STARTUP_CHECK_SECS),
    )  # fmt: skip


def router_spec(python: str, host: str, router: Router) -> ServerSpec:
    """The router process in front of its workers."""
    hosts = sorted({url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]") for url in router.workers})
    # The router's HTTP client honours HTTP(S)_PROXY; its workers are reached directly.
    no_proxy = ",".join(dict.fromkeys([*hosts, "127.0.0.1", "localhost", "::1"]))
    return ServerSpec(
        name=router.name,
        argv=router_argv(python, host, router),
        env={"NO_PROXY": no_proxy, "no_proxy": no_proxy},
        port=router.port,
        served_names=router.served_names,
        host=host,
        role="router",
        other_ports=(router.metrics_port,),
    )


def _gpu_range(start: int, count: int) -> str:
    return ",".join(str(i) for i in range(start, start + count))


def last_port(servers: list[VllmServer], replicas: int) -> int:
    """The highest port :func:`replicated` uses."""
    return max(server.port for server in servers) + len(servers) * (replicas + 1)


def replicated(python: str, host: str, servers: list[VllmServer], replicas: int, policy: str) -> list[ServerSpec]:
    """``replicas`` copies of every server, then one router per server on that server's port.

    Replica ports follow the highest server port; then come the routers' metrics ports. On GPU
    servers each replica gets the next ``tensor_parallel_size`` GPUs, in server order (the
    ``paired`` profile: System 2's replicas first, then System 1's). The caller checks the
    options (:func:`last_port`).
    """
    next_port = max(server.port for server in servers) + 1
    next_gpu = 0
    replica_specs: list[ServerSpec] = []
    routers: list[Router] = []
    for server in servers:
        workers = []
        for index in range(1, replicas + 1):
            env = dict(server.env)
            if server.gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = _gpu_range(next_gpu, server.gpu.tensor_parallel_size)
                next_gpu += server.gpu.tensor_parallel_size
            replica = replace(server, name=f"{server.name}-{index}", port=next_port, env=env)
            spec = replace(server_spec(python, host, replica), role="replica")
            replica_specs.append(spec)
            workers.append(spec.base_url.removesuffix("/v1"))
            next_port += 1
        name = "router" if len(servers) == 1 else f"router-{server.name}"
        routers.append(Router(name, server.port, 0, tuple(workers), server.served_names, policy))
    # replicas first: `up` waits for the servers in this order, and a router answers only once
    # its workers do
    specs = list(replica_specs)
    for router in routers:
        specs.append(router_spec(python, host, replace(router, metrics_port=next_port)))
        next_port += 1
    return specs


__all__ = [
    "DEFAULT_ROUTER_POLICY",
    "ROUTER_MODULE",
    "ROUTER_POLICIES",
    "Router",
    "last_port",
    "replicated",
    "router_argv",
    "router_spec",
]
