"""``compress``: turn a policy into a really smaller model (prune, then factorise, then quantize)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.compression import lowrank, prune, quantize
from autocompress.compression.counting import eval_mode
from autocompress.compression.policy import CompressionPolicy
from autocompress.compression.space import CompressionSpace
from autocompress.errors import UserInputError

__all__ = ["compress"]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _calib_inputs(calib: Any, example_input: Any, limit: int) -> tuple[list[Any], list[Any]]:
    """``(model inputs, raw batches)`` from ``calib``: a tensor, or an iterable of tensors / (x, y)."""
    if calib is None:
        return [example_input], [example_input]
    if isinstance(calib, Tensor):
        return [calib], [calib]
    if not isinstance(calib, Iterable):
        raise UserInputError(
            f"calib must be a tensor or an iterable of batches (tensors or (x, y) pairs), got {type(calib).__name__}"
        )
    inputs, raw = [], []
    multi = isinstance(example_input, tuple)
    for batch in calib:
        if len(raw) >= limit:
            break
        if multi:
            x = tuple(batch)
        elif isinstance(batch, (tuple, list)):
            x = batch[0]
        else:
            x = batch
        inputs.append(x)
        raw.append(batch if isinstance(batch, (tuple, list)) else x)
    if not inputs:
        raise UserInputError("calib is empty; pass at least one batch or leave calib=None")
    return inputs, raw


def _forward(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


def _capture(model: nn.Module, module: nn.Module, inputs: list[Any], take: str) -> list[Tensor]:
    """The input (``take="in"``) or output of ``module`` on every calibration batch."""
    got: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        got.append((args[0] if take == "in" else out).detach())

    h = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for x in inputs:
                _forward(model, x)
    finally:
        h.remove()
    return got


def _as_rows(m: nn.Module, t: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return t.reshape(-1, t.shape[-1])
    return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])


def _patches(m: nn.Conv2d, x: Tensor) -> Tensor:
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def _reconstruct_(
    original: nn.Module,
    pruned: nn.Module,
    out_removed: dict[str, list[int]],
    inputs: list[Any],
    max_rows: int = 8192,
) -> list[str]:
    """Least-squares refit of layers whose input channels were pruned (He et al. 2017, AMC).

    In forward (module) order, each plain ``Linear`` / ungrouped ``Conv2d`` whose input width
    shrank is refit by ridge regression ``min_W ||X W - (Y - b)||^2 + lam ||W||^2``, where ``X``
    is its input in the pruned model (with the layers before it already refit) and ``Y`` the
    original layer's output on the same batches, restricted to the output channels it kept.
    """
    orig_mods = dict(original.named_modules())
    targets = []
    for name, m in pruned.named_modules():
        o = orig_mods.get(name)
        if o is None or type(m) is not type(o):
            continue
        if type(m) is nn.Linear and m.in_features < o.in_features:
            targets.append(name)
        elif (
            type(m) is nn.Conv2d
            and m.groups == 1
            and o.groups == 1
            and m.in_channels < o.in_channels
        ):
            targets.append(name)
    gen = torch.Generator().manual_seed(0)
    done = []
    for name in targets:
        pm, om = pruned.get_submodule(name), orig_mods[name]
        xs = _capture(pruned, pm, inputs, "in")
        ys = _capture(original, om, inputs, "out")
        X = torch.cat(
            [_patches(pm, x) if isinstance(pm, nn.Conv2d) else _as_rows(pm, x) for x in xs]
        ).double()
        Y = torch.cat([_as_rows(om, y) for y in ys]).double()
        if X.shape[0] > max_rows:
            idx = torch.randperm(X.shape[0], generator=gen)[:max_rows]
            X, Y = X[idx], Y[idx]
        if X.shape[0] < X.shape[1]:
            continue  # under-determined: keep the pruned weights
        keep = sorted(set(range(om.weight.shape[0])) - set(out_removed.get(name, [])))
        Y = Y[:, keep]
        if om.bias is not None:
            Y = Y - om.bias.double()[keep]
        gram = X.T @ X
        lam = 1e-3 * gram.diagonal().mean().clamp(min=1e-12)
        W = torch.linalg.solve(gram + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y).T
        pm.weight.copy_(W.reshape(pm.weight.shape).to(pm.weight.dtype))
        done.append(name)
    return done


def compress(
    model: nn.Module,
    policy: CompressionPolicy,
    *,
    space: CompressionSpace | None = None,
    calib: Any = None,
    example_input: Any = None,
    importance: str | None = None,
    reconstruct: bool = False,
    max_calib_batches: int = 16,
) -> nn.Module:
    """Apply ``policy`` to a copy of ``model``: a new, really smaller ``nn.Module``.

    Per decision point the knobs combine in this order: channel pruning (torch-pruning groups,
    exact channel counts as predicted by ``space``), then low-rank factorisation of the pruned
    weight (truncated SVD), then fake quantization (weights quantized once, activation ranges
    calibrated on ``calib``). ``model`` is left untouched; the result's train/eval flag is the
    model's. Quantized layers keep their module names (``layer.weight`` stays ``layer.weight``);
    a factorised layer becomes ``LowRank`` with children ``0`` and ``1``.

    Args:
        model: the model to compress.
        policy: decisions keyed by decision-point name (validated against ``space``).
        space: the model's ``CompressionSpace`` (built with defaults when ``None``; pass it to
            avoid rebuilding it and to use its ``round_to``/``importance``).
        calib: calibration batches: a tensor or an iterable of tensors or ``(x, y)`` pairs (at
            most ``max_calib_batches`` are used). Used for activation ranges, Taylor importance
            and reconstruction. When ``None``, ``space.example_input`` is used, which gives
            poor activation ranges for real data: pass real batches when ``a_bits < 32``.
        example_input: only used to build the space when ``space`` is ``None``.
        importance: channel importance (``l1``, ``l2``, ``taylor``); default ``space.importance``.
        reconstruct: least-squares refit of layers whose input channels were pruned.
        max_calib_batches: cap on the calibration batches read from ``calib``.

    Returns:
        The compressed model.

    Raises:
        UserInputError: the policy does not fit the space (names the layer, value, allowed).

    Example:
        >>> from autocompress.models import create_model
        >>> model = create_model("test_convnet")
        >>> space = CompressionSpace.from_model(model)
        >>> small = compress(model, space.uniform(prune=0.5, w_bits=8, a_bits=8), space=space)
    """
    if space is None:
        space = CompressionSpace.from_model(model, example_input)
    space.validate(policy)
    if importance is not None and importance not in prune.IMPORTANCES:
        raise UserInputError(
            f"unknown importance {importance!r}; allowed: {', '.join(prune.IMPORTANCES)}"
        )
    inputs, raw = _calib_inputs(calib, space.example_input, max_calib_batches)
    training = model.training
    work = copy.deepcopy(model)
    work.eval()

    # 1. prune
    decisions = [
        (g, policy.get(g.point).prune) for g in space._pgroups if policy.get(g.point).prune > 0
    ]
    if decisions:
        DG = prune.build_graph(work, space.example_input)
        _, out_removed = prune.prune_groups_(
            work,
            DG,
            decisions,
            round_to=space.round_to,
            importance=importance or space.importance,
            calib=raw,
        )
        del DG
        if reconstruct:
            _reconstruct_(model, work, out_removed, inputs)

    # 2. factorise, 3. quantize
    for point in space.decision_points:
        action = policy.get(point.name)
        module = work.get_submodule(point.name)
        if "rank" in point.knobs and action.rank < 1.0:
            m, n = lowrank._dims(module)
            r = lowrank.factorised_rank(m, n, action.rank)
            if r is not None:
                module = lowrank.factorise(module, r)
                _set_submodule(work, point.name, module)
        if action.w_bits < 32 or action.a_bits < 32:
            if isinstance(module, lowrank.LowRank):
                quantize.quantize_factorised_(module[0], module[1], action.w_bits, action.a_bits)
            else:
                quantize.quantize_module_(module, action.w_bits, action.a_bits)
    quantize.calibrate_(work, inputs)
    for p in work.parameters():
        p.grad = None
    work.train(training)
    return work
