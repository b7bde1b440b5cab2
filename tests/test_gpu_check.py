"""``benchmarks/gpu_check.sh``: its shell parses, every command line it runs is accepted by the CLI
(``--check``), and without CUDA it stops with one line before touching anything. The run itself
needs a GPU and the CIFAR-10 tarball (see benchmarks/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(600)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PY": sys.executable, "WORK": str(work), "TARBALL": str(work / "none.tar.gz")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=500)


def test_the_script_parses_and_its_commands_are_accepted(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    proc = _run("--check", work=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[2] for ln in lines] == ["train", "search", "finetune"]
    assert all("--device cuda" in ln for ln in lines)
    assert "--model resnet56" in lines[0] and "--budget macs=50%" in lines[1]
    assert not (tmp_path / "work").exists()  # the check writes nothing


def test_bad_argument_is_refused(tmp_path: Path) -> None:
    proc = _run("--fast", work=tmp_path / "work")
    assert proc.returncode == 2 and "'--fast'" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_stops_before_anything_is_written(tmp_path: Path) -> None:
    proc = _run(work=tmp_path / "work")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU"]
    assert not (tmp_path / "work").exists()
