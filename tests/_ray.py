"""Ray nodes for tests: ``ray start --block`` lines run in their own process groups on free ports
and private temp directories, so that exactly these nodes are stopped afterwards and parallel test
runs do not collide (the README's cluster lines and the Ray backend's head fixture use it)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayNodes:
    """The README's ``ray start`` lines (a head, then worker nodes joining it), each run with
    ``--block`` in its own process group so that exactly these nodes can be stopped, on free ports
    and in private temp directories (parallel runs do not collide; nodes start together)."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.temp_dirs: list[Path] = []
        self.port: int | None = None

    def start(self, words: list[str], readme_port: str, env: dict[str, str], log: Path) -> str:
        """Start the node of a ``ray start`` line (the head first); returns the head's address.
        A worker node is waited for by ``ready``."""
        head = "--head" in words
        if head:
            self.port = free_port()
        assert self.port is not None, "a worker node before the head"
        temp_dir = Path(f"/tmp/ac-ray-{os.getpid()}-{self.port}" + ("" if head else f"-{len(self.procs)}"))
        self.temp_dirs.append(temp_dir)  # short: Ray puts sockets in it
        args = [re.sub(rf"^(--port=|--address=.*:){readme_port}$", rf"\g<1>{self.port}", a) for a in words[1:]]
        args += ["--block", f"--temp-dir={temp_dir}", "--object-store-memory=200000000",
                 f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
        if head:
            args += [f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
        else:
            args += [f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        ray_bin = str(Path(sys.executable).with_name("ray"))
        with open(log, "w") as fh:
            proc = subprocess.Popen([ray_bin, *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((proc, log))
        if head:
            self.ready()
        host = next((w.split("=", 1)[1] for w in words if w.startswith("--node-ip-address=")), "127.0.0.1")
        return f"{host}:{self.port}"

    def ready(self, timeout_s: float = 120) -> None:
        """Wait until every node started so far is up."""
        deadline = time.time() + timeout_s
        for proc, log in self.procs:
            while "Ray runtime started" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, f"ray start did not come up in {timeout_s:.0f} s"
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node started (worker nodes first), then delete their temp directories."""
        procs, self.procs = self.procs, []
        for proc, _log in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for proc, _log in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.time()))
        time.sleep(1)
        for proc, _log in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still around
            proc.wait(timeout=30)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        self.temp_dirs = []
