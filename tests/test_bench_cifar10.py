"""benchmarks/bench_cifar10.py end to end on a tiny image folder (train/ + test/ of 16x16 PNGs):
a base trained by ``autocompress train``, 2 strategies x 3 evaluations x 1 seed, 1 fine-tune epoch."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _bench import load_benchmark
from click.testing import CliRunner

from autocompress.cli import main as cli_main
from autocompress.errors import UserInputError

pytestmark = pytest.mark.timeout(300)


def _bench() -> ModuleType:
    return load_benchmark("bench_cifar10")


def _image_folder(root: Path, per_class: int, seed: int, classes: int = 4) -> None:
    """16x16 PNGs, one colour per class with a little noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(c * 60) % 256, (c * 97) % 256, (c * 151) % 256])
        for i in range(per_class):
            arr = np.clip(colour[None, None, :] + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    root = tmp_path_factory.mktemp("bench-cifar10")
    _image_folder(root / "data" / "train", 24, seed=0)
    _image_folder(root / "data" / "test", 5, seed=1)
    data = f"imagefolder:{root / 'data'}"
    ckpt = root / "base.pt"
    res = CliRunner().invoke(cli_main, ["train", "--model", "test_convnet", "--data", data, "--epochs", "10", "--lr", "0.1",
                                        "--out", str(ckpt)])
    assert res.exit_code == 0, (res.stdout[-2000:], res.stderr[-2000:])
    bench = _bench()
    out_json = root / "bench.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = bench.main(["--checkpoint", str(ckpt), "--data", data, "--model", "test_convnet",
                             "--strategies", "ladder", "uniform:points=3", "--evals", "3", "--seeds", "0",
                             "--finetune-epochs", "1", "--val-samples", "40", "--threads", "1",
                             "--latency-rounds", "1", "--fastnas-row", "--fastnas-round-to", "2", "--out", str(root / "runs"), "--json", str(out_json)])
    return result, buf.getvalue(), out_json


def test_rows_and_values_are_sane(bench_run: tuple[dict[str, Any], str, Path]) -> None:
    result, stdout, out_json = bench_run
    assert json.loads(out_json.read_text())["table"] == result["table"]
    base = result["base"]
    assert base["epochs"] == 10 and base["minutes"] > 0 and base["record"] == "found"
    assert 0.5 < base["test_acc"] <= 1.0  # the colours are easy: the base learnt them
    assert base["latency"]["b1_ms"] > 0 and base["latency"]["b64_ms"] > base["latency"]["b1_ms"]
    assert list(result["runs"]) == ["ladder", "uniform:points=3", "ladder @73%, ×2 ch"]
    # a variant row runs its strategy with the settings given (NAME:KEY=VALUE)
    variant = result["runs"]["uniform:points=3"][0]
    assert variant["strategy"] == "uniform" and variant["settings"] == {"points": 3}
    assert json.loads(Path(variant["run_dir"], "spec.json").read_text())["strategy_settings"] == {"points": 3}
    for name, rows in result["runs"].items():
        (row,) = rows
        budget = 0.73 if "73%" in name else 0.5
        # the uniform sweep of so small a model has few distinct structures: it may stop early
        assert 1 <= row["evaluated"] <= 3 and 0.0 < row["hypervolume"] <= 1.0
        assert 0.0 < row["macs_ratio"] <= budget + 1e-9  # feasible under the budget
        assert 0.0 < row["params_ratio"] < 1.0
        for k in ("proxy_acc", "test_before", "test_after", "val_before", "val_after"):
            assert 0.0 <= row[k] <= 1.0, k
        assert row["onnx_max_abs_diff"] < 1e-3  # the exported file computes the fine-tuned model
        assert row["b1_ms"] > 0 and row["b64_speedup"] > 0 and row["base_b64_ms"] > 0
        assert row["onnx_bytes"] < row["base_onnx_bytes"]  # really fewer weights, not masks
        assert len(list(Path(row["run_dir"], "finetune").glob("point-*.json"))) == 1
    assert result["runs"]["ladder"][0]["evaluated"] == 3
    fastnas = result["runs"]["ladder @73%, ×2 ch"][0]
    assert fastnas["budget"] == "macs=73%" and fastnas["run_dir"].endswith("ladder-macs73-r2-s0")
    spec = json.loads(Path(fastnas["run_dir"], "spec.json").read_text())
    assert json.dumps(spec).count('"round_to": 2') == 1  # channels in the multiple asked for
    ladder = result["runs"]["ladder"][0]
    assert ladder["test_after"] - ladder["teacher_test"] == pytest.approx(
        float(re.search(r"\| ladder \(1 seed\) (?:\|[^|]*){4}\| ([+-][\d.]+) \|", result["table"])[1]) / 100,
        abs=1e-4)
    assert result["summary"]["ladder"]["test_after"]["n"] == 1
    assert result["load_start"] and result["load_end"]


