"""The bad-input matrix: every command x malformed values and malicious files.

Each case must end with exit status 2, exactly one line on stderr (``error: ...`` naming the
value), no traceback, nothing executed from a file, and no run directory created or changed:
the whole working tree of the case is hashed before and after. Cases run in this process through
click's ``CliRunner`` and fail before any model is trained, so the matrix stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autocompress.cli import main

TINY = ["--model", "test_mlp", "--trials", "4", "--seed", "0"]


class _Plant:
    """Unpickling this creates the directory named in it: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.mkdir, (self.marker,))


def _tree_hash(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_images(folder: Path, classes: list[str], n: int = 3) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (40 * c, 20 * i, 90)).save(folder / name / f"{i}.jpg")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's working tree: one tiny real run plus every malformed input file."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = root / "run"
    res = CliRunner().invoke(main, ["search", *TINY, "--out", str(run), "--no-report"])
    assert res.exit_code == 0, (res.stderr[-3000:], res.exception)
    assert (run / "pareto.json").is_file()

    files = root / "files"
    files.mkdir()
    (files / "a_file").write_text("not a directory\n")
    (files / "empty.pt").write_bytes(b"")
    (files / "junk.pt").write_bytes(b"not a checkpoint")
    (files / "ckpt_dir").mkdir()
    from autocompress.models import create_model

    torch.save(create_model("test_convnet").state_dict(), files / "wrong.pt")
    torch.save({"state_dict": _Plant(root / "PWNED-ckpt")}, files / "planted.pt")
    with open(files / "planted.pkl", "wb") as f:
        pickle.dump(_Plant(root / "PWNED-pkl"), f)
    cfg = files / "configs"
    cfg.mkdir()
    (cfg / "malformed.yaml").write_text("model: test_mlp\ntrials: [4\n  budgets: {\n")
    (cfg / "python_tag.yaml").write_text(
        f"model: !!python/object/apply:os.mkdir [{str(root / 'PWNED-yaml')!r}]\n")
    (cfg / "python_name.yaml").write_text("model: !!python/name:os.system\n")
    (cfg / "list.yaml").write_text("- model\n- test_mlp\n")
    (cfg / "unknown.yaml").write_text("model: test_mlp\ntrails: 5\n")
    (cfg / "wrong_type.yaml").write_text("model: test_mlp\ntrials: many\n")
    (cfg / "bad_importance.yaml").write_text("model: test_mlp\nimportance: [bn]\n")
    (cfg / "bad_settings.yaml").write_text(
        "model: test_mlp\nstrategy: nsga2\nstrategy_settings: {population_size: -4}\n")
    (cfg / "bad_evaluator.yaml").write_text("model: test_mlp\nevaluator: [1, 2]\n")
    (cfg / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage\x00\x81")

    images = root / "images"
    _write_images(images / "corrupt", ["cat", "dog"])
    bad = images / "corrupt" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated JPEG
    _write_images(images / "garbage", ["cat", "dog"])
    (images / "garbage" / "cat" / "0.jpg").write_bytes(b"this is not an image")
    _write_images(images / "oneclass", ["cat"])
    (images / "empty").mkdir()
    (images / "empty" / "cat").mkdir()

    # Damaged copies of the run (the report side must refuse them, not guess).
    for name, text in (("truncated", None), ("empty", "")):
        copy = root / f"run_{name}"
        shutil.copytree(run, copy)
        pareto = copy / "pareto.json"
        pareto.write_text(pareto.read_text()[: len(pareto.read_text()) // 2] if text is None else text)
    planted = root / "run_planted"
    shutil.copytree(run, planted)
    point = json.loads((run / "pareto.json").read_text())["points"][0]["id"]
    (planted / "finetune").mkdir(exist_ok=True)
    torch.save(_Plant(root / "PWNED-finetuned"), planted / "finetune" / f"point-{point}.pt")
    (planted / "finetune" / f"point-{point}.json").write_text(json.dumps(
        {"point": point, "acc_before": 0.5, "acc_after": 0.6, "epochs": 1, "kd": True}))
    (files / "existing.onnx").write_bytes(b"earlier result")
    return root


def _case(*args: str) -> list[str]:
    return list(args)


S = ("search", *TINY, "--out", "{ws}/new")  # search prefix (model, trials, a fresh --out)
T = ("train", "--model", "test_mlp", "--epochs", "1", "--out", "{ws}/new/base.pt")

# (id, argv with {ws}/{run}/{point}/{files} placeholders, fragments the error line must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # --model: built-in names, torchvision names, and package.module:factory
    ("model-os-system", [*S, "--model", "os:system"], ["os:system", "nn.Module"]),
    ("model-os-getcwd", [*S, "--model", "os:getcwd"], ["os:getcwd", "nn.Module"]),
    ("model-json-decoder", [*S, "--model", "json:JSONDecoder"], ["JSONDecoder", "nn.Module"]),
    ("model-sklearn", [*S, "--model", "sklearn.ensemble:RandomForestClassifier"],
     ["RandomForestClassifier", "nn.Module"]),
    ("model-builtins-exec", [*S, "--model", "builtins:exec"], ["builtins:exec"]),
    ("model-shutil-rmtree", [*S, "--model", "shutil:rmtree"], ["shutil:rmtree", "cannot be called"]),
    ("model-module-attr", [*S, "--model", "os:path"], ["os:path"]),
    ("model-no-attr", [*S, "--model", "os:"], ["os:", "package.module:factory"]),
    ("model-no-module", [*S, "--model", ":system"], [":system"]),
    ("model-not-importable", [*S, "--model", "no_such_pkg.mod:factory"], ["no_such_pkg.mod"]),
    ("model-unknown", [*S, "--model", "resnet21"], ["resnet21", "resnet20"]),
    ("model-tv-unknown", [*S, "--model", "tv:nonet"], ["nonet"]),
    ("model-empty", [*S, "--model", " "], ["model"]),
    ("model-path-traversal", [*S, "--model", "../../etc/passwd:x"], ["package.module:factory"]),
    # --data / --data-root
    ("data-unknown", [*S, "--data", "digitz"], ["digitz", "digits"]),
    ("data-needs-root", [*S, "--data", "mnist"], ["mnist", "--data-root"]),
    ("data-root-missing", [*S, "--data", "cifar10", "--data-root", "/nonexistent-dir"], ["/nonexistent-dir"]),
    ("data-root-file", [*S, "--data", "cifar10", "--data-root", "{files}/a_file"], ["a_file", "not a directory"]),
    ("data-root-empty-dir", [*S, "--data", "cifar10", "--data-root", "{files}/ckpt_dir"], ["cifar10", "not found"]),
    ("imagefolder-missing", [*S, "--data", "imagefolder:/nonexistent-dir"], ["/nonexistent-dir"]),
    ("imagefolder-corrupt-jpeg", [*S, "--data", "imagefolder:{ws}/images/corrupt"], ["1.jpg"]),
    ("imagefolder-garbage-file", [*S, "--data", "imagefolder:{ws}/images/garbage"], ["0.jpg"]),
    ("imagefolder-one-class", [*S, "--data", "imagefolder:{ws}/images/oneclass"], ["at least 2"]),
    ("imagefolder-no-images", [*S, "--data", "imagefolder:{ws}/images/empty"], ["no images"]),
    # --checkpoint
    ("checkpoint-dir", [*S, "--checkpoint", "{files}/ckpt_dir"], ["ckpt_dir", "is a directory"]),
    ("checkpoint-missing", [*S, "--checkpoint", "{files}/none.pt"], ["none.pt", "does not exist"]),
    ("checkpoint-junk", [*S, "--checkpoint", "{files}/junk.pt"], ["junk.pt"]),
    ("checkpoint-empty", [*S, "--checkpoint", "{files}/empty.pt"], ["empty.pt"]),
    ("checkpoint-planted-torch", [*S, "--checkpoint", "{files}/planted.pt"], ["planted.pt"]),
    ("checkpoint-planted-pickle", [*S, "--checkpoint", "{files}/planted.pkl"], ["planted.pkl"]),
    ("checkpoint-wrong-model", [*S, "--checkpoint", "{files}/wrong.pt"], ["does not fit"]),
    # --budget / --soft-budget
    ("budget-over-100pct", [*S, "--budget", "macs=200%"], ["macs=200%", "100%"]),
    ("budget-words", [*S, "--budget", "flops=fifty"], ["fifty"]),
    ("budget-negative", [*S, "--budget", "latency=-1ms"], ["-1ms"]),
    ("budget-unit", [*S, "--budget", "size=10XB"], ["10XB"]),
    ("budget-metric", [*S, "--budget", "speed=3"], ["speed"]),
    ("budget-no-value", [*S, "--budget", "macs"], ["macs", "METRIC=VALUE"]),
    ("budget-zero", [*S, "--budget", "macs=0%"], ["macs=0%"]),
    ("budget-acc-drop", [*S, "--budget", "acc-drop=150%"], ["acc-drop=150%"]),
    ("budget-twice", [*S, "--budget", "macs=50%", "--budget", "macs=40%"], ["macs", "more than once"]),
    ("budget-unreachable", [*S, "--budget", "macs=10"], ["macs", "smallest"]),
    ("soft-budget-over-100pct", [*S, "--soft-budget", "params=300%"], ["params=300%"]),
    ("soft-budget-form", [*S, "--soft-budget", "nonsense"], ["nonsense"]),
    ("budget-hard-and-soft", [*S, "--budget", "macs=50%", "--soft-budget", "macs=40%"], ["both hard and soft"]),
    # --objective / --knob / --strategy / --set / --eval-set
    ("objective-unknown", [*S, "--objective", "happiness"], ["happiness", "acc"]),
    ("objective-direction", [*S, "--objective", "acc:sideways"], ["sideways"]),
    ("objective-repeat", [*S, "--objective", "acc", "--objective", "acc"], ["repeat"]),
    ("knob-unknown", [*S, "--knob", "teleport"], ["teleport", "prune"]),
    ("strategy-unknown", [*S, "--strategy", "annealing"], ["annealing", "nsga2"]),
    ("set-population-negative", [*S, "--strategy", "nsga2", "--set", "population_size=-4"], ["population_size=-4"]),
    ("set-population-word", [*S, "--strategy", "nsga2", "--set", "population_size=abc"], ["population_size='abc'"]),
    ("set-mutation-prob", [*S, "--strategy", "nsga2", "--set", "mutation_prob=5"], ["mutation_prob=5"]),
    ("set-crossover-prob", [*S, "--strategy", "nsga2", "--set", "crossover_prob=-0.1"], ["crossover_prob"]),
    ("set-unknown-key", [*S, "--strategy", "nsga2", "--set", "nonsense=1"], ["nonsense", "population_size"]),
    ("set-no-equals", [*S, "--set", "population_size"], ["KEY=VALUE"]),
    ("set-bool", [*S, "--strategy", "nsga2", "--set", "budget_projection=maybe"], ["budget_projection"]),
    ("set-tpe-startup", [*S, "--strategy", "tpe", "--set", "n_startup_trials=-1"], ["n_startup_trials"]),
    ("set-random-tries", [*S, "--strategy", "random", "--set", "max_tries=0"], ["max_tries"]),
    ("set-ladder-sigma", [*S, "--set", "sigma=2"], ["sigma=2"]),
    ("set-ladder-fraction", [*S, "--set", "ladder_fraction=-0.5"], ["ladder_fraction"]),
    ("set-ladder-unknown", [*S, "--set", "population_size=8"], ["population_size", "ladder_fraction"]),
    ("round-to-word", [*S, "--round-to", "fast"], ["round_to='fast'", "auto"]),
    ("importance-unknown", [*S, "--importance", "gamma"], ["importance='gamma'", "l1", "bn"]),
    ("importance-bn-without-batchnorm", [*S, "--importance", "bn"], ["importance 'bn'", "TinyMLP"]),
    ("set-uniform-points", [*S, "--strategy", "uniform", "--set", "points=x"], ["points"]),
    ("set-greedy-levels", [*S, "--strategy", "greedy", "--set", "levels=[0, 2]"], ["levels"]),
    ("set-ddpg-warmup", [*S, "--strategy", "ddpg", "--set", "warmup_episodes=-3"], ["warmup_episodes=-3"]),
    ("set-ddpg-net-arch", [*S, "--strategy", "ddpg", "--set", "net_arch=[0]"], ["net_arch"]),
    ("set-ddpg-reward", [*S, "--strategy", "ddpg", "--set", "reward=happiness"], ["happiness"]),
    ("set-ddpg-lagrangian", [*S, "--strategy", "ddpg", "--set", "reward=lagrangian"], ["soft_budgets"]),
    ("set-ppo-gamma", [*S, "--strategy", "ppo", "--set", "gamma=2"], ["gamma=2"]),
    ("set-sac-lr", [*S, "--strategy", "sac", "--set", "learning_rate=0"], ["learning_rate"]),
    ("set-ddpg-bc-range", [*S, "--strategy", "ddpg_bc", "--set", "budget_range=[0.9, 0.1]"], ["budget_range"]),
    ("eval-set-unknown", [*S, "--eval-set", "nonsense=1"], ["nonsense"]),
    ("eval-set-value", [*S, "--eval-set", "finetune_steps=-5"], ["finetune_steps"]),
    # numbers
    ("trials-zero", [*S, "--trials", "0"], ["trials"]),
    ("trials-word", [*S, "--trials", "abc"], ["--trials", "abc"]),
    ("seed-negative", [*S, "--seed", "-1"], ["seed"]),
    ("seed-word", [*S, "--seed", "abc"], ["--seed"]),
    ("max-prune-above-one", [*S, "--max-prune", "1.5"], ["max_prune"]),
    ("max-prune-zero", [*S, "--max-prune", "0"], ["max_prune"]),
    ("max-prune-nan", [*S, "--max-prune", "nan"], ["max_prune"]),
    ("round-to-zero", [*S, "--round-to", "0"], ["round_to"]),
    ("workers-zero", [*S, "--workers", "0"], ["workers"]),
    ("backend-unknown", [*S, "--backend", "gpu"], ["--backend", "gpu"]),
    ("ray-address", [*S, "--ray-address", "not an address"], ["ray_address"]),
    ("resume-and-force", [*S, "--resume", "--force"], ["resume", "force"]),
    ("study-name-empty", [*S, "--study-name", ""], ["study_name"]),
    ("option-unknown", [*S, "--trails", "5"], ["--trails"]),
    # --storage
    ("storage-word", [*S, "--storage", "bogus"], ["bogus", "journal"]),
    ("storage-sqlite-no-dir", [*S, "--storage", "sqlite:////no/such/dir/x.db"], ["/no/such/dir"]),
    ("storage-unreachable", [*S, "--storage", "postgresql://u@127.0.0.1:1/db"], ["127.0.0.1:1"]),
    ("storage-in-memory", [*S, "--storage", "sqlite://"], ["in-memory"]),
    ("storage-bad-url", [*S, "--storage", "://nothing"], ["://nothing"]),
    ("storage-journal-unwritable", [*S, "--storage", "/sys/autocompress.journal"], ["/sys"]),
    # --out
    ("out-unwritable", ["search", *TINY, "--out", "/sys/autocompress-run"], ["/sys"]),
    ("out-is-file", ["search", *TINY, "--out", "{files}/a_file"], ["a_file"]),
    ("out-under-file", ["search", *TINY, "--out", "{files}/a_file/run"], ["a_file"]),
    ("out-other-search", ["search", "--model", "test_mlp", "--trials", "4", "--seed", "1", "--out", "{run}"],
     ["{run}"]),
    # --config
    ("config-missing", ["search", "--config", "{files}/configs/absent.yaml"], ["absent.yaml"]),
    ("config-directory", ["search", "--config", "{files}/configs"], ["configs"]),
    ("config-malformed", ["search", "--config", "{files}/configs/malformed.yaml"], ["malformed.yaml", "YAML"]),
    ("config-python-tag", ["search", "--config", "{files}/configs/python_tag.yaml"], ["python_tag.yaml"]),
    ("config-python-name", ["search", "--config", "{files}/configs/python_name.yaml"], ["python_name.yaml"]),
    ("config-list", ["search", "--config", "{files}/configs/list.yaml"], ["list.yaml", "mapping"]),
    ("config-unknown-key", ["search", "--config", "{files}/configs/unknown.yaml"], ["trails"]),
    ("config-wrong-type", ["search", "--config", "{files}/configs/wrong_type.yaml"], ["trials", "many"]),
    ("config-bad-importance", ["search", "--config", "{files}/configs/bad_importance.yaml"], ["importance"]),
    ("config-bad-settings", ["search", "--config", "{files}/configs/bad_settings.yaml"], ["population_size"]),
    ("config-bad-evaluator", ["search", "--config", "{files}/configs/bad_evaluator.yaml"], ["evaluator"]),
    ("config-binary", ["search", "--config", "{files}/configs/binary.yaml"], ["binary.yaml"]),
    # train
    ("train-model-os-system", [*T, "--model", "os:system"], ["os:system"]),
    ("train-model-json", [*T, "--model", "json:JSONDecoder"], ["JSONDecoder"]),
    ("train-corrupt-jpeg", [*T, "--data", "imagefolder:{ws}/images/corrupt"], ["1.jpg"]),
    ("train-one-class", [*T, "--data", "imagefolder:{ws}/images/oneclass"], ["at least 2"]),
    ("train-data-unknown", [*T, "--data", "digitz"], ["digitz"]),
    ("train-out-unwritable", ["train", "--model", "test_mlp", "--out", "/sys/autocompress-base.pt"], ["/sys"]),
    ("train-out-exists", ["train", "--model", "test_mlp", "--out", "{files}/junk.pt"], ["junk.pt", "--force"]),
    ("train-out-dir", ["train", "--model", "test_mlp", "--force", "--out", "{files}/ckpt_dir"], ["ckpt_dir"]),
    ("train-out-under-file", ["train", "--model", "test_mlp", "--out", "{files}/a_file/x.pt"], ["a_file"]),
    ("train-epochs-zero", [*T, "--epochs", "0"], ["--epochs"]),
    ("train-lr-negative", [*T, "--lr", "-1"], ["--lr"]),
    ("train-batch-zero", [*T, "--batch-size", "0"], ["--batch-size"]),
    ("train-slimming-negative", [*T, "--slimming-l1", "-1e-4"], ["--slimming-l1"]),
    ("train-slimming-word", [*T, "--slimming-l1", "lots"], ["--slimming-l1", "lots"]),
    ("train-slimming-without-batchnorm", [*T, "--slimming-l1", "1e-4"], ["slimming_l1=0.0001", "TinyMLP"]),
    # report / show / export / finetune on a run directory
    ("report-missing", ["report", "{ws}/nothing-here"], ["nothing-here"]),
    ("report-file", ["report", "{files}/a_file"], ["a_file"]),
    ("report-truncated-pareto", ["report", "{ws}/run_truncated"], ["pareto.json"]),
    ("show-point-absent", ["show", "{run}", "--point", "9999"], ["9999"]),
    ("show-point-missing", ["show", "{run}"], ["--point"]),
    ("show-point-word", ["show", "{run}", "--point", "../../etc/passwd"], ["passwd"]),
    ("show-run-missing", ["show", "{ws}/nothing-here", "--point", "best"], ["nothing-here"]),
    ("show-truncated-pareto", ["show", "{ws}/run_truncated", "--point", "best"], ["pareto.json"]),
    ("show-empty-pareto", ["show", "{ws}/run_empty", "--point", "knee"], ["pareto.json"]),
    ("export-point-absent", ["export", "{run}", "--point", "9999", "--format", "pt"], ["9999"]),
    ("export-format", ["export", "{run}", "--point", "{point}", "--format", "exe"], ["--format", "exe"]),
    ("export-out-exists", ["export", "{run}", "--point", "{point}", "--out", "{files}/existing.onnx"],
     ["existing.onnx"]),
    ("export-out-missing-dir", ["export", "{run}", "--point", "{point}", "--out", "{ws}/no/such/dir/x.onnx"],
     ["{ws}/no/such/dir"]),
    ("export-out-unwritable", ["export", "{run}", "--point", "{point}", "--out", "/sys/x.onnx"], ["/sys"]),
    ("export-batch-zero", ["export", "{run}", "--point", "{point}", "--batch", "0"], ["--batch"]),
    ("export-planted-finetuned", ["export", "{ws}/run_planted", "--point", "{point}", "--finetuned",
                                  "--format", "pt", "--out", "{files}/x.pt"], []),
    ("export-truncated-pareto", ["export", "{ws}/run_truncated", "--point", "best"], ["pareto.json"]),
    ("finetune-point-absent", ["finetune", "{run}", "--point", "9999"], ["9999"]),
    ("finetune-epochs-zero", ["finetune", "{run}", "--point", "{point}", "--epochs", "0"], ["--epochs"]),
    ("finetune-alpha", ["finetune", "{run}", "--point", "{point}", "--alpha", "2"], ["--alpha"]),
    ("finetune-temperature", ["finetune", "{run}", "--point", "{point}", "--temperature", "0"],
     ["--temperature"]),
    ("finetune-truncated-pareto", ["finetune", "{ws}/run_truncated", "--point", "best"], ["pareto.json"]),
    ("finetune-empty-pareto", ["finetune", "{ws}/run_empty", "--point", "best"], ["pareto.json"]),
    # listings and the group itself
    ("models-option", ["models", "--bogus"], ["--bogus"]),
    ("models-extra-arg", ["models", "a*", "b*"], ["b*"]),
    ("datasets-extra-arg", ["datasets", "extra"], ["extra"]),
    ("command-unknown", ["serach"], ["serach"]),
]


def test_matrix_is_large_and_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) >= 80 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("argv", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv: list[str], needles: list[str], ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point = str(json.loads((ws / "run" / "pareto.json").read_text())["points"][0]["id"])
    fill = {"ws": str(ws), "run": str(ws / "run"), "files": str(ws / "files"), "point": point}
    args = [a.format(**fill) for a in argv]
    monkeypatch.chdir(ws)  # a default run directory (runs/...) would land in the hashed tree
    before = _tree_hash(ws)
    res = CliRunner().invoke(main, args, env={"COLUMNS": "160"})
    assert res.exit_code == 2, (res.exit_code, res.stdout[-2000:], res.stderr[-2000:], res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr + res.stdout
    for needle in needles:
        assert needle.format(**fill) in lines[0], lines[0]
    assert _tree_hash(ws) == before, "a bad input created or changed files"
    assert not list(ws.glob("PWNED-*")), "a file given by the user ran code"


def test_corrected_commands_work_after_refusals(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a refused ``--set`` or storage, the corrected command runs into the same ``--out``."""
    monkeypatch.chdir(ws)
    out = ws / "corrected"
    for bad in (["--set", "population_size=-4"], ["--storage", "sqlite:////no/such/dir/x.db"],
                ["--set", "mutation_prob=5"]):
        res = CliRunner().invoke(main, ["search", *TINY, "--strategy", "nsga2", "--out", str(out), "--no-report", *bad])
        assert res.exit_code == 2 and not out.exists(), res.stderr
    res = CliRunner().invoke(main, ["search", *TINY, "--strategy", "nsga2", "--out", str(out), "--no-report",
                                    "--set", "population_size=4", "--storage", f"sqlite:///{out}/study.db"])
    assert res.exit_code == 0, (res.stderr[-2000:], res.exception)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["strategy_settings"] == {"population_size": 4}
    shutil.rmtree(out)


# -- a read-only and a full disk, for real (each in its own process) ------------------------------
_DRIVER = textwrap.dedent("""
    import json, sys
    from click.testing import CliRunner
    from autocompress.cli import main
    out = []
    for args in json.loads(sys.argv[1]):
        res = CliRunner().invoke(main, args, env={"COLUMNS": "160"})
        out.append({"args": args, "code": res.exit_code, "stderr": res.stderr,
                    "exc": type(res.exception).__name__})
    print("RESULTS" + json.dumps(out))
""")


def _drive(cases: list[list[str]], home: Path, prefix: list[str] | None = None,
           preexec: Callable[[], None] | None = None) -> list[dict[str, object]]:
    """Run CLI cases in a child process. Its caches all point into ``home`` and it writes no
    bytecode: under a file-size limit a short write would leave truncated caches (or ``.pyc``
    files in the shared tree) behind."""
    cmd = [*(prefix or []), sys.executable, "-c", _DRIVER, json.dumps(cases)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home),
           "XDG_CACHE_HOME": str(home / "xdg"), "MPLCONFIGDIR": str(home / "mpl"),
           "AUTOCOMPRESS_CACHE": os.environ.get("AUTOCOMPRESS_CACHE", str(home / "cache"))}
    if preexec is not None:
        env["AUTOCOMPRESS_CACHE"] = str(home / "cache")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=preexec, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS"))
    return json.loads(line[len("RESULTS"):])


def _unshare_prefix() -> list[str]:
    """A mount namespace without privileges: ``unshare -rm`` (a user namespace) works in
    containers that drop CAP_SYS_ADMIN; plain ``unshare -m`` where user namespaces are off."""
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.fail("no mount namespace available (unshare -rm / -m) to make a read-only mount")


def _assert_one_line(r: dict[str, object], *needles: str) -> None:
    stderr = str(r["stderr"])
    assert r["code"] == 2, r
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, r
    for n in needles:
        assert n in lines[0], r


def test_read_only_disk_is_one_line(ws: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    point = str(json.loads((ws / "run" / "pareto.json").read_text())["points"][0]["id"])
    cases = [["search", *TINY, "--out", f"{ro}/run"],
             ["train", "--model", "test_mlp", "--epochs", "1", "--out", f"{ro}/base.pt"],
             ["export", str(ws / "run"), "--point", point, "--format", "pt", "--out", f"{ro}/p.pt"]]
    script = f"mount --bind -o ro {ro} {ro} && exec \"$@\""
    results = _drive(cases, tmp_path / "home", prefix=[*_unshare_prefix(), "sh", "-c", script, "sh"])
    for r in results:
        _assert_one_line(r, "Read-only file system")
    assert list(ro.iterdir()) == []


def test_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE with SIGXFSZ ignored makes writes past 4 KiB fail with EFBIG, as a full disk
    would fail them with ENOSPC: the training runs, the checkpoint write fails, nothing is left."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    out = tmp_path / "full"
    out.mkdir()
    results = _drive([["train", "--model", "test_mlp", "--epochs", "1", "--out", f"{out}/base.pt"]],
                     tmp_path / "home", preexec=limit)
    _assert_one_line(results[0], "base.pt", "EFBIG")
    assert list(out.iterdir()) == []
