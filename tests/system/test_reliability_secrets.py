"""Secrets: an API key given through the environment or the config file never reaches an artefact.

Keys are planted through ``SCALE_SYSTEM{1,2}_API_KEY``, ``api_key`` in ``scale.toml`` and
``api_key_env`` in ``scale.toml``; the fake server requires them. Runs that succeed, a run killed
mid-way (its -wal left behind as SIGKILL leaves it) then resumed, and runs refused with a wrong
key (401, also with SCALE_DEBUG=1) are made with the real `scale` command, then every file under
the test's folder (databases, WAL, state folder, saved stdout/stderr of every command) is
searched for the key bytes. The config files themselves hold the key by design and are skipped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import CLI, scale_process
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.reliability import (
    KillingServer,
    assert_one_error_line,
    endpoint_env,
    last_json,
)

pytestmark = pytest.mark.timeout(600)

KEYS = {name: f"sk-planted-{name}-{os.urandom(8).hex()}"
        for name in ("env", "killed", "server", "wrong", "toml", "tomlenv", "echoed")}


def base_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SCALE_SYSTEM")}, **extra}


class Recorder:
    """Runs `scale` commands and saves each one's stdout/stderr under ``folder`` (artefacts too)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.numbers = itertools.count(1)  # thread-safe

    def __call__(self, *args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        result = scale_process(*args, env=env, cwd=cwd, timeout=300)
        stem = self.folder / f"{next(self.numbers):02d}-{args[0]}-{args[1] if len(args) > 1 else ''}".replace("/", "_")
        stem.with_suffix(".stdout").write_text(result.stdout)
        stem.with_suffix(".stderr").write_text(result.stderr)
        return result


def env_keys(tmp: Path, record: Recorder) -> None:
    with FakeOpenAIServer(api_key=KEYS["env"]) as server:
        env = endpoint_env(server.base_url, tmp / "env.db", candidates=2,
                           system1_api_key=KEYS["env"], system2_api_key=KEYS["env"])
        done = record("solve", "What is 1+1?", "--thread-id", "env", "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert last_json(done.stdout)["answer"] is not None
        for command in (["runs", "list"], ["runs", "show", "env", "--json"], ["runs", "show", "env"]):
            assert record(*command, env=env).returncode == 0
        assert server.stats()["requests"] == 8


def killed_then_resumed(tmp: Path, record: Recorder) -> bytes:
    """A run SIGKILLed mid-way; returns its -wal as the kill left it."""
    db = tmp / "killed.db"
    server = KillingServer(api_key=KEYS["killed"], latency=0.1)
    server.start()
    try:
        env = endpoint_env(server.base_url, db, candidates=2, system1_api_key=KEYS["killed"],
                           system2_api_key=KEYS["killed"])
        with open(tmp / "killed-solve.stdout", "wb") as out, open(tmp / "killed-solve.stderr", "wb") as err:
            proc = subprocess.Popen([*CLI, "solve", "What is 2+2?", "--thread-id", "killed"], env=env, stdout=out, stderr=err)
            server.arm(proc.pid, "solve#2", "arrival", 0.05)
            assert proc.wait(timeout=300) == -signal.SIGKILL
        wal = Path(f"{db}-wal")
        assert wal.exists() and wal.stat().st_size > 0
        left = wal.read_bytes()
        shutil.copy(wal, tmp / "killed.db-wal.as-left")
        resumed = record("runs", "resume", "killed", "--json", env=env)
        assert resumed.returncode == 0, resumed.stderr
        return left
    finally:
        server.close()


def wrong_key(tmp: Path, record: Recorder) -> None:
    with FakeOpenAIServer(api_key=KEYS["server"]) as server:
        db = tmp / "wrong.db"
        env = endpoint_env(server.base_url, db, candidates=2, max_retries=0,
                           system1_api_key=KEYS["wrong"], system2_api_key=KEYS["wrong"])
        failed = record("solve", "What is 3+3?", "--thread-id", "wrong", env=env)
        assert_one_error_line(failed, 1, "refused the API key (HTTP 401)")
        debug = record("solve", "What is 4+4?", "--thread-id", "debug", env={**env, "SCALE_DEBUG": "1"})
        assert debug.returncode != 0
        fixed = {**env, "SCALE_SYSTEM1_API_KEY": KEYS["server"], "SCALE_SYSTEM2_API_KEY": KEYS["server"]}
        resumed = record("runs", "resume", "wrong", "--json", env=fixed)
        assert resumed.returncode == 0, resumed.stderr
        assert [e["status"] for e in server.stats()["log"]].count(401) >= 2


def echoed_key(tmp: Path, record: Recorder) -> None:
    """An upstream 500 whose body echoes the request's ``Authorization`` header, as some proxies do."""
    with FakeOpenAIServer(api_key=KEYS["echoed"]) as server:
        env = endpoint_env(server.base_url, tmp / "echoed.db", candidates=2, max_retries=0,
                           system1_api_key=KEYS["echoed"], system2_api_key=KEYS["echoed"])
        server.inject("echo_auth_500", times=100, stage="solve")
        failed = record("solve", "What is 6+6?", "--thread-id", "echoed", env=env)
        # the mask itself is not checked here: the CLI prints errors as rich markup, which hides "[redacted]"
        assert_one_error_line(failed, 1, "HTTP 500 upstream failed; request headers were: Authorization: Bearer")
        debug = record("solve", "What is 7+7?", "--thread-id", "echoed-debug", env={**env, "SCALE_DEBUG": "1"})
        assert debug.returncode != 0
        assert record("runs", "show", "echoed", "--json", env=env).returncode == 0
        assert server.stats()["log"][-1]["status"] == 500


def toml_keys(tmp: Path, record: Recorder, *, via_env: bool) -> None:
    name = "tomlenv" if via_env else "toml"
    folder = tmp / name
    folder.mkdir()
    with FakeOpenAIServer(api_key=KEYS[name]) as server:
        key_line = 'api_key_env = "MY_SCALE_SECRET"' if via_env else f'api_key = "{KEYS[name]}"'
        (folder / "scale.toml").write_text(
            f'[system1]\nbase_url = "{server.base_url}"\nmodel = "scale-system1"\n{key_line}\n'
            f'[system2]\nbase_url = "{server.base_url}"\nmodel = "scale-system2"\n{key_line}\n'
            f'[run]\ncandidates = 2\n')
        env = base_env(SCALE_DB=str(folder / "runs.db"), **({"MY_SCALE_SECRET": KEYS[name]} if via_env else {}))
        done = record("solve", "What is 5+5?", "--thread-id", name, "--json", env=env, cwd=folder)
        assert done.returncode == 0, done.stderr
        inspect = ["runs", "list", "--json"] if via_env else ["runs", "show", name, "--json"]
        assert record(*inspect, env=env, cwd=folder).returncode == 0
        assert server.stats()["requests"] == 8  # the key from the file was sent


def test_keys_never_reach_databases_logs_or_output(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    record = Recorder(outputs)
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = [pool.submit(env_keys, tmp_path, record), pool.submit(killed_then_resumed, tmp_path, record),
                pool.submit(wrong_key, tmp_path, record), pool.submit(toml_keys, tmp_path, record, via_env=False),
                pool.submit(toml_keys, tmp_path, record, via_env=True), pool.submit(echoed_key, tmp_path, record)]
        results = [job.result() for job in jobs]
    wal_as_left = results[1]

    searched = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "scale.toml"]
    names = {p.name for p in searched}
    assert {"env.db", "killed.db", "wrong.db", "killed.db-wal.as-left"} <= names and len(names) > 20
    leaks = []
    for path in searched:
        data = path.read_bytes()
        for name, key in KEYS.items():
            for needle in (key, key[-16:]):  # the whole key, or its random tail (e.g. a masked key)
                if needle.encode() in data:
                    leaks.append(f"{name} key in {path.relative_to(tmp_path)}")
    for name, key in KEYS.items():
        if key.encode() in wal_as_left:
            leaks.append(f"{name} key in the WAL of a killed run")
    assert leaks == []
