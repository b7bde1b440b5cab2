"""The real ``autocompress`` command line, end to end, and its handling of bad input.

Every bad input gives exit status 2, one line on stderr naming the value, no traceback, and leaves
earlier results untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CLI = [sys.executable, "-m", "autocompress.cli"]
TINY = ["--model", "test_mlp", "--trials", "4", "--seed", "0"]


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "COLUMNS": "160"})


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    """The same click command in this process (saves an interpreter start per bad-input case)."""
    from click.testing import CliRunner

    from autocompress.cli import main

    res = CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run("search", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run directory" in proc.stdout and "Pareto front" in proc.stdout
    return out


def test_search_writes_run_and_report(tiny_run: Path) -> None:
    for name in ("spec.json", "trials.jsonl", "pareto.json", "pareto.png", "pareto.html"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trials = [json.loads(line) for line in (tiny_run / "trials.jsonl").read_text().splitlines()]
    assert len({t["id"] for t in trials if t.get("status") != "infeasible"}) >= 4
    pareto = json.loads((tiny_run / "pareto.json").read_text())
    assert pareto["points"], "the front is never empty when a feasible candidate exists"


def test_search_same_command_resumes_without_new_trials(tiny_run: Path) -> None:
    before = (tiny_run / "trials.jsonl").read_text()
    proc = run("search", *TINY, "--out", str(tiny_run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tiny_run / "trials.jsonl").read_text() == before  # 4 of 4 done: nothing re-evaluated


def test_report_show_export_finetune(tiny_run: Path, tmp_path: Path) -> None:
    """The read-side commands on the real search's run, in this process (an interpreter start each
    costs seconds; the search itself and the README tests run the real executable)."""
    pareto = json.loads((tiny_run / "pareto.json").read_text())
    point = str(pareto["points"][0]["id"])
    rep = invoke("report", str(tiny_run))
    assert rep.returncode == 0 and "Pareto front" in rep.stdout
    show = invoke("show", str(tiny_run), "--point", point)
    assert show.returncode == 0 and "per-layer policy" in show.stdout
    onnx_path = tmp_path / "p.onnx"
    exp = invoke("export", str(tiny_run), "--point", point, "--format", "onnx", "--out", str(onnx_path))
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert onnx_path.is_file() and "vs original" in exp.stdout
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: torch.randn(1, 1, 8, 8).numpy()})
    assert out.shape == (1, 10)
    ts_path = tmp_path / "p.ts"
    assert invoke("export", str(tiny_run), "--point", point, "--format", "torchscript", "--out", str(ts_path)).returncode == 0
    assert torch.jit.load(str(ts_path))(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    ft = invoke("finetune", str(tiny_run), "--point", point, "--epochs", "1")
    assert ft.returncode == 0, ft.stderr[-2000:]
    record = json.loads((tiny_run / "finetune" / f"point-{point}.json").read_text())
    assert 0 <= record["acc_before"] <= 1 and 0 <= record["acc_after"] <= 1


def test_models_and_datasets_listings() -> None:
    models = invoke("models")
    assert models.returncode == 0 and "resnet20" in models.stdout and "mobilenetv2" in models.stdout
    assert "tv:resnet18" in invoke("models", "--torchvision").stdout
    data = invoke("datasets")
    assert data.returncode == 0 and "digits" in data.stdout and "cifar10" in data.stdout


# -- bad input: each one line, exit 2, no traceback, nothing overwritten ------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "resnet21"], ["resnet21", "resnet20"]),
        (["--data", "digitz"], ["digitz", "digits"]),
        (["--data", "cifar10", "--data-root", "/nonexistent-dir"], ["/nonexistent-dir"]),
        (["--data", "mnist"], ["mnist", "--data-root"]),
        (["--budget", "flops=fifty"], ["fifty"]),
        (["--budget", "latency=-1ms"], ["-1ms"]),
        (["--budget", "size=10XB"], ["10XB"]),
        (["--budget", "speed=3"], ["speed"]),
        (["--objective", "happiness"], ["happiness", "acc"]),
        (["--strategy", "annealing"], ["annealing", "nsga2"]),
        (["--trials", "0"], ["trials"]),
    ],
)
def test_search_bad_input(args: list[str], needles: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = invoke("search", "--model", "test_mlp", *args, "--out", str(out)) if "--model" not in args \
        else invoke("search", *args, "--out", str(out))
    assert_one_line_error(proc, *needles)
    assert not (out / "trials.jsonl").exists()


def test_budget_below_reachable_names_smallest(tmp_path: Path) -> None:
    proc = invoke("search", "--model", "test_mlp", "--budget", "macs=10", "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "macs", "smallest")


def test_bad_checkpoints(tmp_path: Path) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(invoke("search", "--model", "test_mlp", "--checkpoint", str(bad), "--out", str(tmp_path / "a")),
                          "junk.pt")
    from autocompress.models import create_model

    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("test_convnet").state_dict(), wrong)
    assert_one_line_error(invoke("search", "--model", "test_mlp", "--checkpoint", str(wrong), "--out", str(tmp_path / "b")),
                          "does not fit")


def test_bad_yaml_configs(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: test_mlp\ntrails: 5\n")
    assert_one_line_error(invoke("search", "--config", str(unknown), "--out", str(tmp_path / "a")), "trails")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("model: test_mlp\ntrials: many\n")
    assert_one_line_error(invoke("search", "--config", str(wrong_type), "--out", str(tmp_path / "b")), "trials", "many")
    assert_one_line_error(invoke("search", "--config", str(tmp_path / "absent.yaml")), "absent.yaml")


def test_point_not_on_front(tiny_run: Path) -> None:
    for cmd in (["show"], ["export", "--format", "pt"], ["finetune"]):
        assert_one_line_error(invoke(cmd[0], str(tiny_run), "--point", "9999", *cmd[1:]), "9999")


def test_out_holding_another_run_is_refused(tiny_run: Path) -> None:
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    proc = invoke("search", "--model", "test_mlp", "--trials", "4", "--seed", "1", "--out", str(tiny_run))
    assert_one_line_error(proc, str(tiny_run))
    after = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    assert before == after


def test_export_refuses_to_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    point = str(json.loads((tiny_run / "pareto.json").read_text())["points"][0]["id"])
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"earlier result")
    assert_one_line_error(invoke("export", str(tiny_run), "--point", point, "--out", str(target)), "keep.onnx")
    assert target.read_bytes() == b"earlier result"


def test_report_of_missing_run(tmp_path: Path) -> None:
    assert_one_line_error(invoke("report", str(tmp_path / "nothing-here")), "nothing-here")


@pytest.mark.timeout(300)
def test_lstm_search_prunes_hidden_units_and_the_export_matches(tmp_path: Path) -> None:
    """A tiny LSTM search under a MACs budget prunes the hidden size; the exported ONNX LSTM is the
    smaller one and agrees with the compressed PyTorch model."""
    import onnx

    out = tmp_path / "lstm"
    proc = invoke("search", "--model", "test_lstm", "--budget", "macs=50%", "--knob", "prune",
                  "--knob", "w_bits", "--trials", "4", "--round-to", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    pareto = json.loads((out / "pareto.json").read_text())
    base_macs = pareto["base"]["macs"]
    assert trials and all(t["metrics"]["macs"] <= 0.5 * base_macs for t in trials if t.get("feasible"))
    layers = {p["id"]: p["policy"]["_data"]["layers"] for p in pareto["points"]}
    point = next(i for i, lay in layers.items() if lay["lstm"]["prune"] > 0)
    onnx_path = tmp_path / "lstm.onnx"
    exp = invoke("export", str(out), "--point", str(point), "--format", "onnx", "--out", str(onnx_path))
    assert exp.returncode == 0, exp.stderr[-2000:]
    diff = float(exp.stdout.split("max |diff| vs PyTorch")[1].split()[0])
    assert diff < 1e-4, exp.stdout
    (node,) = [n for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "LSTM"]
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    assert hidden < 16  # test_lstm's LSTM has 16 units


def test_search_help_names_the_default_strategy_and_every_registered_one() -> None:
    """The help is built from the registry and the spec's default, so it cannot drift from them
    (it once called nsga2 the default after the ladder became it)."""
    from autocompress.search.base import list_searchers
    from autocompress.search.spec import SearchSpec

    text = " ".join(invoke("search", "--help").stdout.split())
    default = SearchSpec.__dataclass_fields__["strategy"].default
    assert f"{default} (default)" in text
    assert [n for n in list_searchers() if n != default and f"{n} (default)" in text] == []
    for name in list_searchers():
        assert name in text, name