def test_markdown_table_has_our_rows_and_the_anchors(bench_run: tuple[dict[str, Any], str, Path]) -> None:
    result, stdout, _ = bench_run
    lines = [ln for ln in result["table"].splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| strategy | HV | proxy top-1 | test top-1 before FT | after FT |")
    assert "ORT ms b64 (speed-up)" in lines[0] and "FT epochs" in lines[0]
    assert set(lines[1]) <= set("|-")
    names = [ln.split("|")[1].strip() for ln in lines[2:]]
    assert names[0].startswith("base (10 epochs)")
    assert names[1:4] == ["ladder (1 seed)", "uniform:points=3 (1 seed)", "ladder @73%, ×2 ch (1 seed)"]
    assert any("FastNAS" in n for n in names) and any("AMC" in n for n in names)
    assert sum("survey Table 5" in n for n in names) == 2
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    fastnas = next(ln for ln in lines if "FastNAS" in ln)
    assert "| 60.4 | 90.30 | -0.60 | 0.729× |" in fastnas and fastnas.rstrip().endswith("| 120 |")
    assert re.search(r"\| ladder \(1 seed\) \| 0\.\d{3} \| \d+\.\d\d \|", result["table"])
    assert result["table"] in stdout and "load average at start" in stdout


def test_merge_averages_seeds_of_separate_runs(bench_run: tuple[dict[str, Any], str, Path],
                                              tmp_path: Path) -> None:
    result, _, out_json = bench_run
    other = json.loads(out_json.read_text())
    for rows in other["runs"].values():
        for row in rows:
            row["seed"] = 1
            row["test_after"] = row["test_after"] + 0.02  # a second seed two points higher
    second = tmp_path / "s1.json"
    second.write_text(json.dumps(other))
    merged = _bench().main(["--merge", str(out_json), str(second), "--json", str(tmp_path / "all.json")])
    assert set(merged["runs"]) == set(result["runs"])
    ladder = merged["summary"]["ladder"]["test_after"]
    first = result["runs"]["ladder"][0]["test_after"]
    assert ladder["n"] == 2 and abs(ladder["mean"] - (first + 0.01)) < 1e-9
    assert "| ladder (2 seeds) |" in merged["table"] and "| base (10 epochs) |" in merged["table"]
    assert json.loads((tmp_path / "all.json").read_text())["table"] == merged["table"]
    other["settings"]["evals"] = 99
    second.write_text(json.dumps(other))
    with pytest.raises(UserInputError, match="differs .* in evals"):
        _bench().main(["--merge", str(out_json), str(second)])


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    bench = _bench()
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(UserInputError, match="--strategies 'nope'"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--strategies", "nope"])
    with pytest.raises(UserInputError, match="strategy 'ladder' has no setting 'nope'"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--strategies", "ladder:nope=1"])
    with pytest.raises(UserInputError, match="'polish_fraction' is not KEY=VALUE"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--strategies",
                    "ladder:polish_fraction"])
    with pytest.raises(UserInputError, match="--evals=0"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--evals", "0"])
    with pytest.raises(UserInputError, match="unknown budget metric 'speed'"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--budget", "macs=50%",
                    "speed=2x"])
    with pytest.raises(UserInputError, match="--latency-batch=0"):
        bench.main(["--checkpoint", str(ckpt), "--data", f"imagefolder:{tmp_path}", "--latency-batch", "0"])
    with pytest.raises(UserInputError, match="--checkpoint is missing"):
        bench.main(["--data", f"imagefolder:{tmp_path}"])
    assert not (tmp_path / "runs").exists()


def test_a_latency_budget_predicts_latency_at_the_batch_asked(
        bench_run: tuple[dict[str, Any], str, Path]) -> None:
    """``--budget macs=.. latency=..``: every search predicts latency (the per-layer table) at
    ``--latency-batch`` and its fine-tuned point meets both budgets on the predicted figures."""
    import contextlib
    import io

    root = bench_run[2].parent
    with contextlib.redirect_stdout(io.StringIO()):
        result = _bench().main([
            "--checkpoint", str(root / "base.pt"), "--data", f"imagefolder:{root / 'data'}",
            "--model", "test_convnet", "--strategies", "uniform:points=3", "--evals", "3", "--seeds", "0",
            "--budget", "macs=80%", "latency=95%", "--latency-batch", "4", "--finetune-epochs", "1",
            "--val-samples", "40", "--threads", "1", "--latency-rounds", "1", "--out", str(root / "runs-lat")])
    row = result["runs"]["uniform:points=3"][0]
    assert row["budget"] == "macs=80% latency=95%"
    spec = json.loads((Path(row["run_dir"]) / "spec.json").read_text())
    assert spec["budgets"] == ["macs=80%", "latency=95%"]
    assert (spec["evaluator"]["latency"], spec["evaluator"]["latency_batch"]) == ("predicted", 4)
    base = json.loads((Path(row["run_dir"]) / "base.json").read_text())["metrics"]
    pareto = json.loads((Path(row["run_dir"]) / "pareto.json").read_text())
    point = next(p for p in pareto["points"] if str(p["id"]) == str(row["point_id"]))
    assert point["metrics"]["latency_ms"] <= 0.95 * base["latency_ms"] + 1e-9
    assert row["macs_ratio"] <= 0.8 + 1e-9
