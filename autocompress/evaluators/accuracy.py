"""The accuracy proxy: adaptive BatchNorm recalibration, batched top-k, and a short KD fine-tune."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from autocompress.devices import fp32_semantics, model_device

# The KD loss and loop are shared with ``finetune``; ``kd_loss`` stays importable from here.
from autocompress.distill import distill, kd_loss  # noqa: F401

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    """True when the model has a BatchNorm layer whose statistics could be re-estimated."""
    return any(isinstance(m, _BN_TYPES) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Adaptive BN (EagleEye, 2020): re-estimate BatchNorm running statistics in place.

    Pruning and factorisation change the distribution each BatchNorm sees, so the stored
    statistics no longer fit and accuracy collapses; re-estimating them is the cheap fix. Every BN
    layer's running stats are reset and re-estimated as the plain (cumulative, ``momentum=None``)
    average over the calibration batches, with only the BN layers in train mode (dropout stays
    off). Returns the number of BN layers recalibrated; the model is left in eval mode.
    Batches are moved to the model's device and run in fp32.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = model_device(model)
    try:
        with fp32_semantics(device):
            for x in batches:
                model(x.to(device, non_blocking=True))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()
    return len(bns)


@torch.inference_mode()
def topk_correct(
    model: nn.Module, x: Tensor, y: Tensor, *, ks: tuple[int, ...] = (1,), batch_size: int = 256
) -> dict[int, float]:
    """Top-k accuracies (fractions) of ``model`` on stacked tensors, in eval mode, batched.

    A non-finite logit anywhere makes every accuracy NaN, so a numerically broken candidate is
    reported as such rather than scored by ``argmax`` over garbage. The tensors may stay on the
    CPU: each batch is moved to the model's device, and scored in fp32 (TF32 off on CUDA).
    """
    model.eval()
    device = model_device(model)
    n = len(y)
    correct = {k: 0 for k in ks}
    kmax = max(ks)
    with fp32_semantics(device):
        for i in range(0, n, batch_size):
            logits = model(x[i : i + batch_size].to(device, non_blocking=True))
            if not bool(torch.isfinite(logits).all()):
                return {k: math.nan for k in ks}
            top = logits.topk(min(kmax, logits.shape[1]), dim=1).indices
            hit = top == y[i : i + batch_size, None].to(device, non_blocking=True)
            for k in ks:
                correct[k] += int(hit[:, :k].any(dim=1).sum())
    return {k: correct[k] / max(n, 1) for k in ks}



def _cycle_batches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch_size + 1, batch_size):  # drop the ragged tail
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]


def kd_finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    alpha: float = 0.9,
    temperature: float = 4.0,
    seed: int = 0,
) -> float:
    """Fine-tune ``student`` in place for ``steps`` SGD steps, distilling from ``teacher``.

    Without a teacher (or with ``alpha=0``) it is plain cross-entropy. BatchNorm layers train with
    the rest, so their statistics follow the weights (the loop is ``autocompress.distill``'s).
    The batch order is seeded so the same candidate always gets the same fine-tune. SGD with
    momentum 0.9 at a constant ``lr``; the ragged tail of each pass is dropped. Returns the mean
    loss of the last 10 steps; the student is left in eval mode. The batches are drawn on the
    CPU (the same order on every device) and moved to the student's device; on CUDA the steps
    run under bf16 autocast.
    """
    if steps <= 0:
        return math.nan
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    batches = itertools.islice(_cycle_batches(x, y, min(batch_size, len(y)), seed), steps)
    device = model_device(student)
    losses = [loss for loss, _ in distill(student, teacher, batches, opt, alpha=alpha,
                                          temperature=temperature,
                                          device=None if device.type == "cpu" else device)]
    tail = losses[-10:]
    return sum(tail) / len(tail)
