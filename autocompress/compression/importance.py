"""Channel importance for structured pruning: which channels of a group go first.

Weight magnitude (``l1``, ``l2``; Li et al. 2017) and first-order Taylor (``taylor``) scores come
from torch-pruning's group importances; network slimming (``bn``; Liu et al. 2017) ranks by the
BatchNorm scales |gamma| that normalise each channel (:func:`bn_scores`), within a group or, through
:func:`global_bn_ratios`, across the whole network. ``prune.prune_groups_`` picks the channels with
these scores; the names stay importable from ``prune.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from autocompress.errors import UserInputError

if TYPE_CHECKING:
    from autocompress.compression.prune import GroupSpec

__all__ = ["IMPORTANCES", "bn_scores", "check_importance", "global_bn_ratios", "taylor_gradients_"]

#: Channel importances: weight magnitude (``l1``, ``l2``; Li et al. 2017), first-order Taylor
#: (``taylor``), and network slimming's BatchNorm scale |gamma| (``bn``; Liu et al. 2017).
IMPORTANCES = ("l1", "l2", "taylor", "bn")


def _importance_fn(kind: str) -> tp.importance.Importance:
    if kind in ("l1", "bn"):  # bn: l1 ranks the groups that no BatchNorm normalises
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
    raise UserInputError(f"unknown importance {kind!r}; allowed: {', '.join(IMPORTANCES)}")


def _affine_bn(module: Any) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine


def bn_scores(group: tp.dependency.Group, n: int) -> Tensor | None:
    """Network-slimming importance: per root channel, the mean |gamma| of the BatchNorm layers
    that normalise it (the BN after the conv; in a residual group, every BN joined by the add).

    NaN for a root channel no affine BatchNorm normalises; None when none does (the caller falls
    back to ``l1`` there: see ``prune_groups_``).
    """
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    for it in group.items:
        module = it.dep.target.module
        if not _affine_bn(module) or not it.idxs:
            continue
        gamma = module.weight.detach().abs().double().cpu()
        idx = torch.as_tensor(list(it.root_idxs), dtype=torch.long)
        total.index_add_(0, idx, gamma[torch.as_tensor(list(it.idxs), dtype=torch.long)])
        count.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
    if not bool((count > 0).any()):
        return None
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def check_importance(
    importance: str, model: nn.Module, groups: Sequence[GroupSpec] | None = None
) -> None:
    """Refuse an unknown importance, and ``bn`` where no prunable group has a BatchNorm.

    ``bn`` on a group without one (a hidden ``Linear``, a conv with no BN after it) falls back to
    ``l1`` for that group; a model where that would be every group is a mistake, refused here.
    With ``groups`` None (before the space is built) only a model without any affine BatchNorm
    is refused.
    """
    if importance not in IMPORTANCES:
        raise UserInputError(f"unknown importance {importance!r}; allowed: {', '.join(IMPORTANCES)}")
    if importance != "bn":
        return
    if groups is None:
        found = any(_affine_bn(m) for m in model.modules())
    else:
        modules = dict(model.named_modules())
        found = not groups or any(
            _affine_bn(modules.get(m)) for g in groups if g.prunable for m in g.members
        )
    if not found:
        raise UserInputError(
            f"importance 'bn' ranks channels by BatchNorm |gamma|, but no prunable layer of "
            f"{type(model).__name__} is followed by an affine BatchNorm; allowed here: "
            f"{', '.join(i for i in IMPORTANCES if i != 'bn')}"
        )


def global_bn_ratios(
    model: nn.Module, groups: Sequence[GroupSpec], fraction: float, max_prune: float = 0.8
) -> dict[str, float]:
    """Network slimming's global threshold (Liu et al. 2017) as per-group prune ratios.

    ``importance="bn"`` ranks channels within each group; the paper ranks every BatchNorm scale
    of the network together and removes the ``fraction`` smallest. This returns, per prunable
    group normalised by an affine BatchNorm (``{group.point: ratio}``), the share of its channels
    below that global threshold. A group reaching ``max_prune`` stops there and the next smallest
    scales elsewhere are taken instead, so the total removed stays ``fraction``. A policy with
    these ratios pruned with ``importance="bn"`` removes exactly those channels (groups without
    a BatchNorm keep theirs).

    Raises:
        UserInputError: ``fraction`` outside [0, 1), or no prunable group has a BatchNorm.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise UserInputError(f"fraction={fraction!r}; allowed: 0 <= fraction < 1")
    modules = dict(model.named_modules())
    scored: list[tuple[GroupSpec, Tensor]] = []
    for g in groups:
        if not g.prunable or g.unit != 1:
            continue
        gammas = [m.weight.detach().abs().double().cpu() for name in g.members
                  if _affine_bn(m := modules.get(name)) and m.num_features == g.n]
        if gammas:
            scored.append((g, torch.stack(gammas).mean(0)))
    if not scored:
        raise UserInputError(
            f"global BatchNorm ranking needs a prunable layer followed by an affine BatchNorm, and "
            f"{type(model).__name__} has none")
    flat = torch.cat([s for _, s in scored])
    owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, (_, s) in enumerate(scored)])
    k = int(math.floor(fraction * len(flat) + 1e-9))
    caps = [min(int(math.floor(max_prune * g.n + 1e-9)), g.n - 1) for g, _ in scored]
    counts = [0] * len(scored)
    for i in owner[torch.argsort(flat, stable=True)].tolist():  # smallest |gamma| first
        if k == 0:
            break
        if counts[i] < caps[i]:  # a full layer passes its channels on to the next smallest
            counts[i] += 1
            k -= 1
    return {g.point: c / g.n for (g, _), c in zip(scored, counts, strict=True)}


def _first_tensor(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def taylor_gradients_(model: nn.Module, batches: Sequence[Any]) -> None:
    """Accumulate loss gradients on ``batches`` for first-order Taylor importance.

    With labelled batches ``(x, y)`` and 2-D outputs the loss is cross-entropy on ``y``; otherwise
    cross-entropy against the model's own predictions (or the mean square of the output).
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in batches:
            x = _first_tensor(batch)
            y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            out = model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.dim() == 2:
                target = y if y is not None else out.detach().argmax(1)
                loss = F.cross_entropy(out, target)
            else:
                loss = out.pow(2).mean()
            loss.backward()
    for p in model.parameters():  # layers the loss never reached still need a gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _scores(imp: tp.importance.Importance, group: tp.dependency.Group, n: int) -> Tensor:
    try:
        s = imp(group)
    except Exception:  # noqa: BLE001 - importance is a heuristic; fall back to channel order
        s = None
    if s is None or s.numel() != n or not bool(torch.isfinite(s).all()):
        return -torch.arange(n, dtype=torch.float64)  # remove the last channels first
    return s.detach().double().cpu()
