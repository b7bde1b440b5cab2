"""The README's promises: its set-up commands exist as written, and every command it shows runs.

Every ``autocompress`` line of README.md is *executed* (each also goes through the real parser first,
so a renamed option fails fast), each section in a scratch directory holding the repository's
``configs/`` and the files the lines name:

* the walk-through, in order (search, report, show, finetune, export, train, listings);
* "Bring your own model and data": a user's model module on ``PYTHONPATH``, its checkpoint, MNIST in
  torchvision's on-disk layout (written from the bundled digits) and an ImageFolder tree, all made
  here;
* "Ray clusters", line by line: the local-Ray search, the ``export``, the README's own ``ray start``
  line (on a free loopback port, with private ports and temp dir so parallel runs do not collide),
  the ``--ray-address`` search against it, then the claims around it (a re-run resumes, a local run
  continues the same study, Tune's files land under ``OUT/ray``). ``ray stop`` is replaced by
  stopping exactly the head this test started: ``ray stop`` stops every Ray process of the user.
  The ``--storage postgresql://`` line runs against a private server (``tests/_postgres.py``).
* "Many machines", line by line: a head and two worker nodes, each ``ray start`` in its own process
  group (on loopback addresses, free ports, private temp dirs), the search against them on a private
  PostgreSQL server; trials ran on both worker nodes and the run holds a local run's candidates.

* "GPUs": every line asks for ``--device cuda``; without CUDA the first is refused in one line, and
  where CUDA is present the lines run in order.

``test_every_readme_command_is_executed`` fails when a README command sits in a section none of these
tests runs. ``make demo`` / ``make test`` are checked with ``make -n``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _ray import RayNodes

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "autocompress.cli"]
_ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _lines(block: str) -> list[str]:
    """A block's shell lines: continuations joined, comments and blank lines dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = "" if line.lstrip().startswith("#") else line.split("  #")[0].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value ... prog args`` -> ({VAR: value}, [prog, args...])."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and _ENV_WORD.match(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def _is_autocompress(line: str) -> bool:
    words = _split(line)[1]
    return bool(words) and words[0] == "autocompress"


def _commands(block: str) -> list[str]:
    return [ln for ln in _lines(block) if _is_autocompress(ln)]


def _section(title: str) -> str:
    start = README.index(title)
    nxt = README.find("\n## ", start + len(title))
    return README[start: nxt if nxt != -1 else len(README)]


def _section_commands(title: str) -> list[str]:
    return [c for b in _bash_blocks(_section(title)) for c in _commands(b)]


REAL_DATA_LINES = [ln for b in _bash_blocks(_section("### Real data")) for ln in _lines(b)]
REAL_DATA = [ln for ln in REAL_DATA_LINES if _is_autocompress(ln)]
WALKTHROUGH = [c for c in _section_commands("## Walk-through") if c not in REAL_DATA]
BRING_YOUR_OWN = _section_commands("## Bring your own model and data")
_RAY_SECTION = _section("## Ray clusters")
#: The single-node lines, and the one-machine cluster of "### Many machines" (run by its own test).
RAY_LINES = [ln for b in _bash_blocks(_RAY_SECTION.split("### Many machines")[0]) for ln in _lines(b)]
NODES_LINES = [ln for b in _bash_blocks(_RAY_SECTION.split("### Many machines")[1]) for ln in _lines(b)]
CLASSIC = _section_commands("## Classic ML models")
GPU = _section_commands("## GPUs")
ALL = [c for b in _bash_blocks(README) for c in _commands(b)]


def _parse(command: str) -> None:
    from autocompress.cli import main

    args = _split(command)[1][1:]
    ctx = main.make_context("autocompress", list(args), resilient_parsing=False)
    sub = main.get_command(ctx, args[0])
    assert sub is not None, command
    sub.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


