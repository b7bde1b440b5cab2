"""Base-model training and plain top-1 scoring: a user needs a trained model before compressing it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import DataSplits


@dataclass
class TrainConfig:
    """Settings of a base-model training run (SGD + cosine schedule, label smoothing 0)."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0


@dataclass
class TrainResult:
    """What a training run produced: final validation accuracy and per-epoch history."""

    val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random so the same seed gives the same run."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.inference_mode()
def accuracy(model: nn.Module, data: DataSplits, split: str = "val", batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of ``model`` on a split, in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in data.loader(split, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def train_model(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD and a cosine schedule; report (epoch, loss, val acc)."""
    seed_everything(config.seed)
    start = time.perf_counter()
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=True,
    )
    loader = data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
    steps = max(1, config.epochs * len(loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        model.train()
        total_loss = n = 0.0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            n += len(y)
        val = accuracy(model, data, "val")
        history.append({"epoch": epoch + 1, "loss": total_loss / max(n, 1), "val_acc": val})
        if on_epoch is not None:
            on_epoch(epoch + 1, total_loss / max(n, 1), val)
    model.eval()
    final = history[-1]["val_acc"] if history else accuracy(model, data, "val")
    return TrainResult(final, history, time.perf_counter() - start)


def cache_dir() -> Path:
    """Where trained base models and lookup tables are cached (``$AUTOCOMPRESS_CACHE``)."""
    return Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress"))


def base_model_key(model_name: str, data_name: str, config: TrainConfig, extra: dict | None = None) -> str:
    """A stable key for a trained base model: model, data, training settings, seed."""
    payload = {"model": model_name, "data": data_name, "train": asdict(config), "extra": extra or {}}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict) -> None:
    """Write ``state_dict`` to ``path`` and its metrics/spec next to it as ``path.json`` (atomic).

    Each file is written to a temporary name and renamed into place; a write that fails (a full
    or read-only disk) removes its temporary file and raises the ``OSError``, leaving no
    truncated checkpoint behind.
    """
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # serialised in memory: torch hides write errors' errno
    meta_path = path.with_name(path.name + ".json")
    files = [(path, buf.getvalue()), (meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())]
    tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p, _ in files]
    try:
        for tmp, (target, data) in zip(tmps, files, strict=True):
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:  # name the file the user asked for, not the temporary one
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
        for tmp, (target, _) in zip(tmps, files, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
