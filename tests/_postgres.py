"""A private PostgreSQL server for tests: ``initdb`` in a temporary directory, ``pg_ctl start`` on a
free loopback port (TCP on 127.0.0.1 only, its socket in that directory), password login over TCP,
stopped and deleted afterwards.

The server binaries come from ``PATH`` or the distribution's ``/usr/lib/postgresql/<version>/bin``
(``make test`` installs the ``postgresql`` package on a fresh Debian/Ubuntu machine). When none are
found the tests using it *fail*, saying so: the shared-storage tests must not pass by being skipped.
``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user (or
``nobody``) with its directory handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "autocompress"
#: Where the distribution's packages put the server binaries (Debian/Ubuntu ``postgresql``).
DISTRO_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PASSWORD = "s3cret-pw"  # a real one: TCP logins are checked (scram-sha-256)


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then the newest Debian one)."""
    on_path = [shutil.which(n) for n in ("pg_ctl", "initdb")]
    if all(on_path):
        return Path(os.path.realpath(on_path[0] or "")).parent
    found = sorted(glob.glob(f"{DISTRO_BIN_GLOB}/pg_ctl"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    for pg_ctl in reversed(found):
        if Path(pg_ctl).with_name("initdb").is_file():
            return Path(pg_ctl).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs initdb and the server: this user, or (as root) ``postgres`` / ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root and no 'postgres' or 'nobody' user exists to run PostgreSQL "
                "(initdb refuses to run as root)")


@dataclass
class PostgresServer:
    """A running server: ``url(database)`` gives a connection URL for the test user."""

    bin_dir: Path
    root: Path
    port: int
    run_as: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", password: str | None = PASSWORD) -> str:
        cred = f"{USER}:{password}" if password is not None else USER
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = list(args)
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as.pw_name, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, env={**os.environ, "LC_ALL": "C"})

    def createdb(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        proc = self._cmd(str(self.bin_dir / "createdb"), "-h", str(self.root), "-p", str(self.port),
                         "-U", USER, name) if (self.bin_dir / "createdb").is_file() else None
        if proc is None or proc.returncode != 0:  # no createdb: the driver does it
            import psycopg

            with psycopg.connect(self.url(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            for p in (self.root, pwfile):
                os.chown(p, self.run_as.pw_uid, self.run_as.pw_gid)
        init = self._cmd(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER,
                         f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                         "--encoding=UTF8", "--no-sync", timeout=120)
        assert init.returncode == 0, f"initdb failed: {init.stderr[-2000:]}"
        for _attempt in range(3):  # a free port can be taken between the check and the start
            self.port = _free_port()
            opts = (f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
            started = self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                                str(self.root / "server.log"), "-w", "-t", "60", "-o", opts, "start",
                                timeout=90)
            if started.returncode == 0:
                return
        log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
        pytest.fail(f"pg_ctl start failed: {started.stderr[-1000:]} {log[-2000:]}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop", timeout=60)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private server; stop it and delete its files afterwards (also on failure)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
                    f"{DISTRO_BIN_GLOB}; install them (`apt-get install postgresql`, which "
                    "`make test` does on a fresh Debian/Ubuntu machine as root)")
    # Not under pytest's tmp_path: as root that is private to root, and the server user must
    # own its directory; a short path also keeps the socket name under its length limit.
    root = Path(tempfile.mkdtemp(prefix="ac-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root, port=0, run_as=_server_user())
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            time.sleep(0.1)
            shutil.rmtree(root, ignore_errors=True)
