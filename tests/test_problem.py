"""Problem: builds from settings, trains its base model once and reuses it, loads checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autocompress.problem as problem_mod
from autocompress.errors import UserInputError
from autocompress.evaluators import CompressionEvaluator, EvaluatorConfig, model_fingerprint
from autocompress.problem import Problem

CFG = EvaluatorConfig(latency="none")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every real base-model training run Problem.build starts."""
    calls: list[str] = []
    real = problem_mod.train_model

    def counting(model, data, config, on_epoch=None, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(type(model).__name__)
        return real(model, data, config, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(problem_mod, "train_model", counting)
    return calls


@pytest.mark.timeout(300)
def test_builds_trains_once_and_reuses_the_cached_base(tmp_path: Path, train_calls: list[str]) -> None:
    first = Problem.build("test_mlp", train_epochs=3, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == ["TinyMLP"]
    assert first.checkpoint_path is not None and first.checkpoint_path.is_file()
    assert first.checkpoint_path.parent == tmp_path / "base"
    assert not first.model.training
    assert first.example_input.shape == (1, 1, 8, 8) and first.input_shape == (1, 8, 8)
    assert first.num_classes == 10 and isinstance(first.evaluator, CompressionEvaluator)
    assert first.space.decision_points and first.model_name == "test_mlp"
    assert first.base.ok and first.base.metrics["acc"] > 0.8  # really trained

    second = Problem.build("test_mlp", train_epochs=3, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == ["TinyMLP"]  # reused, not trained again
    assert second.checkpoint_path == first.checkpoint_path
    assert model_fingerprint(second.model) == model_fingerprint(first.model)
    assert second.base.cached  # the evaluation cache is shared across runs too

    third = Problem.from_settings(first.settings)  # what a worker process does
    assert train_calls == ["TinyMLP"] and third.settings["evaluator"] == first.settings["evaluator"]
    assert model_fingerprint(third.model) == model_fingerprint(first.model)
    assert third.space.names == first.space.names

    Problem.build("test_mlp", train_epochs=4, evaluator=CFG, cache_dir=tmp_path, progress=False)
    Problem.build("test_mlp", train_epochs=3, seed=1, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert len(train_calls) == 3  # epochs and seed are part of the key


def test_checkpoint_and_module_inputs(tmp_path: Path, train_calls: list[str]) -> None:
    torch.manual_seed(3)
    from autocompress.models import create_model

    net = create_model("test_mlp")
    ckpt = tmp_path / "mine.pt"
    torch.save(net.state_dict(), ckpt)
    p = Problem.build("test_mlp", checkpoint=ckpt, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == [] and p.checkpoint_path == ckpt
    assert model_fingerprint(p.model) == model_fingerprint(net)
    q = Problem.build(net, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == [] and q.model is net and q.model_name == "TinyMLP"
    assert q.settings["model"] == "TinyMLP" and q.settings["evaluator"]["latency"] == "none"
    with pytest.raises(UserInputError, match="module object"):
        Problem.from_settings(q.settings)


def test_bad_settings_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown model 'nope'"):
        Problem.build("nope", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="num_classes=3"):
        Problem.build("test_mlp", num_classes=3, train_epochs=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="train_epochs"):
        Problem.build("test_mlp", train_epochs=-1, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="does not exist"):
        Problem.build("test_mlp", checkpoint=tmp_path / "missing.pt", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="input shape"):
        Problem.build("test_mlp", input_shape=(3, 16, 16), train_epochs=0, cache_dir=tmp_path,
                      progress=False)


@pytest.mark.timeout(300)
def test_default_problem_is_tiny_and_trained(tmp_path: Path) -> None:
    p = Problem.default(cache_dir=tmp_path, progress=False)
    assert p.model_name == "test_resnet" and p.data.name == "digits"
    assert p.evaluator.config.latency == "none" and "latency_ms" not in p.evaluator.metrics
    assert sum(t.numel() for t in p.model.parameters()) < 100_000
    assert p.base.metrics["acc"] > 0.9


def _noise_imagefolder(root: Path, classes: int = 10, per_class: int = 12) -> Path:
    """An image folder of random-noise 8x8 PNGs, ``classes`` sub-directories."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


@pytest.mark.timeout(300)
def test_a_digits_checkpoint_on_other_data_is_not_served_digits_accuracies(tmp_path: Path) -> None:
    """The evaluation cache key covers the data: noise images get their own (near-chance) scores."""
    digits = Problem.build("test_mlp", train_epochs=3, evaluator=CFG, cache_dir=tmp_path,
                           progress=False)
    assert digits.base.metrics["acc"] > 0.8 and digits.checkpoint_path is not None
    folder = _noise_imagefolder(tmp_path / "noise")
    noise = Problem.build("test_mlp", checkpoint=digits.checkpoint_path,
                          data=f"imagefolder:{folder}", calib_size=32, evaluator=CFG,
                          cache_dir=tmp_path, progress=False)
    assert noise.evaluator.fingerprint == digits.evaluator.fingerprint  # same model, same code
    assert not noise.base.cached
    assert noise.base.metrics["acc"] < 0.5
    policy = digits.space.uniform(prune=0.25)
    assert digits.evaluator.evaluate(policy).metrics["acc"] > 0.5
    got = noise.evaluator.evaluate(policy)
    assert not got.cached and got.metrics["acc"] < 0.5
    # the same build again reuses its own results
    again = Problem.build("test_mlp", checkpoint=digits.checkpoint_path,
                          data=f"imagefolder:{folder}", calib_size=32, evaluator=CFG,
                          cache_dir=tmp_path, progress=False)
    assert again.base.cached and again.base.metrics == noise.base.metrics


_TRAIN_FAILS = """
from torch import nn


class TrainFails(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        if self.training:
            raise RuntimeError("cannot train")
        return self.fc(x.flatten(1))


def build(num_classes=10):
    return TrainFails(num_classes)
"""


def test_lock_files_are_removed_after_failed_and_successful_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trainfails_mod.py").write_text(_TRAIN_FAILS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="cannot train"):
        Problem.build("trainfails_mod:build", train_epochs=1, evaluator=CFG, cache_dir=cache,
                      progress=False)
    assert (cache / "base").is_dir()
    assert list((cache / "base").iterdir()) == []  # no 0-byte lock file left behind
    Problem.build("test_mlp", train_epochs=1, evaluator=CFG, cache_dir=cache, progress=False)
    left = sorted(p.suffix for p in (cache / "base").iterdir())
    assert ".pt" in left and ".lock" not in left  # the checkpoint (and its metadata), no lock


def test_file_lock_excludes_while_lock_files_are_removed(tmp_path: Path) -> None:
    """Holders unlink the lock file on exit; waiters on the removed file start over, so at most
    one holder at a time even while files come and go."""
    import threading
    import time

    lock = tmp_path / "locks" / "x.lock"
    inside: list[int] = []
    overlaps: list[int] = []
    done: list[int] = []

    def worker(i: int) -> None:
        for _ in range(15):
            with problem_mod._file_lock(lock):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(i)
                time.sleep(0.001)
                inside.remove(i)
        done.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(done) == [0, 1, 2, 3] and overlaps == []
    assert not lock.exists()
