"""Image folders with train/ and test/ (or val/): held-out splits as given, statistics of the training
split, in-memory uint8 decoding with a disk cache, and augmentation of training batches only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.data import Augmentation, _images, load_data
from autocompress.errors import UserInputError

CLASSES = ("cat", "dog", "frog")


def _make(root: Path, per_class: int, blue: int, seed: int, ext: str = "png") -> None:
    """Random images; every image of this folder has blue channel ``blue`` (tells the folders apart)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            arr[..., 0] = np.clip(arr[..., 0].astype(int) // 2 + 60 * c, 0, 255)
            arr[..., 2] = blue
            Image.fromarray(arr).save(root / name / f"{i}.{ext}")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    _make(tmp_path / "data" / "train", per_class=8, blue=0, seed=0)
    _make(tmp_path / "data" / "test", per_class=3, blue=255, seed=1)
    return tmp_path / "data"


def _raw(splits, split: str) -> torch.Tensor:
    """A split's inputs with the normalisation undone, in [0, 1]."""
    x, _ = splits.tensors(split)
    mean, std = (torch.tensor(v).reshape(1, -1, 1, 1) for v in splits.norm_stats)
    return x * std + mean


def test_held_out_split_is_the_test_folder_and_val_calib_come_from_train(layout: Path) -> None:
    a = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4, seed=0)
    assert a.num_classes == 3 and len(a.test) == 9
    assert len(a.train) + len(a.val) == 24  # only train/ is split
    assert not set(a.indices["train"]) & set(a.indices["val"])
    assert set(a.indices["calib"]) <= set(a.indices["train"])
    assert all(0 <= i < 24 for i in a.indices["train"] + a.indices["val"])
    # Test images (blue 255) are exactly the test folder; train/val/calib hold none of them.
    assert torch.allclose(_raw(a, "test")[:, 2], torch.ones(1), atol=1e-4)
    for split in ("train", "val", "calib"):
        assert float(_raw(a, split)[:, 2].abs().max()) < 1e-4
    assert sorted(a.tensors("test")[1].tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    # Seeded: the same seed the same indices, another seed other ones.
    b = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4, seed=0)
    c = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4, seed=1)
    assert a.indices == b.indices and a.indices["val"] != c.indices["val"]
    assert torch.equal(a.tensors("val")[0], b.tensors("val")[0])


def test_val_folder_is_held_out_too_and_flat_folders_keep_the_seeded_split(tmp_path: Path) -> None:
    _make(tmp_path / "a" / "train", per_class=4, blue=0, seed=0)
    _make(tmp_path / "a" / "val", per_class=2, blue=255, seed=1)
    held = load_data(f"imagefolder:{tmp_path / 'a'}", input_shape=(3, 12, 12), val_size=3, calib_size=2)
    assert len(held.test) == 6 and len(held.train) + len(held.val) == 12
    _make(tmp_path / "flat", per_class=4, blue=0, seed=0)
    flat = load_data(f"imagefolder:{tmp_path / 'flat'}", input_shape=(3, 12, 12), val_size=3, calib_size=2)
    assert flat.test is None and len(flat.train) + len(flat.val) == 12
    with pytest.raises(ValueError, match="no held-out test split"):
        flat.tensors("test")


def test_test_folder_with_other_classes_is_refused(layout: Path) -> None:
    (layout / "test" / "bird").mkdir()
    (layout / "test" / "frog" / "0.png").rename(layout / "test" / "bird" / "0.png")
    with pytest.raises(UserInputError, match=r"test/ and train/ must hold the same class.*bird"):
        load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)


