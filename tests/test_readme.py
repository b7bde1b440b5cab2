"""The README's promises: its set-up commands exist as written, and every command it shows runs.

The walk-through's ``autocompress`` commands are executed in order in a scratch directory (with the
repository's ``configs/``); the remaining ``autocompress`` lines (your-own-model and Ray-cluster
examples that name files or clusters a test machine lacks) are parsed by the real command-line parser,
so a renamed or removed option fails here. ``make demo`` / ``make test`` are checked with ``make -n``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "autocompress.cli"]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("autocompress "):
            out.append(line)
    return out


def _section(title: str) -> str:
    start = README.index(title)
    nxt = README.find("\n## ", start + len(title))
    return README[start: nxt if nxt != -1 else len(README)]


WALKTHROUGH = [c for b in _bash_blocks(_section("## Walk-through")) for c in _commands(b)]
ALL = [c for b in _bash_blocks(README) for c in _commands(b)]


def test_readme_opens_with_the_two_setup_commands() -> None:
    first = _bash_blocks(README)[0].strip().splitlines()
    assert [ln.split("#")[0].strip() for ln in first] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    demo = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True)
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True)
    assert demo.returncode == 0 and "autocompress search" in demo.stdout
    assert test.returncode == 0 and "pytest" in test.stdout


def test_every_readme_command_parses() -> None:
    from autocompress.cli import main

    assert len(ALL) >= 10
    for command in ALL:
        args = shlex.split(command)[1:]
        ctx = main.make_context("autocompress", list(args), resilient_parsing=False)
        sub = main.get_command(ctx, ctx.protected_args[0] if ctx.protected_args else args[0])
        assert sub is not None, command
        sub.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_walkthrough_runs_in_order(tmp_path: Path) -> None:
    assert WALKTHROUGH[0].startswith("autocompress search --config configs/quick.yaml")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "COLUMNS": "160"}
    for command in WALKTHROUGH:
        proc = subprocess.run(CLI + shlex.split(command)[1:], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    run = tmp_path / "runs" / "quick"
    assert (run / "pareto.png").is_file() and (run / "pareto.html").is_file()
    assert (run / "knee.onnx").is_file() and list((run / "finetune").glob("*.json"))
    assert (tmp_path / "runs" / "base-resnet20.pt").is_file()
