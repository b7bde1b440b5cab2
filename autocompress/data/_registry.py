"""Data registry: named loaders returning deterministic, seeded train / calibration / validation splits."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from autocompress.data._images import (
    Augmentation,
    NormalisedImages,
    TensorBatches,
    default_augmentation,
    tensor_view,
)
from autocompress.errors import UserInputError

InputShape = tuple[int, int, int]


@dataclass
class DataSplits:
    """Disjoint train / validation subsets, a calibration subset drawn from train, and an optional
    held-out test split.

    Calibration data (for BatchNorm recalibration, activation ranges, Taylor importance) comes from the
    training pool and never from validation, so accuracy is always scored on unseen samples. When the
    data set ships a held-out split (an image folder's ``test/``, torchvision's test files), validation
    and calibration are carved from its training part and ``test`` is used only for final figures;
    otherwise ``test`` is None.
    """

    name: str
    train: Dataset
    calib: Dataset
    val: Dataset
    num_classes: int
    input_shape: InputShape
    indices: dict[str, list[int]] = field(default_factory=dict)
    test: Dataset | None = None
    #: Whether training augments by default, and whether random horizontal flips keep the classes.
    augment: bool = False
    flip_invariant: bool = False
    #: Learning-rate schedule base training uses by default (``onecycle`` for the bundled digits).
    schedule: str = "onecycle"
    #: Per-channel (mean, std) fitted on the training split, for data normalised that way.
    norm_stats: tuple[list[float], list[float]] | None = None

    def _split(self, split: str) -> Dataset:
        named = {"train": self.train, "calib": self.calib, "val": self.val, "test": self.test}
        if split not in named:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(named)}")
        ds = named[split]
        if ds is None:
            raise ValueError(f"data set {self.name!r} has no held-out test split")
        return ds

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader | TensorBatches:
        """A single-process loader (in-memory data needs no worker processes on 2 cores).

        Images held in memory as uint8 are batched by tensor indexing (``TensorBatches``), with the
        same seeded shuffling semantics as a ``DataLoader``.
        """
        ds = self._split(split)
        view = tensor_view(ds)
        if view is not None:
            return TensorBatches(view[0], view[1], batch_size, shuffle, seed)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """The whole split stacked as (inputs, labels) tensors."""
        ds = self._split(split)
        view = tensor_view(ds)
        if view is not None:
            return view[0].batch(view[1])
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)

    def batches(self, split: str, batch_size: int = 128) -> Iterator[Tensor]:
        """Input batches only (for calibration)."""
        for x, _ in self.loader(split, batch_size):
            yield x

    def augmentation(self, enabled: bool | None = None) -> Augmentation | None:
        """The training augmentation: the data set's default (``enabled=None``), on, or off.

        Small inputs get a padded random crop, larger ones a resized random crop; a horizontal flip
        is added only where it keeps the classes (not for digits).
        """
        on = self.augment if enabled is None else bool(enabled)
        return default_augmentation(self.input_shape, self.flip_invariant) if on else None


@dataclass
class LoadedData:
    """What a loader returns when it knows more than ``(dataset, num_classes)``: a held-out test
    split and its training defaults. Datasets that are ``NormalisedImages`` are standardised with
    statistics of the training split once it is drawn."""

    train: Dataset
    num_classes: int
    test: Dataset | None = None
    augment: bool = False
    flip_invariant: bool = False
    schedule: str = "cosine"


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set loader."""

    name: str
    loader: Callable[..., tuple[Dataset, int] | LoadedData]
    description: str
    needs_root: bool


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, description: str, needs_root: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``loader(root, input_shape) -> (dataset, num_classes) | LoadedData``; duplicates raise."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
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
            (from ``root``), or ``imagefolder:PATH``. Data sets with a held-out split (torchvision's
            test files, an image folder's ``train/`` + ``test/`` or ``val/``) keep it as
            ``DataSplits.test`` and carve validation and calibration from the training part.
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

        loaded = load_imagefolder(str(Path(name.split(":", 1)[1]).expanduser()), input_shape)
    else:
        entry = dataset_entry(name)
        if entry.needs_root and not root:
            raise UserInputError(f"data set {name!r} needs --data-root pointing at its local files")
        result = entry.loader(root, input_shape)
        if isinstance(result, LoadedData):
            loaded = result
        else:  # the plain (dataset, num_classes) of the bundled digits and user loaders
            dataset, num_classes = result
            loaded = LoadedData(dataset, num_classes, schedule="onecycle")
    dataset = loaded.train
    idx = split_indices(len(dataset), val_size=val_size, calib_size=calib_size, train_size=train_size, seed=seed)
    stats = None
    if isinstance(dataset, NormalisedImages):
        mean, std = dataset.fit_stats(idx["train"], seed=seed)
        if isinstance(loaded.test, NormalisedImages):
            loaded.test.set_stats(mean, std)
        stats = (mean.tolist(), std.tolist())
    return DataSplits(
        name=name,
        train=Subset(dataset, idx["train"]),
        calib=Subset(dataset, idx["calib"]),
        val=Subset(dataset, idx["val"]),
        num_classes=loaded.num_classes,
        input_shape=tuple(input_shape),  # type: ignore[arg-type]
        indices=idx,
        test=loaded.test,
        augment=loaded.augment,
        flip_invariant=loaded.flip_invariant,
        schedule=loaded.schedule,
        norm_stats=stats,
    )
