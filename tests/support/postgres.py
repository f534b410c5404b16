"""A real, throwaway PostgreSQL server for the tests (never a mock).

``postgres_server`` (session) makes a cluster with ``initdb``/``pg_ctl`` in a temporary folder
(as the ``postgres`` user when the tests run as root: ``initdb`` refuses root), listening on
127.0.0.1 and a free port, with a password (the tests check it is never printed). ``pg_url``
gives each test its own fresh database on it. Without the server binaries the tests skip with
the reason, unless ``SCALE_REQUIRE_POSTGRES`` is set (CI): then they fail.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.ports import free_port

PASSWORD = "pg-Secret-4711"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None




@dataclass
class PostgresServer:
    folder: Path
    port: int
    bindir: Path
    as_user: list[str]
    names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self.ctl("start", "-w", "-l", str(self.folder / "log"), "-o", options)

    def stop(self) -> None:
        self.ctl("stop", "-m", "immediate", "-w")

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        name = f"scale_test_{next(self.names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)


def _unavailable(reason: str) -> None:
    if os.environ.get("SCALE_REQUIRE_POSTGRES"):
        pytest.fail(f"SCALE_REQUIRE_POSTGRES is set but {reason}")
    pytest.skip(f"no PostgreSQL server: {reason} (install Debian's postgresql, or run scripts/test.sh)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found (/usr/lib/postgresql/*/bin or PATH)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="scale-pg-"))
    try:
        if as_user:
            shutil.chown(folder, "postgres", "postgres")
        (folder / "pw").write_text(PASSWORD + "\n")
        if as_user:
            shutil.chown(folder / "pw", "postgres", "postgres")
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                        "--pwfile", str(folder / "pw"), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        server = PostgresServer(folder, free_port(), bindir, as_user)
        server.start()
    except (subprocess.CalledProcessError, OSError, KeyError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        _unavailable(f"could not start a throwaway cluster: {exc} {detail.decode(errors='replace')[-300:]}")
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh database of its own for one test."""
    return postgres_server.new_database()
