"""``compress``: turn a policy into a really smaller model (prune, then factorise, then quantize)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.compression import prune, quantize
from autocompress.compression.counting import eval_mode
from autocompress.compression.knobs import KNOB_TYPES
from autocompress.compression.policy import CompressionPolicy
from autocompress.compression.space import CompressionSpace
from autocompress.errors import UserInputError

__all__ = ["compress"]


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


def _example_from_calib(calib: Any) -> Any:
    """One sample (batch dimension 1) of the first calibration batch, to build the space on.

    A ``(x, y)`` pair or list gives its first element, as ``_calib_inputs`` reads it; ``None``
    when ``calib`` holds nothing usable (the space then reports what it needs).
    """
    if isinstance(calib, Tensor):
        first: Any = calib
    elif isinstance(calib, Iterable):
        first = next(iter(calib), None)
        if isinstance(first, (tuple, list)) and first:
            first = first[0]
    else:
        return None
    if isinstance(first, Tensor) and first.dim() >= 1 and first.shape[0] >= 1:
        return first[:1].clone()
    return None


def _forward(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


class _Stop(Exception):
    """Raised in a hook to end a forward pass once every reconstruction target has been seen."""


def _first_samples(inputs: list[Any], limit: int) -> Any:
    """The first ``limit`` samples of the calibration batches, as one batch (dim 0 is the batch)."""
    parts, n = [], 0
    for x in inputs:
        parts.append(x)
        n += (x[0] if isinstance(x, tuple) else x).shape[0]
        if n >= limit:
            break
    if isinstance(parts[0], tuple):
        return tuple(
            torch.cat([p[i] for p in parts])[:limit] if isinstance(first, Tensor) else first
            for i, first in enumerate(parts[0])
        )
    return torch.cat(parts)[:limit]


def _reconstruction_targets(original: nn.Module, pruned: nn.Module) -> list[str]:
    """Plain ``Linear`` / ungrouped ``Conv2d`` layers whose input width shrank, in module order."""
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
    return targets


def _sample_rows(m: nn.Module, out: Tensor, max_rows: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(row positions, output rows)``: up to ``max_rows`` seeded random positions of ``out``.

    A position is one output pixel ``(image, y, x)`` of a conv (flattened as ``n*Ho*Wo + y*Wo +
    x``), or one leading-index tuple of a Linear's output. Only the sampled rows are gathered.
    """
    if isinstance(m, nn.Conv2d):
        n, c, h, w = out.shape
        total = n * h * w
    else:
        c = out.shape[-1]
        total = out.numel() // c
    if total > max_rows:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=gen)[:max_rows].sort().values
    else:
        idx = torch.arange(total)
    if isinstance(m, nn.Conv2d):
        rows = out[idx // (h * w), :, (idx // w) % h, idx % w]
    else:
        rows = out.reshape(-1, c)[idx]
    return idx, rows


def _input_rows(m: nn.Module, x: Tensor, idx: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """The rows of ``m``'s regression design matrix at output positions ``idx``.

    For a conv these are the receptive-field patches (``F.unfold``'s column layout, channel-major
    then kernel row then column), gathered directly so the full patch matrix is never built.
    """
    if not isinstance(m, nn.Conv2d):
        return x.reshape(-1, x.shape[-1])[idx]
    ho, wo = out_hw
    pad = m._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, pad, mode=mode)
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    n = idx // (ho * wo)
    oy = (idx // wo) % ho
    ox = idx % wo
    ys = (oy * sh)[:, None] + torch.arange(kh) * dh  # (R, kh)
    xs = (ox * sw)[:, None] + torch.arange(kw) * dw  # (R, kw)
    patches = x.permute(0, 2, 3, 1)[n[:, None, None], ys[:, :, None], xs[:, None, :]]
    return patches.permute(0, 3, 1, 2).reshape(len(idx), -1)  # (R, C*kh*kw)


@torch.no_grad()
def _reconstruct_(
    original: nn.Module,
    pruned: nn.Module,
    out_removed: dict[str, list[int]],
    inputs: list[Any],
    max_rows: int = 8192,
    max_images: int = 256,
) -> list[str]:
    """Least-squares refit of layers whose input channels were pruned (He et al. 2017, AMC).

    Each plain ``Linear`` / ungrouped ``Conv2d`` whose input width shrank is refit by ridge
    regression ``min_W ||X W - (Y - b)||^2 + lam ||W||^2``, where ``X`` is its input in the pruned
    model, with every layer upstream of it already refit (sequential, as in ThiNet/AMC), and ``Y``
    the original layer's output, restricted to the output channels it kept. Both are taken on
    the first ``max_images`` calibration samples at up to ``max_rows`` seeded random positions
    per layer (the same positions for ``X`` and ``Y``).

    Cost: two forward passes in all, whatever the number of layers. One pass over the original
    model stores the sampled output rows of every target; one pass over the pruned model refits
    each target in a forward pre-hook, just before it runs, so everything downstream of it sees
    the refit weights. Gram matrices are accumulated in float32 and solved in float64. Layers
    called more than once per forward (shared weights) are left alone. Returns the refit names.
    """
    targets = _reconstruction_targets(original, pruned)
    if not targets:
        return []
    x = _first_samples(inputs, max_images)

    # 1. the original model, once: sampled output rows (kept channels, bias removed) per target
    seen: dict[str, list[Any]] = {}

    def make_out_hook(i: int, name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if name in seen:
                seen[name].append(None)  # called twice: not a plain layer to refit
                return
            idx, rows = _sample_rows(mod, out, max_rows, seed=i)
            removed = set(out_removed.get(name, []))
            keep = torch.tensor([c for c in range(rows.shape[1]) if c not in removed])
            rows = rows[:, keep]
            if mod.bias is not None:
                rows = rows - mod.bias[keep]
            hw = tuple(out.shape[-2:]) if isinstance(mod, nn.Conv2d) else (0, 0)
            seen[name] = [(idx, rows, hw)]

        return hook

    handles = [
        original.get_submodule(name).register_forward_hook(make_out_hook(i, name))
        for i, name in enumerate(targets)
    ]
    try:
        with eval_mode(original):
            _forward(original, x)
    finally:
        for h in handles:
            h.remove()
    plan = {name: got[0] for name, got in seen.items() if len(got) == 1}

    # 2. the pruned model, once: refit each target just before it runs
    done: list[str] = []
    left = set(plan)

    def make_fit_hook(name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in left:
                return
            left.discard(name)
            idx, y, hw = plan[name]
            xr = _input_rows(mod, args[0], idx, hw)
            if xr.shape[0] >= xr.shape[1]:  # else under-determined: keep the pruned weights
                gram = (xr.T @ xr).double()
                lam = 1e-3 * gram.diagonal().mean().clamp(min=1e-12)
                gram.diagonal().add_(lam)
                w = torch.linalg.solve(gram, (xr.T @ y).double()).T
                mod.weight.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))
                done.append(name)
            if not left:
                raise _Stop

        return hook

    handles = [
        pruned.get_submodule(name).register_forward_pre_hook(make_fit_hook(name)) for name in plan
    ]
    try:
        with eval_mode(pruned):
            _forward(pruned, x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return sorted(done, key=targets.index)


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

    Per decision point the knobs combine in the registry's stage order (``compression/knobs.py``):
    channel pruning (torch-pruning groups, exact channel counts as predicted by ``space``), then
    low-rank factorisation of the pruned weight (truncated SVD), then unstructured magnitude
    sparsity (``sparsity``), then fake quantization (weights quantized once, activation ranges
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
        example_input: only used to build the space when ``space`` is ``None``; default: the
            model's ``input_shape``, else the first sample of the first ``calib`` batch.
        importance: channel importance (``l1``, ``l2``, ``taylor``, ``bn``: see
            ``CompressionSpace.from_model``); default ``space.importance``.
        reconstruct: least-squares refit of layers whose input channels were pruned, on the
            first 256 calibration samples (two extra forward passes; AMC / He et al. 2017).
            Changes weights only: MACs and parameters stay those ``space`` predicts.
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
        if isinstance(calib, Iterator):
            # read once below and once here: keep the batches that will be used
            calib = list(itertools.islice(calib, max_calib_batches))
        no_shape = getattr(model, "input_shape", None) is None
        if example_input is None and calib is not None and no_shape:
            example_input = _example_from_calib(calib)
        space = CompressionSpace.from_model(model, example_input)
    space.validate(policy)
    if importance is not None:
        prune.check_importance(importance, model, space._pgroups)
    inputs, raw = _calib_inputs(calib, space.example_input, max_calib_batches)
    training = model.training
    work = copy.deepcopy(model)
    work.eval()

    # Each knob type transforms the copy in its stage order: prune (torch-pruning groups, then the
    # optional refit), factorise, sparsify, quantize (compression/knobs.py).
    ctx: dict[str, Any] = {"importance": importance, "raw": raw, "inputs": inputs,
                           "reconstruct": reconstruct, "original": model}
    for kt in sorted(KNOB_TYPES.values(), key=lambda kt: kt.stage):
        kt.transform_(work, policy, space, ctx)
    quantize.calibrate_(work, inputs)
    for p in work.parameters():
        p.grad = None
    work.train(training)
    return work