def _run(command: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one README ``autocompress`` line as written (its ``VAR=value`` prefix included)."""
    _parse(command)
    extra, words = _split(command)
    proc = subprocess.run(CLI + words[1:], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, **extra})
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, (command, proc.stderr[-3000:])
    return proc


def _scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory holding ``configs/``, and an environment with a private HOME (so a file
    Ray or Tune would drop in the user's home is seen, and not left there)."""
    cwd = tmp_path / "work"
    shutil.copytree(ROOT / "configs", cwd / "configs")
    (tmp_path / "home").mkdir()
    return cwd, {**os.environ, "COLUMNS": "160", "HOME": str(tmp_path / "home")}


def _finals(run: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in (run / "trials.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in lines if r["final"] and r["status"] in ("ok", "failed")]


def _option(command: str, name: str, default: str | None = None) -> str | None:
    words = _split(command)[1]
    return words[words.index(name) + 1] if name in words else default


# -- the set-up lines and the parser -------------------------------------------------------------
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
    assert len(ALL) >= 10
    for command in ALL:
        _parse(command)


def test_every_readme_command_is_executed() -> None:
    """Each command belongs to a section that a test below runs line by line."""
    ray_commands = [ln for ln in RAY_LINES if _is_autocompress(ln)]
    nodes_commands = [ln for ln in NODES_LINES if _is_autocompress(ln)]
    assert sorted(ALL) == sorted(WALKTHROUGH + REAL_DATA + BRING_YOUR_OWN + ray_commands + nodes_commands
                                 + CLASSIC + GPU)
    assert [_split(ln)[1][:2] for ln in NODES_LINES].count(["ray", "start"]) == 3
    assert any("--ray-address" in c for c in ray_commands)
    assert any(_split(ln)[1][:2] == ["ray", "start"] for ln in RAY_LINES)
    assert any(c.startswith("PYTHONPATH=") for c in BRING_YOUR_OWN)


# -- the walk-through ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_walkthrough_runs_in_order(tmp_path: Path) -> None:
    assert WALKTHROUGH[0].startswith("autocompress search --config configs/quick.yaml")
    cwd, env = _scratch(tmp_path)
    for command in WALKTHROUGH:
        _run(command, cwd, env)
    run = cwd / "runs" / "quick"
    assert (run / "pareto.png").is_file() and (run / "pareto.html").is_file()
    assert (run / "knee.onnx").is_file() and list((run / "finetune").glob("*.json"))
    assert (cwd / "runs" / "base-resnet20.pt").is_file()


# -- classic ML models ----------------------------------------------------------------------------
@pytest.mark.slow
def test_classic_lines_run(tmp_path: Path) -> None:
    assert CLASSIC and CLASSIC[0].startswith("autocompress search --model sklearn:")
    cwd, env = _scratch(tmp_path)
    for command in CLASSIC:
        _run(command, cwd, env)
    assert (cwd / "runs" / "rf" / "pareto.json").is_file() and (cwd / "runs" / "rf" / "knee.onnx").is_file()


# -- real data: an image folder with train/ and test/ -------------------------------------------
def _cifar_like_tarball(path: Path) -> None:
    """A tiny stand-in for cifar10-jpeg.tar.gz: cifar10/{train,test}/<class>/*.jpg, 3 colour classes."""
    import tarfile

    import numpy as np
    from PIL import Image

    src = path.parent / "tar-src"
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 6)):
        for c, name in enumerate(("airplane", "bird", "ship")):
            folder = src / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.full((32, 32, 3), 40, np.uint8)
                pixels[..., c] = 220
                noise = rng.integers(-15, 16, pixels.shape)
                Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar10", arcname="cifar10")
    shutil.rmtree(src)


def _tiny(command: str) -> str:
    """A README real-data line at test size: a tiny model, few epochs and candidates."""
    words = _split(command)[1]
    if "--model" in words:
        words[words.index("--model") + 1] = "test_convnet"
    if "--epochs" in words:
        words[words.index("--epochs") + 1] = "6"
    if words[1] == "search":
        words += ["--strategy", "uniform", "--trials", "4", "--finetune-epochs", "1"]
    return shlex.join(words)


def test_real_data_section_says_where_its_figures_come_from() -> None:
    section = _section("### Real data")
    assert 'benchmarks/README.md, "CIFAR-10"' in section  # the figures' commands and per-seed rows
    assert "CIFAR-10" in section and "test top-1" in section
    assert any("tar xzf cifar10-jpeg.tar.gz" in ln for ln in REAL_DATA_LINES)
    assert [_split(c)[1][1] for c in REAL_DATA] == ["train", "search", "report"]
    assert all("imagefolder:$HOME/data/cifar10" in c for c in REAL_DATA[:2])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_data_lines_run(tmp_path: Path) -> None:
    """The section line by line: the tarball (a tiny stand-in) unpacked under a private HOME, then
    train, search --finetune-top 3 and report on it, at test size."""
    cwd, env = _scratch(tmp_path)
    home = Path(env["HOME"])
    _cifar_like_tarball(cwd / "cifar10-jpeg.tar.gz")
    outputs = {}
    for line in REAL_DATA_LINES:
        if not _is_autocompress(line):
            proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 0, (line, proc.stderr)
            continue
        command = _tiny(line.replace("$HOME", str(home)))
        outputs[_split(command)[1][1]] = _run(command, cwd, env).stdout
    assert (home / "data" / "cifar10" / "test" / "ship" / "0000.jpg").is_file()
    assert "test_acc" in outputs["train"] and (cwd / "base.pt").is_file()
    run = cwd / "runs" / "cifar10"
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["points"] and all("test_acc" in p for p in pareto["points"])
    records = [json.loads(p.read_text()) for p in (run / "finetune").glob("*.json")]
    assert len(records) == min(3, len(pareto["points"]))
    assert all(r["test_before"] is not None and r["test_after"] is not None for r in records)
    for out in (outputs["search"], outputs["report"]):
        assert "test top-1" in out and "Fine-tuned front" in out and "test after" in out


# -- bring your own model and data ---------------------------------------------------------------
_USER_MODULE = '''"""A user's own network: a factory called with num_classes=, returning an nn.Module."""
import torch.nn as nn


def build_net(num_classes: int = 10) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
    net.input_shape = (1, 28, 28)
    return net
'''


def _make_user_files(cwd: Path) -> None:
    """What the README's lines name: mypkg.models:build_net, net.pt, data/MNIST/raw, data/flowers,
    mnv3.pt (small real equivalents: MNIST files written from the bundled digits, a 2-class folder)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from sklearn.datasets import load_digits

    (cwd / "mypkg").mkdir()
    (cwd / "mypkg" / "__init__.py").write_text("")
    (cwd / "mypkg" / "models.py").write_text(_USER_MODULE)
    namespace: dict[str, object] = {}
    exec(compile(_USER_MODULE, "mypkg/models.py", "exec"), namespace)  # the very module, not a copy
    torch.manual_seed(0)
    torch.save(namespace["build_net"](10).state_dict(), cwd / "net.pt")  # type: ignore[operator]

    digits = load_digits()
    images = np.zeros((len(digits.images), 28, 28), np.uint8)
    images[:, 2:26, 2:26] = (np.kron(digits.images, np.ones((3, 3))) * 255 / 16).astype(np.uint8)
    raw = cwd / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, 1500)), ("t10k", slice(1500, None))):
        x, y = images[sl], digits.target[sl].astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())

    rng = np.random.default_rng(0)
    for k, name in enumerate(("daisy", "tulip")):
        folder = cwd / "data" / "flowers" / name
        folder.mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8) + np.uint8(100 * k)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=2).state_dict(), cwd / "mnv3.pt")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bring_your_own_model_lines_run(tmp_path: Path) -> None:
    assert len(BRING_YOUR_OWN) == 2
    cwd, env = _scratch(tmp_path)
    _make_user_files(cwd)
    for command in BRING_YOUR_OWN:
        proc = _run(command, cwd, env)
        trials = int(_option(command, "--trials", "40") or 40)
        evaluated = re.search(r"\((\d+) evaluated, ", proc.stdout)
        assert evaluated and " 0 failed;" in proc.stdout, proc.stdout
        # All the trials, unless the space holds fewer distinct models (a small net's channels in
        # multiples of the SIMD width), and then the summary says why the search ended.
        n = int(evaluated.group(1))
        assert 1 <= n <= trials, proc.stdout
        assert n == trials or re.search(r"already\s+evaluated|nothing\s+more", proc.stdout), proc.stdout
    runs = sorted(p for p in (cwd / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        assert all(r["status"] == "ok" for r in _finals(run))
        assert json.loads((run / "pareto.json").read_text())["points"]
    user = next(r for r in runs if "mypkg" in r.name)
    spec = json.loads((user / "spec.json").read_text())
    assert spec["strategy"] == "tpe" and spec["data"] == "mnist"
    assert all("latency_ms" in r["metrics"] for r in _finals(user))


# -- GPUs ----------------------------------------------------------------------------------------
def test_gpu_lines_ask_for_cuda_on_every_command() -> None:
    assert [_split(c)[1][1] for c in GPU] == ["train", "search", "finetune", "export"]
    assert all(_option(c, "--device") == "cuda" for c in GPU)
    assert _option(GPU[1], "--latency-backend") == "torch-cuda" and "latency=5ms" in GPU[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_lines_are_refused_in_one_line_without_cuda(tmp_path: Path) -> None:
    cwd, env = _scratch(tmp_path)
    _parse(GPU[0])
    proc = subprocess.run(CLI + _split(GPU[0])[1][1:], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 2 and "'cuda' needs CUDA" in proc.stderr, proc.stderr
    assert not (cwd / "runs").exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_lines_run(tmp_path: Path) -> None:
    cwd, env = _scratch(tmp_path)
    for command in GPU:
        _run(command, cwd, env)
    finals = _finals(cwd / "runs" / "gpu")
    assert len(finals) == 8 and all("latency_ms" in r["metrics"] for r in finals if r["status"] == "ok")
    assert (cwd / "runs" / "gpu" / "best.onnx").is_file()
    assert list((cwd / "runs" / "gpu" / "finetune").glob("point-*.json"))


# -- Ray clusters --------------------------------------------------------------------------------
@pytest.fixture()
def nodes() -> Iterator[RayNodes]:
    n = RayNodes()
    try:
        yield n
    finally:
        n.stop()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_cluster_lines_run(tmp_path: Path, nodes: RayNodes, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, env = _scratch(tmp_path)
    before = set(os.listdir(cwd))
    readme_address: str | None = None
    address: str | None = None
    ran: list[str] = []
    for line in RAY_LINES:
        extra, words = _split(line)
        if words[0] == "export":
            env.update(dict(w.split("=", 1) for w in words[1:]))
        elif words[:2] == ["ray", "start"]:
            readme_port = next(w.split("=", 1)[1] for w in words if w.startswith("--port="))
            readme_address = f"127.0.0.1:{readme_port}"
            address = nodes.start(words, readme_port, {**env, **extra}, tmp_path / "ray-head.log")
        elif words[:2] == ["ray", "stop"]:
            nodes.stop()
        elif "postgresql://" in line:  # the shared-storage line, against a private server
            from _postgres import postgres_server

            with postgres_server() as pg:
                proc = _run(re.sub(r"postgresql://\S+", pg.createdb("autocompress"), line), cwd, env)
            assert " 0 failed;" in proc.stdout, proc.stdout
            assert ":***@" in (cwd / (_option(line, "--out") or "") / "spec.json").read_text()
        else:
            assert words[0] == "autocompress", line
            command = line.replace(readme_address, address) if readme_address and address else line
            proc = _run(command, cwd, env)
            assert " 0 failed;" in proc.stdout, proc.stdout
            if "--ray-address" in command:
                # re-running the same command resumes: nothing left to do, nothing evaluated again
                out = Path(_option(command, "--out") or "")
                lines_before = (cwd / out / "trials.jsonl").read_text()
                again = _run(command, cwd, env)
                assert "completed" in again.stdout
                assert (cwd / out / "trials.jsonl").read_text() == lines_before
            ran.append(command)
    assert not nodes.procs and len(ran) == 2  # the README stops its head; both searches ran

    for command in ran:
        run = cwd / (_option(command, "--out") or "")
        trials = int(_option(command, "--trials", "16") or 16)
        finals = _finals(run)
        assert len(finals) == trials and all(r["status"] == "ok" for r in finals)
        for name in ("trials.jsonl", "ledger.jsonl", "pareto.json", "spec.json", "pareto.html"):
            assert (run / name).is_file(), name
        assert list((run / "ray").glob("*/tuner.pkl"))  # Tune's own files, inside the run
    assert set(os.listdir(cwd)) - before == {"runs"}  # nothing else in the working directory
    assert not list((tmp_path / "home").glob("ray_results*"))

    # ... and a local run continues the study the Ray run wrote (one more candidate)
    from click.testing import CliRunner

    from autocompress.cli import main

    local = _split(ran[0])[1][1:]
    i = local.index("--backend")
    local = local[:i] + local[i + 2:]
    i = local.index("--workers")
    local = local[:i] + local[i + 2:] + ["--trials", "17", "--no-report"]
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, local, catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    assert "(17 evaluated, " in result.output
    assert len(_finals(cwd / "runs" / "ray")) == 17


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_nodes_lines_run(tmp_path: Path, nodes: RayNodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-machine cluster of "Many machines", line by line: a head without CPUs and two worker
    nodes, each in its own process group, and the search against them on a private PostgreSQL
    server. Trials ran on both worker nodes, and the run holds the candidates a local run of the same
    command (same seed) evaluates."""
    from _postgres import postgres_server

    cwd, env = _scratch(tmp_path)
    readme_port = address = ran = None
    with postgres_server() as pg:
        for i, line in enumerate(NODES_LINES):
            extra, words = _split(line)
            if words[0] == "export":
                env.update(dict(w.split("=", 1) for w in words[1:]))
            elif words[:2] == ["ray", "start"]:
                if "--head" in words:
                    readme_port = next(w.split("=", 1)[1] for w in words if w.startswith("--port="))
                    address = nodes.start(words, readme_port, {**env, **extra}, tmp_path / f"ray-{i}.log")
                else:
                    nodes.start(words, readme_port or "", {**env, **extra}, tmp_path / f"ray-{i}.log")
            elif words[:2] == ["ray", "stop"]:
                nodes.stop()
            else:
                assert words[0] == "autocompress" and "--ray-address" in words, line
                assert address is not None and address.split(":")[0] in line
                nodes.ready()  # the worker nodes have joined
                ran = re.sub(r"\S+:" + str(readme_port) + r"\b", address, line)
                ran = re.sub(r"postgresql://\S+", pg.createdb("autocompress"), ran)
                proc = _run(ran, cwd, env)
                assert " 0 failed;" in proc.stdout, proc.stdout
    assert ran is not None and not nodes.procs  # the README stops its nodes; the search ran

    run = cwd / (_option(ran, "--out") or "")
    trials = int(_option(ran, "--trials") or 0)
    finals = _finals(run)
    assert len(finals) == trials and all(r["status"] == "ok" for r in finals)
    assert ":***@" in (run / "spec.json").read_text()
    # Each trial reported the node it ran on (JSON inside JSON in Tune's experiment state).
    states = "".join(f.read_text() for f in (run / "ray").rglob("experiment_state*.json"))
    where = re.findall(r'ac_node\\*"\s*:\s*\\*"([0-9a-f]+)', states)
    assert len(where) == trials and len(set(where)) == 2, where  # both worker nodes, never the head
    assert sorted(r["node"] for r in finals) == sorted(where)  # and trials.jsonl says the same

    # The same command without Ray and PostgreSQL evaluates the same candidates.
    from click.testing import CliRunner

    from autocompress.cli import main

    words = _split(ran)[1][1:]
    for option in ("--backend", "--ray-address", "--workers", "--storage", "--study-name", "--out"):
        i = words.index(option)
        words = words[:i] + words[i + 2:]
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, [*words, "--out", "runs/local", "--no-report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    objectives = [o[0] if isinstance(o, list) else o["name"]
                  for o in json.loads((run / "pareto.json").read_text())["objectives"]]

    def candidates(path: Path) -> list[tuple[str, tuple[float, ...]]]:
        return sorted((r["policy_key"], tuple(round(r["metrics"][n], 6) for n in objectives))
                      for r in _finals(path))

    assert candidates(run) == candidates(cwd / "runs" / "local")
