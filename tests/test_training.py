"""Base-model training, through the library and through the real ``autocompress train`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from autocompress.data import load_data
from autocompress.models import create_model, load_checkpoint
from autocompress.training import TrainConfig, accuracy, train_model

CLI = [sys.executable, "-m", "autocompress.cli"]


def test_training_learns_and_is_seeded() -> None:
    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    a = create_model("test_mlp")
    before = accuracy(a, data)
    result = train_model(a, data, TrainConfig(epochs=3, seed=5))
    assert result.val_acc > 0.85 > before
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    torch.manual_seed(0)
    b = create_model("test_mlp")
    torch.manual_seed(0)
    c = create_model("test_mlp")
    train_model(b, data, TrainConfig(epochs=1, seed=5))
    train_model(c, data, TrainConfig(epochs=1, seed=5))
    assert all(torch.equal(p, q) for p, q in zip(b.state_dict().values(), c.state_dict().values(), strict=True))


def test_train_cli_one_epoch_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "base.pt"
    proc = subprocess.run(
        CLI + ["train", "--model", "resnet20", "--data", "digits", "--epochs", "1", "--seed", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoint"] == str(out)
    meta = json.loads(out.with_name("base.pt.json").read_text())
    assert meta["model"] == "resnet20" and meta["data"] == "digits" and meta["input_shape"] == [3, 32, 32]
    assert 0.0 <= meta["val_acc"] <= 1.0 and len(meta["history"]) == 1
    model = load_checkpoint(create_model("resnet20"), out)  # the checkpoint loads into the model
    assert model.fc.out_features == 10
    # A second run refuses to overwrite silently, with exit status 2 and one line.
    again = subprocess.run(CLI + ["train", "--model", "resnet20", "--epochs", "1", "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_train_cli_bad_model_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(CLI + ["train", "--model", "resnet21", "--out", str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'resnet21'" in proc.stderr and "Traceback" not in proc.stderr
