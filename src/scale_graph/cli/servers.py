"""``scale servers up|status|down`` (also runnable as ``python -m scale_graph.cli.servers``)."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scale_graph.servers import launch, manager, state
from scale_graph.servers.launch import LaunchError, ProfileOptions
from scale_graph.servers.local_model import LocalModelError
from scale_graph.servers.router import DEFAULT_ROUTER_POLICY, ROUTER_POLICIES

RouterPolicy = Enum("RouterPolicy", {name: name for name in ROUTER_POLICIES}, type=str)  # type: ignore[misc]

app = typer.Typer(
    name="servers",
    help="Start, inspect and stop the vLLM servers behind System 1 and System 2.",
    no_args_is_help=True,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)


class Profile(str, Enum):
    local = "local"
    qwen3 = "qwen3"
    paired = "paired"
    external = "external"


def _fail(message: str, detail: str = "") -> NoReturn:
    first, _, rest = message.partition("\n")
    err_console.print(f"[red]error:[/red] {escape(first)}", style="red", soft_wrap=True)
    extra = detail or rest
    if extra:
        err_console.print(escape(extra), style="dim", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def export_lines(endpoints: dict) -> list[str]:
    """``export SCALE_SYSTEM1_BASE_URL=...`` lines for an endpoints dict."""
    lines = []
    for system, prefix in (("system1", "SCALE_SYSTEM1"), ("system2", "SCALE_SYSTEM2")):
        entry = endpoints.get(system) or {}
        lines.append(f"export {prefix}_BASE_URL={shlex.quote(str(entry.get('base_url', '')))}")
        lines.append(f"export {prefix}_MODEL={shlex.quote(str(entry.get('model', '')))}")
    return lines


StateDirOption = typer.Option(
    None,
    "--state-dir",
    help="Folder of servers.json / endpoints.json / logs "
    "(default: $SCALE_STATE_DIR or ~/.local/state/scale-graph).",
)


@app.command()
def up(
    profile: Profile = typer.Option(Profile.local, "--profile", help="Which servers to start."),
    port: int = typer.Option(launch.DEFAULT_PORT, "--port", help="Port (paired: System 1 on port+1)."),
    host: str = typer.Option(launch.DEFAULT_HOST, "--host", help="Interface the servers listen on."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="System 2 model (qwen3: the one model, default Qwen/Qwen3-32B; paired: the "
        "reasoning model, default Qwen/QwQ-32B; local: a model folder instead of SmolLM2; "
        "external: the model name).",
    ),
    system1_model: Optional[str] = typer.Option(
        None, "--system1-model", help="paired: System 1 model (default Qwen/Qwen3-32B); external: its name."
    ),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "-tp", min=1),
    system1_tensor_parallel_size: Optional[int] = typer.Option(
        None, "--system1-tensor-parallel-size", min=1, help="paired: System 1 server's TP size."
    ),
    gpu_memory_utilization: float = typer.Option(launch.DEFAULT_GPU_MEMORY_UTILIZATION, "--gpu-memory-utilization"),
    system1_gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--system1-gpu-memory-utilization", help="paired: System 1 server's memory fraction."
    ),
    max_model_len: Optional[int] = typer.Option(
        None, "--max-model-len", min=1, help="Context length (local 8192, GPU 40960)."
    ),
    system2_gpus: Optional[str] = typer.Option(None, "--system2-gpus", help="paired: CUDA_VISIBLE_DEVICES of System 2."),
    system1_gpus: Optional[str] = typer.Option(None, "--system1-gpus", help="paired: CUDA_VISIBLE_DEVICES of System 1."),
    system1_url: Optional[str] = typer.Option(None, "--system1-url", help="external: System 1 base URL (…/v1)."),
    system2_url: Optional[str] = typer.Option(None, "--system2-url", help="external: System 2 base URL (…/v1)."),
    extra_arg: list[str] = typer.Option(
        [], "--extra-arg", help="Extra vLLM argument, repeatable (e.g. --extra-arg=--seed=1)."
    ),
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        help="Start N copies of each server (each on its own port and, on GPUs, its own GPU set) "
        "behind vllm-router on --port; a run's calls stay on one replica.",
    ),
    router_policy: RouterPolicy = typer.Option(  # type: ignore[valid-type]
        DEFAULT_ROUTER_POLICY,
        "--router-policy",
        help="vllm-router policy with --replicas (sticky_least_loaded and consistent_hash keep a "
        "run on one replica through its X-Session-ID header).",
    ),
    timeout: float = typer.Option(manager.DEFAULT_TIMEOUT, "--timeout", help="Seconds to wait for /v1/models."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command lines only."),
    state_dir: Optional[Path] = StateDirOption,
) -> None:
    """Start the servers of a profile in the background and wait until they answer."""
    options = ProfileOptions(
        port=port,
        host=host,
        model=model,
        system1_model=system1_model,
        tensor_parallel_size=tensor_parallel_size,
        system1_tensor_parallel_size=system1_tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        system1_gpu_memory_utilization=system1_gpu_memory_utilization,
        max_model_len=max_model_len,
        system2_gpus=system2_gpus,
        system1_gpus=system1_gpus,
        extra_args=tuple(extra_arg),
        system1_base_url=system1_url,
        system2_base_url=system2_url,
        replicas=replicas,
        router_policy=RouterPolicy(router_policy).value,
    )
    name = profile.value
    try:
        if dry_run:
            _dry_run(name, options)
            return
        endpoints = manager.up(name, options, state_dir=state_dir, timeout=timeout, console=console)
    except manager.ServerError as exc:
        _fail(exc.summary, exc.log_tail and f"--- last lines of {exc.log_path} ---\n{exc.log_tail}")
    except (LaunchError, LocalModelError, OSError) as exc:
        _fail(str(exc))
    console.print(f"[green]Servers of the {name!r} profile are up.[/green]")
    for system in ("system1", "system2"):
        entry = endpoints.get(system) or {}
        console.print(f"  {system}: {entry.get('base_url')}  model {entry.get('model')}", highlight=False)
    console.print(
        "`scale solve` finds these endpoints automatically (from "
        f"{state.state_root(state_dir) / state.ENDPOINTS_FILE}); for other tools:",
        highlight=False,
        soft_wrap=True,
    )
    for line in export_lines(endpoints):
        typer.echo(line)


def _dry_run(profile: str, options: ProfileOptions) -> None:
    if profile == "external":
        endpoints = launch.external_endpoints(options)
        console.print("[bold]external[/bold]: no server is started.")
        for line in export_lines(endpoints):
            typer.echo(line)
        return
    if profile == "local" and not options.model:
        from scale_graph.servers.local_model import default_model_dir

        options = replace(options, local_model_dir=str(default_model_dir()))
    for spec in launch.servers_for_profile(profile, options):
        console.print(f"[bold]{spec.name}[/bold] → {spec.base_url} ({', '.join(spec.served_names)})")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env.items()))
        typer.echo(f"{env} {shlex.join(spec.argv)}")


@app.command()
def status(
    state_dir: Optional[Path] = StateDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show the recorded endpoints: pid, process alive, answering /v1/models."""
    try:
        info = manager.status(state_dir=state_dir)
        processes = manager.servers_status(state_dir=state_dir)
    except OSError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({**info, "servers": processes} if info else info, indent=2))
        return
    if not info:
        console.print(f"No servers recorded in {state.state_root(state_dir)}.", highlight=False)
        return
    profile = next(iter(info.values())).get("profile")
    table = Table(title=f"scale servers ({profile})")
    for column in ("system", "url", "model", "pid", "alive", "answering"):
        table.add_column(column)
    for system, entry in info.items():
        alive = entry.get("alive")
        table.add_row(
            system,
            str(entry.get("url")),
            str(entry.get("model")),
            "-" if entry.get("pid") is None else str(entry.get("pid")),
            _yes_no(alive),
            "[green]yes[/green]" if entry.get("answering") else "[red]no[/red]",
        )
    console.print(table)
    if len(processes) > 1 or any(row["role"] != "server" for row in processes):
        console.print(_processes_table(processes))


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("[green]yes[/green]" if value else "[red]no[/red]")


def _processes_table(rows: list[dict]) -> Table:
    """Every process behind the endpoints: each replica and its router."""
    table = Table(title="processes")
    for column in ("name", "role", "url", "pid", "alive", "answering"):
        table.add_column(column)
    for row in rows:
        pid = "-" if row.get("pid") is None else str(row["pid"])
        table.add_row(
            str(row["name"]), str(row["role"]), str(row["url"]), pid, _yes_no(row["alive"]), _yes_no(row["answering"])
        )
    return table


@app.command()
def down(
    state_dir: Optional[Path] = StateDirOption,
    grace: float = typer.Option(manager.DEFAULT_STOP_GRACE, "--grace", help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop the servers that `up` started and remove the state files."""
    try:
        stopped = manager.down(state_dir=state_dir, grace=grace)
    except (manager.ServerError, OSError) as exc:
        _fail(str(exc))
    if stopped:
        console.print(f"Stopped: {', '.join(stopped)}", highlight=False)
    else:
        console.print("No running servers.")


if __name__ == "__main__":
    app()
