"""Knowledge distillation: Hinton's loss and the one training loop every fine-tune runs.

Both the evaluator's short fine-tune of a candidate (``evaluators.accuracy.kd_finetune``) and the
fine-tune of a front point (``point_finetune.finetune_point``) train through ``distill``; they
differ only in the batches, optimizer and schedule they hand it. It imports only
``autocompress.devices`` (the lowest layer), so every layer may use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.devices import train_autocast


def hinge_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Multi-class squared hinge loss, the loss BNN trains with (Hubara et al. 2016):
    ``max(0, 1 - t_c z_c)^2`` averaged over samples and classes (as BNN's code does), with
    ``t_c = +1`` for the label and ``-1`` for every other class."""
    t = 2.0 * F.one_hot(target, logits.shape[1]).to(logits.dtype) - 1.0
    return torch.clamp(1.0 - t * logits, min=0.0).pow(2).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, *, alpha: float,
            temperature: float) -> Tensor:
    """Hinton (2015) distillation: ``a*T^2*KL(softmax(zt/T) || softmax(zs/T)) + (1-a)*CE(zs, y)``.

    The T^2 factor keeps the soft-target gradients on the scale of the hard-target ones.
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean", log_target=True,
    )
    hard = F.cross_entropy(student_logits, target)
    return alpha * t * t * soft + (1.0 - alpha) * hard


@torch.no_grad()
def reapply_constraints_(model: nn.Module) -> int:
    """Put the weights of sparse and shared layers back on their constraint after an optimizer step.

    A shared layer (``weight_codebook`` and ``weight_index`` buffers, the ``share_bits`` knob)
    adds the per-entry updates of each cluster into its centroid (with plain SGD: the gradients
    summed per cluster, as Deep Compression fine-tunes) and writes the centroids back; a sparse
    layer (``weight_mask``, the ``sparsity`` knob) zeroes its pruned entries again (momentum and
    weight decay move them). Returns the number of layers constrained.
    """
    n = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, Tensor):
            continue
        book, index = getattr(m, "weight_codebook", None), getattr(m, "weight_index", None)
        mask = getattr(m, "weight_mask", None)
        if isinstance(book, Tensor) and isinstance(index, Tensor):
            idx = index.long()
            delta = w - book[idx]
            if isinstance(mask, Tensor):
                delta = delta * mask
            book.add_(torch.zeros_like(book).index_add_(0, idx.flatten(), delta.flatten()))
            w.copy_(book[idx])
        if isinstance(mask, Tensor) and mask.shape == w.shape:
            w.mul_(mask)
        n += int(isinstance(book, Tensor) or isinstance(mask, Tensor))
    return n


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    alpha: float = 0.9,
    temperature: float = 4.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[tuple[float, int]]:
    """Train ``student`` in place: one optimizer step (then one ``scheduler`` step) per batch.

    After each optimizer step sparse and shared layers are put back on their constraint
    (``reapply_constraints_``: masks re-applied, centroids updated).
    The loss is ``kd_loss`` against ``teacher``'s logits, or ``loss_fn(logits, labels)`` (plain
    cross-entropy when None; e.g. ``hinge_loss``) without a teacher or with ``alpha=0`` (the
    teacher is then not run). The teacher runs in eval mode without
    gradients; the student trains in train mode, so its BatchNorm statistics follow its weights,
    and is left in eval mode, also when a step raises.

    ``device``: where student and teacher live; batches are moved there and, on CUDA, the forward
    passes run under bf16 autocast (``autocompress.devices.train_autocast``). None: the batches
    are used as they come, in fp32.

    Returns:
        ``(loss, batch size)`` of every step, in order.
    """
    use_teacher = teacher is not None and alpha > 0
    if teacher is not None:
        teacher.eval()
    student.train()
    steps: list[tuple[float, int]] = []
    try:
        for x, y in batches:
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with train_autocast(device) if device is not None else contextlib.nullcontext():
                out = student(x)
                if use_teacher:
                    assert teacher is not None
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = kd_loss(out.float(), t_out.float(), y, alpha=alpha, temperature=temperature)
                else:
                    loss = (loss_fn or F.cross_entropy)(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            reapply_constraints_(student)
            if scheduler is not None:
                scheduler.step()
            steps.append((float(loss.detach()), len(y)))
    finally:
        student.eval()
    return steps
