"""``benchmarks/bench_proxy_cifar10.py`` end to end on a tiny train/test image folder."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, per_class: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((16, 16, 3), 40, np.int64)
            arr[..., c] = 220
            arr = np.clip(arr + rng.integers(-25, 26, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"c{c}" / f"{i}.png")


@pytest.mark.timeout(300)
def test_signals_are_ranked_against_fine_tuned_test_top1(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autocompress.cli import main

    _folder(tmp_path / "data" / "train", 20, seed=0)
    _folder(tmp_path / "data" / "test", 5, seed=1)
    data = f"imagefolder:{tmp_path / 'data'}"
    ckpt = tmp_path / "base.pt"
    trained = CliRunner().invoke(main, ["train", "--model", "test_convnet", "--data", data, "--epochs", "2",
                                        "--out", str(ckpt)])
    assert trained.exit_code == 0, trained.output
    spec = importlib.util.spec_from_file_location("bench_proxy_cifar10", ROOT / "benchmarks" / "bench_proxy_cifar10.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--checkpoint", str(ckpt), "--data", data, "--model", "test_convnet", "--policies", "4",
                      "--signal-steps", "0", "3", "--reference-steps", "3", "--val-samples", "12", "--threads", "1",
                      "--json", str(tmp_path / "trust.json")])
    assert out["policies"] == 4 and len(out["reference"]) == 4
    assert all(0.0 < r <= 0.5 + 1e-9 for r in out["macs_ratio"])  # every policy under macs=50%
    assert all(0.0 <= a <= 1.0 for a in out["reference"])
    # the reference is scored on the 15 test images: multiples of 1/15
    assert all(abs(a * 15 - round(a * 15)) < 1e-6 for a in out["reference"])
    assert set(out["signals"]) == {"0", "3"}
    for signal in out["signals"].values():
        assert len(signal["acc"]) == 4 and signal["s_per_candidate"] > 0
        rho = signal["spearman"]
        assert math.isnan(rho) or -1.0 <= rho <= 1.0  # NaN only when one side has no spread
    controls = out["controls"]
    assert controls["near_budget"]["n"] == 2 and set(controls["near_budget"]["signals"]) == {"0", "3"}
    rho = controls["macs_spearman"]
    assert math.isnan(rho) or -1.0 <= rho <= 1.0
    assert json.loads((tmp_path / "trust.json").read_text())["controls"]["near_budget"]["n"] == 2
