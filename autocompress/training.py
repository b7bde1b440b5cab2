"""Base-model training and plain top-1 scoring: a user needs a trained model before compressing it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import DataSplits
from autocompress.devices import fp32_semantics, model_device, train_autocast
from autocompress.errors import UserInputError

SCHEDULES = ("onecycle", "cosine")


@dataclass
class TrainConfig:
    """Settings of a base-model training run (SGD with Nesterov momentum 0.9, weight decay 5e-4).

    ``schedule``: ``cosine`` (per-step cosine decay from ``lr`` to 0, the ResNet/CIFAR standard) or
    ``onecycle`` (warm-up over the first 15% then cosine decay, with cycled momentum: the bundled
    digits' default, kept so its base model stays the same); None takes the data set's default.
    ``augment``: None takes the data set's default (on for photos, off for digits).
    ``slimming_l1``: network slimming's sparsity term (Liu et al. 2017): ``slimming_l1 * sum|gamma|``
    over the BatchNorm scales is added to the loss (as its subgradient), so unimportant channels
    get small |gamma| and ``importance="bn"`` pruning removes them; the paper uses 1e-4 to 1e-5.
    None or 0 is off (and stored as None).
    Settings left at None are not part of ``base_model_key``, so earlier keys stay valid.
    """

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    augment: bool | None = None
    schedule: str | None = None
    slimming_l1: float | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise UserInputError(f"schedule={self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.slimming_l1 is not None:
            lam = self.slimming_l1
            if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
                raise UserInputError(f"slimming_l1={lam!r}; allowed: a finite number >= 0 (0 = off)")
            self.slimming_l1 = float(lam) or None


@dataclass
class TrainResult:
    """What a training run produced: final validation accuracy and per-epoch history."""

    val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    #: Top-1 on the held-out test split after training (None when the data has none).
    test_acc: float | None = None
    #: The schedule and augmentation actually used (data set defaults resolved).
    schedule: str = "onecycle"
    augment: bool = False


def slimming_scales(model: nn.Module, slimming_l1: float | None) -> list[nn.Parameter]:
    """The BatchNorm scales (gamma) that ``slimming_l1`` pushes toward zero; [] when it is off.

    Raises:
        UserInputError: ``slimming_l1 > 0`` on a model without an affine BatchNorm (nothing to
            make sparse), before any training.
    """
    if not slimming_l1:
        return []
    scales = [m.weight for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not scales:
        raise UserInputError(f"slimming_l1={slimming_l1:g} needs BatchNorm layers with a scale "
                             f"(gamma), and {type(model).__name__} has none; allowed: 0 (off)")
    return scales


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random so the same seed gives the same run."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.inference_mode()
def accuracy(model: nn.Module, data: DataSplits, split: str = "val", batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of ``model`` on a split, in eval mode, in fp32 on the device
    the model's parameters live on."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = total = 0
    with fp32_semantics(device):
        for x, y in data.loader(split, batch_size):
            pred = model(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def train_model(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    state_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train ``model`` in place with SGD; report (epoch, loss, val acc) and (step, steps per epoch).

    Augmentation is applied to training batches only (evaluation always sees the plain split);
    the held-out test split, when there is one, is scored once at the end.

    ``state_path``: after every epoch the whole training state (weights, optimiser, schedule,
    random generators, history) is written there, and a run started with an existing state file
    continues after its last finished epoch with the same result as an uninterrupted run; long
    real-data trainings survive an interruption. The caller removes the file when done.

    ``device``: where the model and its batches live while training (``autocompress.devices``);
    on CUDA the steps run under bf16 autocast. Batches are drawn and augmented on the CPU, so
    the order and the augmentation are the same on every device; the model is returned on the
    CPU (checkpoints and compression work there).

    ``config.slimming_l1`` > 0 adds its L1 subgradient to every BatchNorm scale before each
    optimizer step (network slimming; see ``TrainConfig``).
    """
    device = torch.device(device)
    scales, lam = slimming_scales(model, config.slimming_l1), config.slimming_l1 or 0.0
    seed_everything(config.seed)
    start = time.perf_counter()
    # Channels-last convolutions are ~20% faster on CPU for 32x32 images and larger (measured on
    # ResNet-20); smaller inputs keep the default layout (and their exact cached base models).
    channels_last = data.input_shape[-1] * data.input_shape[-2] >= 1024
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    schedule = config.schedule or data.schedule
    augment = data.augmentation(config.augment)
    aug_gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=True,
    )
    loader = data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
    steps = max(1, config.epochs * len(loader))
    if schedule == "onecycle":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[dict[str, float]] = []
    first_epoch, elapsed_before = 0, 0.0
    if state_path is not None and Path(state_path).exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("config") != asdict(config):
            raise UserInputError(
                f"training state {str(state_path)!r} was written by other settings ({saved.get('config')}); "
                "remove it or train with the same settings")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        aug_gen.set_state(saved["aug_rng"])
        loader.generator.set_state(saved["loader_rng"])
        torch.set_rng_state(saved["torch_rng"])
        history, first_epoch = list(saved["history"]), int(saved["epoch"])
        elapsed_before = float(saved.get("seconds", 0.0))
    for epoch in range(first_epoch, config.epochs):
        model.train()
        total_loss = n = 0.0
        for step, (x, y) in enumerate(loader, 1):
            if augment is not None:
                x = augment(x, aug_gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with train_autocast(device):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            if scales:  # network slimming: the subgradient of slimming_l1 * sum|gamma|
                with torch.no_grad():
                    for w in scales:
                        if w.grad is not None:
                            w.grad.add_(torch.sign(w), alpha=lam)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            n += len(y)
            if on_step is not None:
                on_step(step, len(loader))
        val = accuracy(model, data, "val")
        history.append({"epoch": epoch + 1, "loss": total_loss / max(n, 1), "val_acc": val})
        if state_path is not None and epoch + 1 < config.epochs:
            _save_state(state_path, {
                "config": asdict(config), "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "aug_rng": aug_gen.get_state(), "loader_rng": loader.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "seconds": elapsed_before + time.perf_counter() - start})
        if on_epoch is not None:
            on_epoch(epoch + 1, total_loss / max(n, 1), val)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    final = history[-1]["val_acc"] if history else accuracy(model, data, "val")
    test = accuracy(model, data, "test") if data.test is not None else None
    model.to("cpu")
    return TrainResult(final, history, elapsed_before + time.perf_counter() - start, test_acc=test, schedule=schedule,
                       augment=augment is not None)


def _save_state(path: str | Path, state: dict) -> None:
    """Write a training state atomically (a torn state file would lose the run it protects)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir() -> Path:
    """Where trained base models and lookup tables are cached (``$AUTOCOMPRESS_CACHE``)."""
    return Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress"))


def base_model_key(model_name: str, data_name: str, config: TrainConfig, extra: dict | None = None) -> str:
    """A stable key for a trained base model: model, data, training settings, seed."""
    train = {k: v for k, v in asdict(config).items() if v is not None}
    payload = {"model": model_name, "data": data_name, "train": train, "extra": extra or {}}
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
