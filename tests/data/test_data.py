"""Data registry: shapes, deterministic seeded splits, clear errors for missing files and bad names."""

from __future__ import annotations

import pytest
import torch

from autocompress.data import list_datasets, load_data, split_indices
from autocompress.errors import UserInputError


def test_digits_fits_model_input_shape() -> None:
    splits = load_data("digits", input_shape=(3, 32, 32), seed=0)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    assert splits.num_classes == 10
    assert len(splits.train) + len(splits.val) == 1797
    xs, _ = splits.tensors("val")
    assert abs(float(xs.mean())) < 0.2 and 0.8 < float(xs.std()) < 1.2  # normalised
    grey = load_data("digits", input_shape=(1, 8, 8))
    assert grey.train[0][0].shape == (1, 8, 8)


def test_splits_are_seeded_disjoint_and_calib_from_train() -> None:
    a = load_data("digits", input_shape=(1, 8, 8), seed=3, calib_size=100, val_size=300)
    b = load_data("digits", input_shape=(1, 8, 8), seed=3, calib_size=100, val_size=300)
    c = load_data("digits", input_shape=(1, 8, 8), seed=4, calib_size=100, val_size=300)
    assert a.indices == b.indices
    assert a.indices["val"] != c.indices["val"]
    assert len(a.val) == 300 and len(a.calib) == 100
    assert not set(a.indices["train"]) & set(a.indices["val"])
    assert set(a.indices["calib"]) <= set(a.indices["train"])


def test_split_sizes_validated() -> None:
    idx = split_indices(100, val_size=0.25, calib_size=10, train_size=30, seed=0)
    assert len(idx["val"]) == 25 and len(idx["train"]) == 30 and len(idx["calib"]) == 10
    with pytest.raises(UserInputError, match="val_size=100"):
        split_indices(100, val_size=100, calib_size=10, train_size=None, seed=0)


def test_loader_is_single_process_and_seeded() -> None:
    splits = load_data("digits", input_shape=(1, 8, 8))
    loader = splits.loader("train", 32, shuffle=True, seed=1)
    assert loader.num_workers == 0
    first = next(iter(loader))[1]
    again = next(iter(splits.loader("train", 32, shuffle=True, seed=1)))[1]
    assert torch.equal(first, again)


def test_registry_lists_and_rejects() -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100"} <= set(list_datasets())
    with pytest.raises(UserInputError, match="unknown data set 'digitz'.*digits"):
        load_data("digitz")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_local_datasets_never_download(name: str, tmp_path) -> None:
    with pytest.raises(UserInputError, match="needs --data-root"):
        load_data(name)
    with pytest.raises(UserInputError, match=f"'{name}' not found under --data-root.*expected"):
        load_data(name, root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing was fetched


def test_cifar10_loads_from_torchvision_layout(tmp_path, monkeypatch) -> None:
    import pickle

    import numpy as np

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
        with open(base / fname, "wb") as fh:
            pickle.dump(batch, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, fh)
    import torchvision.datasets.cifar as tv_cifar

    # our synthetic files have other checksums than the real archive
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    splits = load_data("cifar10", root=str(tmp_path), input_shape=(3, 32, 32), val_size=6, calib_size=4)
    # The 20 training images are split into train/val; the 4 test images are held out as given.
    assert len(splits.train) + len(splits.val) == 20 and len(splits.test) == 4
    assert splits.train[0][0].shape == (3, 32, 32)
    assert splits.augment and splits.flip_invariant and splits.schedule == "cosine"
    x_test, _ = splits.tensors("test")
    raw = torch.as_tensor(np.stack([pickle.load(open(base / "test_batch", "rb"))["data"]])).reshape(4, 3, 32, 32)
    mean, std = (torch.tensor(v).reshape(3, 1, 1) for v in splits.norm_stats)
    assert torch.allclose(x_test, (raw.float() / 255 - mean) / std, atol=1e-5)


def test_imagefolder(tmp_path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (20, 20), color=(i * 40, 10, 200 if cls == "dog" else 0)).save(tmp_path / cls / f"{i}.png")
    splits = load_data(f"imagefolder:{tmp_path}", input_shape=(3, 16, 16), val_size=2, calib_size=2)
    assert splits.num_classes == 2
    assert splits.val[0][0].shape == (3, 16, 16)
    with pytest.raises(UserInputError, match="is not a directory"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")


def _folder(root, classes, n=3):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (60 * c, 30 * i, 90)).save(root / name / f"{i}.jpg")


def test_imagefolder_one_class_is_refused(tmp_path) -> None:
    _folder(tmp_path, ["cat"])
    with pytest.raises(UserInputError, match="at least 2 class"):
        load_data(f"imagefolder:{tmp_path}", input_shape=(3, 8, 8), val_size=1, calib_size=1)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_imagefolder_corrupt_image_is_named_before_training(tmp_path, damage: str) -> None:
    _folder(tmp_path, ["cat", "dog"])
    bad = tmp_path / "dog" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:40] if damage == "truncate" else b"no image here")
    with pytest.raises(UserInputError, match=r"image '.*dog/2\.jpg' cannot be read") as info:
        load_data(f"imagefolder:{tmp_path}", input_shape=(3, 8, 8), val_size=2, calib_size=2)
    assert "\n" not in str(info.value)


def test_imagefolder_reads_fail_naming_the_file(tmp_path, monkeypatch) -> None:
    """In a folder too large to hold in memory, a file that breaks after the up-front check is
    still named in one line when it is read."""
    from autocompress.data import _images, torchvision_sets

    monkeypatch.setattr(_images, "MAX_IN_MEMORY_BYTES", 100)
    _folder(tmp_path, ["cat", "dog"])
    ds = torchvision_sets.load_imagefolder(str(tmp_path), (3, 8, 8)).train
    bad = tmp_path / "cat" / "1.jpg"
    bad.write_bytes(b"broken later")
    assert isinstance(ds, torchvision_sets._FittedImageFolder)
    idx = [f for f, _ in ds.folder.samples].index(str(bad))
    with pytest.raises(UserInputError, match=r"cat/1\.jpg"):
        ds[idx]
