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
    out = tmp_path / "runs" / "base.pt"  # a folder that does not exist yet is made
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
    proc = subprocess.run(CLI + ["train", "--model", "resnet21", "--out", str(tmp_path / "new" / "x.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'resnet21'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()  # refused before anything was created


def test_digits_keep_their_schedule_and_base_model_key() -> None:
    """The bundled digits train exactly as before: one-cycle schedule, no augmentation, same key."""
    import hashlib

    from autocompress.training import base_model_key

    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    models = []
    for schedule in (None, "onecycle"):
        torch.manual_seed(0)
        m = create_model("test_mlp")
        result = train_model(m, data, TrainConfig(epochs=1, seed=2, schedule=schedule))
        assert result.schedule == "onecycle" and result.augment is False and result.test_acc is None
        models.append(m)
    assert all(torch.equal(p, q) for p, q in zip(*(m.state_dict().values() for m in models), strict=True))
    torch.manual_seed(0)
    cosine = create_model("test_mlp")
    train_model(cosine, data, TrainConfig(epochs=1, seed=2, schedule="cosine"))
    assert not all(torch.equal(p, q) for p, q in zip(cosine.state_dict().values(),
                                                      models[0].state_dict().values(), strict=True))
    old = {"model": "resnet20", "data": "digits", "extra": {},
           "train": {"epochs": 10, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64, "seed": 0}}
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert base_model_key("resnet20", "digits", TrainConfig()) == expected
    assert base_model_key("resnet20", "digits", TrainConfig(augment=True)) != expected


def test_step_callback_and_bad_schedule() -> None:
    import pytest

    from autocompress.errors import UserInputError

    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    steps: list[tuple[int, int]] = []
    train_model(create_model("test_mlp"), data, TrainConfig(epochs=2, batch_size=256, seed=0),
                on_step=lambda step, total: steps.append((step, total)))
    per_epoch = -(-len(data.train) // 256)
    assert steps == [(s, per_epoch) for s in range(1, per_epoch + 1)] * 2
    with pytest.raises(UserInputError, match="schedule='linear'; expected one of onecycle, cosine"):
        TrainConfig(schedule="linear")


def test_slimming_l1_drives_the_batchnorm_scales_down() -> None:
    """Network slimming: the L1 subgradient on gamma shrinks sum|gamma| against lambda = 0, same seed."""
    import pytest

    from autocompress.errors import UserInputError

    data = load_data("digits", input_shape=(3, 8, 8), seed=0)
    sums = {}
    for lam in (0.0, 0.3):
        torch.manual_seed(0)
        model = create_model("test_resnet")
        train_model(model, data, TrainConfig(epochs=1, batch_size=128, seed=0, slimming_l1=lam))
        sums[lam] = sum(float(m.weight.abs().sum()) for m in model.modules()
                        if isinstance(m, torch.nn.BatchNorm2d))
    assert sums[0.3] < 0.8 * sums[0.0], sums
    assert TrainConfig(slimming_l1=0).slimming_l1 is None  # off, and out of the base model's key
    for bad in (-1e-4, float("nan"), "1e-4"):
        with pytest.raises(UserInputError, match="slimming_l1=.*allowed: a finite number >= 0"):
            TrainConfig(slimming_l1=bad)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="slimming_l1=0.0001 needs BatchNorm .* TinyMLP"):
        train_model(create_model("test_mlp"), data, TrainConfig(epochs=1, slimming_l1=1e-4))


def test_run_train_records_slimming_l1(tmp_path: Path) -> None:
    """``autocompress train --slimming-l1`` (its bad values: tests/test_bad_inputs.py)."""
    from autocompress.train_cli import run_train

    out = tmp_path / "base.pt"
    run_train(model="test_resnet", data="digits", epochs=1, out=str(out), show_progress=False,
              slimming_l1=1e-4, device="cpu")
    assert json.loads(out.with_name("base.pt.json").read_text())["train"]["slimming_l1"] == 1e-4


def _heldout_folder(root: Path) -> Path:
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (120 * c, 20 * i, 90)).save(root / split / name / f"{i}.png")
    return root


def test_train_cli_reports_test_top1_for_a_held_out_folder(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autocompress.cli import main

    folder = _heldout_folder(tmp_path / "data")
    out = tmp_path / "m.pt"
    args = ["train", "--model", "test_convnet", "--data", f"imagefolder:{folder}", "--epochs", "1",
            "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert 0 <= record["test_acc"] <= 1 and 0 <= record["val_acc"] <= 1
    meta = json.loads(out.with_name("m.pt.json").read_text())
    assert meta["test_acc"] == record["test_acc"]
    assert meta["train"]["augment"] is True and meta["train"]["schedule"] == "cosine"
    assert len(meta["norm_stats"][0]) == 3 and meta["seconds_per_epoch"] > 0
    res = CliRunner().invoke(main, [*args, "--force", "--no-augment"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.with_name("m.pt.json").read_text())["train"]["augment"] is False
    digits = CliRunner().invoke(main, ["train", "--model", "test_mlp", "--epochs", "1", "--augment",
                                       "--out", str(tmp_path / "d.pt")])
    assert digits.exit_code == 0, digits.output
    assert "test_acc" not in json.loads(digits.stdout)
    assert json.loads((tmp_path / "d.pt.json").read_text())["train"]["augment"] is True


def test_cached_base_of_a_held_out_folder_is_keyed_by_its_recipe(tmp_path: Path) -> None:
    """Image folders are now standardised with training-split statistics and trained with their own
    recipe: a base cached under the earlier key must not be served for them."""
    from autocompress import problem as problem_mod
    from autocompress.training import base_model_key

    folder = _heldout_folder(tmp_path / "data")
    splits = load_data(f"imagefolder:{folder}", input_shape=(1, 8, 8), val_size=2, calib_size=2)
    path = problem_mod._trained_base(create_model("test_mlp", num_classes=2), "test_mlp", splits,
                                     data=f"imagefolder:{folder}", data_root=None, seed=0, epochs=1,
                                     val_size=2, calib_size=2, shape=(1, 8, 8), root=tmp_path / "cache",
                                     progress=False)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["recipe"] == {"schedule": "cosine", "augment": True, "norm": "train-split"}
    plain = {"data_root": None, "num_classes": 2, "input_shape": [1, 8, 8], "val_size": 2, "calib_size": 2}
    assert base_model_key("test_mlp", f"imagefolder:{folder}", TrainConfig(epochs=1, seed=0), plain) not in path.name


class _Stop(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """A run stopped after epoch 1 and started again with its state file ends where an
    uninterrupted run ends: weights, history and test top-1 alike."""
    folder = _heldout_folder(tmp_path / "data")
    data = load_data(f"imagefolder:{folder}", input_shape=(3, 32, 32), val_size=2, calib_size=2)
    config = TrainConfig(epochs=3, seed=4, batch_size=4)
    torch.manual_seed(0)
    whole = create_model("test_convnet", num_classes=data.num_classes)
    expected = train_model(whole, data, config)

    def stop_after_first(epoch: int, loss: float, val: float) -> None:
        if epoch == 1:
            raise _Stop

    state = tmp_path / "m.pt.partial"
    torch.manual_seed(0)
    first = create_model("test_convnet", num_classes=data.num_classes)
    try:
        train_model(first, data, config, on_epoch=stop_after_first, state_path=state)
    except _Stop:
        pass
    assert state.is_file()
    torch.manual_seed(1)  # a different initialisation: everything must come from the state file
    resumed = create_model("test_convnet", num_classes=data.num_classes)
    result = train_model(resumed, data, config, state_path=state)
    assert result.history == expected.history and result.test_acc == expected.test_acc
    assert all(torch.equal(p, q) for p, q in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True))
    assert all(p.is_contiguous() for p in resumed.parameters())  # handed back in the default layout


def test_train_cli_refuses_a_state_of_other_settings_and_force_starts_over(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autocompress.cli import main

    out = tmp_path / "m.pt"
    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    state = tmp_path / "m.pt.partial"
    try:
        train_model(create_model("test_mlp"), data, TrainConfig(epochs=2, seed=0),
                    on_epoch=lambda e, loss, v: (_ for _ in ()).throw(_Stop()), state_path=state)
    except _Stop:
        pass
    args = ["train", "--model", "test_mlp", "--epochs", "3", "--out", str(out)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "other settings" in refused.output and str(state) in refused.output
    assert not out.exists() and state.is_file()  # nothing lost, nothing written
    same = CliRunner().invoke(main, ["train", "--model", "test_mlp", "--epochs", "2", "--out", str(out)])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["checkpoint"] == str(out) and not state.exists()
    assert json.loads(out.with_name("m.pt.json").read_text())["resumed_after_epoch"] == 1
    state.write_bytes(b"torn")
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(out.with_name("m.pt.json").read_text())["resumed_after_epoch"] == 0
