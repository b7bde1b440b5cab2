"""Images decoded once and kept in memory as uint8, normalised with training-split statistics,
batched by tensor indexing and augmented on whole batches (no per-image PIL work while training)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

#: Decoded image sets up to this many bytes (uint8) are held in memory; larger folders are decoded
#: lazily, image by image, as they are read. 50,000 32x32 RGB images take 150 MB.
MAX_IN_MEMORY_BYTES = 4 * 2**30

#: Images sampled (seeded) from the training split to estimate normalisation statistics of a folder
#: that is decoded lazily; in-memory sets use every training image.
STATS_SAMPLE = 1000


class NormalisedImages(Dataset):
    """Images standardised per channel with statistics fitted once on the training split.

    Statistics of each batch (what ``fit_images`` does for the bundled digits) would differ
    between batches of real data; fitting them on the training split and applying them to every
    split keeps validation and test samples unseen and every batch on the same scale.
    """

    def __init__(self, channels: int) -> None:
        self.mean = torch.zeros(channels, 1, 1)
        self.std = torch.ones(channels, 1, 1)

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Use these per-channel statistics (of pixel values in [0, 1])."""
        self.mean = mean.reshape(-1, 1, 1).float()
        self.std = std.reshape(-1, 1, 1).float().clamp_min(1e-6)

    def fit_stats(self, indices: Sequence[int], seed: int = 0) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the images at ``indices`` (in [0, 1]), then used here."""
        raise NotImplementedError


class ImageTensors(NormalisedImages):
    """A whole image set as one uint8 (N, C, H, W) tensor plus labels, normalised on access."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        super().__init__(images.shape[1])
        self.images = images.contiguous()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return (self.images[i].float() / 255.0 - self.mean) / self.std, int(self.labels[i])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The samples at ``indices`` as one normalised float batch and its labels."""
        x = self.images[indices].float().div_(255.0)
        return x.sub_(self.mean).div_(self.std), self.labels[indices]

    def fit_stats(self, indices: Sequence[int], seed: int = 0) -> tuple[Tensor, Tensor]:
        # Exact statistics from per-channel histograms of the uint8 values: no float copy of the set.
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        c = self.images.shape[1]
        counts = torch.zeros(c, 256, dtype=torch.float64)
        for start in range(0, len(idx), 8192):
            x = self.images[idx[start:start + 8192]].transpose(0, 1).reshape(c, -1)
            for ch in range(c):
                counts[ch] += torch.bincount(x[ch], minlength=256).double()
        values = torch.arange(256, dtype=torch.float64) / 255.0
        total = counts.sum(1).clamp_min(1)
        mean = (counts * values).sum(1) / total
        std = ((counts * values.square()).sum(1) / total - mean.square()).clamp_min(0).sqrt()
        self.set_stats(mean, std)
        return self.mean.flatten().clone(), self.std.flatten().clone()


def tensor_view(ds: Dataset) -> tuple[ImageTensors, Tensor] | None:
    """(in-memory image set, indices) behind ``ds``, or None when ``ds`` is something else."""
    if isinstance(ds, ImageTensors):
        return ds, torch.arange(len(ds))
    if isinstance(ds, Subset) and isinstance(ds.dataset, ImageTensors):
        return ds.dataset, torch.as_tensor(list(ds.indices), dtype=torch.long)
    return None


class TensorBatches:
    """Batches of an in-memory image set by tensor indexing; iterates like a single-process DataLoader
    (a seeded generator drawn once, a fresh permutation each pass when shuffling)."""

    num_workers = 0

    def __init__(self, base: ImageTensors, indices: Tensor, batch_size: int, shuffle: bool, seed: int) -> None:
        self.base, self.indices, self.batch_size, self.shuffle = base, indices, int(batch_size), shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        for start in range(0, len(order), self.batch_size):
            yield self.base.batch(order[start:start + self.batch_size])


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation applied to whole normalised batches.

    ``pad_crop``: pad by ``pad`` pixels (zeros, i.e. the mean colour) and crop back at a random
    offset (the CIFAR recipe); ``resized_crop``: a random area in ``scale`` with aspect ratio in
    [3/4, 4/3], resized back to the input size. ``flip``: random horizontal flip (only for data whose
    classes are flip-invariant; digits are not).
    """

    kind: str
    flip: bool
    pad: int = 4
    scale: tuple[float, float] = (0.25, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in ("pad_crop", "resized_crop"):
            raise ValueError(f"augmentation kind {self.kind!r}; expected pad_crop or resized_crop")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        if self.kind == "pad_crop":
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            cols = torch.arange(w).expand(n, w)
            if self.flip:
                flip = torch.rand(n, generator=generator) < 0.5
                cols = torch.where(flip[:, None], cols.flip(-1), cols)
            # Two gathers (rows, then columns with the flip folded in): one kernel each, no loop.
            c = x.shape[1]
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * p)
            cropped = padded.gather(2, rows)
            return cropped.gather(3, (ox[:, None] + cols)[:, None, None, :].expand(n, c, h, w))
        lo, hi = self.scale
        area = torch.empty(n).uniform_(lo, hi, generator=generator)
        log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
        ratio = log_ratio.exp()
        sx = (area * ratio).sqrt().clamp(max=1.0)
        sy = (area / ratio).sqrt().clamp(max=1.0)
        tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
        if self.flip:
            sx = torch.where(torch.rand(n, generator=generator) < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def default_augmentation(input_shape: tuple[int, int, int], flip: bool) -> Augmentation:
    """Padded random crop for small inputs (up to 64 pixels), resized random crop above."""
    _, h, w = input_shape
    if max(h, w) <= 64:
        return Augmentation("pad_crop", flip, pad=max(1, round(max(h, w) / 8)))
    return Augmentation("resized_crop", flip)


def fit_uint8(x: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """Resize a uint8 (N, C, H, W) set to ``input_shape`` and fit its channels, staying uint8."""
    c, h, w = input_shape
    if x.shape[1] == c and x.shape[-2:] == (h, w):
        return x.contiguous()
    out = torch.empty((len(x), c, h, w), dtype=torch.uint8)
    for start in range(0, len(x), 2048):
        part = x[start:start + 2048].float()
        if part.shape[-2:] != (h, w):
            part = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False,
                                 antialias=part.shape[-2] > h or part.shape[-1] > w)
        if part.shape[1] != c:
            part = part.mean(1, keepdim=True)
            part = part if c == 1 else part.repeat(1, c, 1, 1)
        out[start:start + 2048] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def image_cache_dir() -> Path:
    """Where decoded image folders are cached (``$AUTOCOMPRESS_CACHE/images``)."""
    return Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress")) / "images"


def folder_cache_key(path: Path, files: Sequence[str], input_shape: tuple[int, int, int]) -> str:
    """Key of a decoded folder: its resolved path, the fitted shape, and every file's size and mtime."""
    h = hashlib.sha256(json.dumps([str(path.resolve()), list(input_shape)]).encode())
    parts = []
    for f in files:
        st = os.stat(f)
        parts.append(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n")
    h.update("".join(parts).encode())
    return h.hexdigest()[:24]


def load_cached(file: Path, n: int, input_shape: tuple[int, int, int]) -> Tensor | None:
    """The cached uint8 images, or None when absent or not what is expected (never unpickles)."""
    try:
        with np.load(file, allow_pickle=False) as z:
            images = z["images"]
    except Exception:  # noqa: BLE001 - any unreadable cache file is simply rebuilt
        return None
    if images.dtype != np.uint8 or images.shape != (n, *input_shape):
        return None
    return torch.from_numpy(np.ascontiguousarray(images))


def save_cached(file: Path, images: Tensor) -> None:
    """Write the decoded images atomically; a cache that cannot be written is skipped."""
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images.numpy())
        os.replace(tmp, file)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