def test_normalisation_statistics_come_from_the_training_split(layout: Path) -> None:
    splits = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)
    base = splits.train.dataset
    assert isinstance(base, _images.ImageTensors) and base.images.dtype == torch.uint8
    train = base.images[splits.indices["train"]].double() / 255
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.std(dim=(0, 2, 3), unbiased=False)
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in splits.norm_stats)
    assert torch.allclose(mean, expected_mean, atol=1e-5)
    assert torch.allclose(std[:2], expected_std[:2], atol=1e-5)
    everything = base.images.double().mean(dim=(0, 2, 3)) / 255  # with the validation images
    assert not torch.allclose(mean[:2], everything[:2], atol=1e-4)
    # The same statistics standardise every split: training images come out at mean 0, std 1.
    x, _ = splits.tensors("train")
    assert torch.allclose(x[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(x[:, :2].std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)


class _Recorder(nn.Module):
    """Records every input it sees, by mode, and learns a little."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen[self.training].append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("augment", [None, False])
def test_augmentation_changes_training_batches_never_evaluation_batches(layout: Path, augment) -> None:
    from autocompress.training import TrainConfig, train_model

    splits = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)
    model = _Recorder(3 * 12 * 12, 3)
    config = TrainConfig(epochs=1, batch_size=8, seed=3, augment=augment)
    result = train_model(model, splits, config)
    plain = [x for x, _ in splits.loader("train", 8, shuffle=True, seed=3)]  # same order, no augmentation
    trained = model.seen[True]
    assert [len(x) for x in trained] == [len(x) for x in plain]
    same = [torch.equal(a, b) for a, b in zip(trained, plain, strict=True)]
    assert result.augment is (augment is None)
    assert not any(same) if augment is None else all(same)
    # Evaluation saw the plain validation split, then the plain test split, never augmented.
    val, test = splits.tensors("val")[0], splits.tensors("test")[0]
    assert torch.equal(torch.cat(model.seen[False]), torch.cat([val, test]))
    assert result.test_acc is not None and 0 <= result.test_acc <= 1


def test_pad_crop_shifts_and_flips_whole_batches() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    outs = [Augmentation("pad_crop", flip=False, pad=2)(x, gen) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o in outs:  # each sample is one window of the zero-padded sample
        for i in range(2):
            windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
            assert any(torch.equal(o[i], win) for win in windows)
    flipped = Augmentation("pad_crop", flip=True, pad=0)
    seen = {torch.equal(flipped(x, gen)[0], x[0].flip(-1)) for _ in range(20)}
    assert seen == {True, False}
    big = Augmentation("resized_crop", flip=True)(torch.randn(4, 3, 96, 96), gen)
    assert big.shape == (4, 3, 96, 96)


def test_per_data_set_defaults() -> None:
    digits = load_data("digits", input_shape=(1, 8, 8))
    assert digits.augmentation() is None and digits.schedule == "onecycle" and digits.test is None
    assert digits.augmentation(True) == Augmentation("pad_crop", flip=False, pad=1)  # digits never flip
    assert digits.norm_stats is None  # the bundled digits keep their preprocessing
    from autocompress.data._images import default_augmentation

    assert default_augmentation((3, 32, 32), True) == Augmentation("pad_crop", True, pad=4)
    assert default_augmentation((3, 224, 224), True).kind == "resized_crop"


def test_decoded_folder_is_cached_on_disk_and_rebuilt_when_a_file_changes(layout: Path, monkeypatch) -> None:
    from autocompress.data import torchvision_sets

    first = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)
    files = sorted(_images.image_cache_dir().glob("*.npz"))
    assert files, "decoded images were not cached"

    def no_decode(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(torchvision_sets, "_decode_all", no_decode)
    again = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)
    assert torch.equal(first.tensors("train")[0], again.tensors("train")[0])
    monkeypatch.undo()
    changed = layout / "train" / "cat" / "0.png"
    changed.write_bytes(b"not an image any more")
    os.utime(changed, ns=(1, 1))
    with pytest.raises(UserInputError, match=r"cat/0\.png' cannot be read"):
        load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4)


def test_a_planted_cache_file_is_never_unpickled(tmp_path: Path) -> None:
    import pickle

    bad = tmp_path / "x.npz"
    np.savez(bad, images=np.array([{"a": 1}], dtype=object))
    assert _images.load_cached(bad, 1, (3, 2, 2)) is None
    bad.write_bytes(pickle.dumps(object()))
    assert _images.load_cached(bad, 1, (3, 2, 2)) is None


def test_a_home_relative_folder_is_expanded(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``imagefolder:~/data`` as typed (no shell expands ``~`` after the colon) names HOME/data."""
    from autocompress.search import SearchSpec

    monkeypatch.setenv("HOME", str(layout.parent))
    home = load_data("imagefolder:~/data", input_shape=(3, 12, 12), val_size=6, calib_size=4, seed=0)
    plain = load_data(f"imagefolder:{layout}", input_shape=(3, 12, 12), val_size=6, calib_size=4, seed=0)
    assert home.num_classes == 3 and torch.equal(home.tensors("test")[0], plain.tensors("test")[0])
    SearchSpec(data="imagefolder:~/data", out=str(layout.parent / "run")).preflight()  # accepted
