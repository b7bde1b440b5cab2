"""Data registry: named loaders returning deterministic, seeded train / calibration / validation splits."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from autocompress.errors import UserInputError

InputShape = tuple[int, int, int]


@dataclass
class DataSplits:
    """Disjoint train / validation subsets, plus a calibration subset drawn from train.

    Calibration data (for BatchNorm recalibration, activation ranges, Taylor importance) comes from the
    training pool and never from validation, so accuracy is always scored on unseen samples.
    """

    name: str
    train: Dataset
    calib: Dataset
    val: Dataset
    num_classes: int
    input_shape: InputShape
    indices: dict[str, list[int]] = field(default_factory=dict)

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A single-process loader (in-memory data needs no worker processes on 2 cores)."""
        ds = {"train": self.train, "calib": self.calib, "val": self.val}[split]
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """The whole split stacked as (inputs, labels) tensors."""
        ds = {"train": self.train, "calib": self.calib, "val": self.val}[split]
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)

    def batches(self, split: str, batch_size: int = 128) -> Iterator[Tensor]:
        """Input batches only (for calibration)."""
        for x, _ in self.loader(split, batch_size):
            yield x


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set loader."""

    name: str
    loader: Callable[..., tuple[Dataset, int]]
    description: str
    needs_root: bool


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, description: str, needs_root: bool = False
) -> Callable[[Callable[..., tuple[Dataset, int]]], Callable[..., tuple[Dataset, int]]]:
    """Register ``loader(root, input_shape) -> (dataset, num_classes)``; duplicates raise."""

    def deco(fn: Callable[..., tuple[Dataset, int]]) -> Callable[..., tuple[Dataset, int]]:
        if name in _DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        _DATASETS[name] = DatasetEntry(name, fn, description, needs_root)
        return fn

    return deco


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered data set names matching a glob (plus ``imagefolder:PATH``, which takes a path)."""
    return [n for n in sorted(_DATASETS) if fnmatch.fnmatch(n, pattern)]


def dataset_entry(name: str) -> DatasetEntry:
    """The entry for ``name``; unknown names list the valid ones."""
    if name not in _DATASETS:
        raise UserInputError(
            f"unknown data set {name!r}; valid: {', '.join(sorted(_DATASETS))}, imagefolder:PATH"
        )
    return _DATASETS[name]


def split_indices(
    n: int, *, val_size: int | float, calib_size: int, train_size: int | None, seed: int
) -> dict[str, list[int]]:
    """Seeded disjoint train/val split of ``range(n)``; calib is the head of the shuffled train pool."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise UserInputError(f"val_size={val_size!r} leaves no training data out of {n} samples")
    perm = np.random.default_rng(seed).permutation(n)
    val = perm[:n_val]
    pool = perm[n_val:]
    train = pool if train_size is None else pool[: int(train_size)]
    calib = pool[: min(int(calib_size), len(pool))]
    return {"train": train.tolist(), "calib": calib.tolist(), "val": sorted(val.tolist())}


def load_data(
    name: str,
    *,
    root: str | None = None,
    input_shape: InputShape = (3, 32, 32),
    val_size: int | float = 0.2,
    calib_size: int = 256,
    train_size: int | None = None,
    seed: int = 0,
) -> DataSplits:
    """Load a data set and split it deterministically.

    Args:
        name: ``digits`` (bundled, offline), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``
            (from ``root``), or ``imagefolder:PATH``.
        root: directory holding the data set in torchvision's on-disk format; never downloads.
        input_shape: (C, H, W) the model expects; images are resized and channels repeated to fit.
        val_size: validation samples (int) or fraction (float < 1).
        calib_size: calibration samples, drawn from the training pool.
        train_size: cap on training samples (None: all that remain).
        seed: the same seed gives the same indices.

    Example:
        >>> splits = load_data("digits", input_shape=(3, 32, 32), seed=0)
    """
    if name.startswith("imagefolder:"):
        from autocompress.data.torchvision_sets import load_imagefolder

        dataset, num_classes = load_imagefolder(name.split(":", 1)[1], input_shape)
    else:
        entry = dataset_entry(name)
        if entry.needs_root and not root:
            raise UserInputError(f"data set {name!r} needs --data-root pointing at its local files")
        dataset, num_classes = entry.loader(root, input_shape)
    idx = split_indices(len(dataset), val_size=val_size, calib_size=calib_size, train_size=train_size, seed=seed)
    return DataSplits(
        name=name,
        train=Subset(dataset, idx["train"]),
        calib=Subset(dataset, idx["calib"]),
        val=Subset(dataset, idx["val"]),
        num_classes=num_classes,
        input_shape=tuple(input_shape),  # type: ignore[arg-type]
        indices=idx,
    )
