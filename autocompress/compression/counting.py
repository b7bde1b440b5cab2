"""Count MACs, BOPs, parameters and storage bytes on a real module (the ground truth the cost model must match).

Units: MACs are multiply-accumulates per input sample (batch 1); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from autocompress.compression.knobs import weight_storage_bytes
from autocompress.compression.lowrank import LowRank
from autocompress.compression.lowrank_rnn import LowRankRNN
from autocompress.compression.quantize import (
    pow2_codebook_bytes,
    quantized_weight_bytes,
    weight_scale_count,
)
from autocompress.metrics import macs_from_flops

__all__ = ["count_bops", "count_macs", "count_params", "count_size_bytes", "module_macs_formula"]

# Modules whose MACs FlopCounterMode misses or under-counts (checked on torch 2.14): nn.LSTM runs as
# one aten op without a FLOP formula (counted 0), nn.GRU/nn.RNN are counted by some dispatch paths
# only, and nn.MultiheadAttention's attention products (and, under no_grad in eval, its whole fast
# path) are not counted. For these we replace whatever was counted inside them by a closed form.
_FORMULA_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.MultiheadAttention)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every submodule in eval mode (BatchNorm must not update its statistics)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _as_args(example_input: Any) -> tuple[Any, ...]:
    if isinstance(example_input, tuple):
        return example_input
    if isinstance(example_input, list):
        return tuple(example_input)
    return (example_input,)


def _batch_size(example_input: Any) -> int:
    for a in _as_args(example_input):
        if isinstance(a, Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return 1


def _module_batch(module: nn.Module, x: Any) -> int:
    """Batch size of an RNN / attention module's first input: dim 1 of a sequence-first one."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.batch_sizes[0])
    if not isinstance(x, Tensor) or x.dim() < 3:  # unbatched (T, I) / (L, E)
        return 1
    return int(x.shape[0] if getattr(module, "batch_first", False) else x.shape[1])


def _rnn_steps(module: nn.RNNBase, inputs: tuple[Any, ...]) -> float:
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return float(x.data.shape[0]) / float(x.batch_sizes[0])  # steps per sample, on average
    if x.dim() == 2:  # unbatched (T, I)
        return float(x.shape[0])
    return float(x.shape[1] if module.batch_first else x.shape[0])


def _mha_lengths(module: nn.MultiheadAttention, inputs: tuple[Any, ...]) -> tuple[int, int]:
    q, k = inputs[0], inputs[1]  # (query, key) positionally; see count_macs for keywords
    if q.dim() == 2:  # unbatched (L, E)
        return int(q.shape[0]), int(k.shape[0])
    if module.batch_first:
        return int(q.shape[1]), int(k.shape[1])
    return int(q.shape[0]), int(k.shape[0])


def module_macs_formula(module: nn.Module, inputs: tuple[Any, ...]) -> float:
    """Closed-form MACs per sample of one call of an RNN/LSTM/GRU or MultiheadAttention module.

    RNNs: steps x (sum of the numels of every ``weight_ih``/``weight_hh``/``weight_hr`` matrix),
    i.e. the matrix-vector products per step (gate nonlinearities are not MACs).
    MultiheadAttention: the q/k/v and output projections plus QK^T and AV (2 x Lq x Lk x E).
    """
    if isinstance(module, nn.RNNBase):
        steps = _rnn_steps(module, inputs)
        numel = sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight_"))
        return steps * numel
    if isinstance(module, nn.MultiheadAttention):
        lq, lk = _mha_lengths(module, inputs)
        e = module.embed_dim
        if module.in_proj_weight is not None:
            proj = lq * e * e + 2 * lk * e * e
        else:
            proj = lq * module.q_proj_weight.numel() + lk * (
                module.k_proj_weight.numel() + module.v_proj_weight.numel()
            )
        return float(proj + lq * module.out_proj.weight.numel() + 2 * lq * lk * e)
    raise TypeError(f"no MAC formula for {type(module).__name__}")


def _full_inputs(
    module: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    names = ("query", "key", "value") if isinstance(module, nn.MultiheadAttention) else ("input",)
    full = list(inputs)
    for name in names[len(full) :]:
        if name in kwargs:
            full.append(kwargs[name])
    return tuple(full)


@contextlib.contextmanager
def _outermost_calls(modules: Iterable[nn.Module]) -> Iterator[list[tuple[nn.Module, tuple[Any, ...], dict[str, Any]]]]:
    """Record ``(module, inputs, kwargs)`` of each call of ``modules`` made while the block runs,
    the outermost only (a module called inside another recorded one is skipped: an LSTM inside a
    custom RNN wrapper, a factor inside a ``LowRankRNN``); the hooks are gone after the block."""
    calls: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any]]] = []
    depth = [0]

    def pre(module: nn.Module, inputs: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if depth[0] == 0:
            calls.append((module, inputs, dict(kw)))
        depth[0] += 1

    def post(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        depth[0] -= 1

    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post))
        yield calls
    finally:
        for h in handles:
            h.remove()


def _macs_total(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> float:
    """MACs of one call ``model(*args, **kwargs)`` for the whole batch (see ``count_macs``)."""
    with eval_mode(model):
        with _outermost_calls(m for m in model.modules() if isinstance(m, _FORMULA_TYPES)) as calls:
            with FlopCounterMode(display=False) as counter:
                model(*args, **(kwargs or {}))
        total = macs_from_flops(counter.get_total_flops())
        for module, inputs, kw in calls:
            with FlopCounterMode(display=False) as counter:
                module(*inputs, **kw)
            counted = macs_from_flops(counter.get_total_flops())
            full = _full_inputs(module, inputs, kw)
            total += module_macs_formula(module, full) * _module_batch(module, full[0]) - counted
    return float(total)


@torch.no_grad()
def count_macs(model: nn.Module, example_input: Any) -> int:
    """MACs per sample of one forward pass of ``model`` on ``example_input``, counted on the module.

    Convolutions and matrix products are counted by ``torch.utils.flop_counter.FlopCounterMode``
    (its FLOPs / 2); RNN/LSTM/GRU and MultiheadAttention modules use ``module_macs_formula``
    instead (FlopCounterMode misses them). The count is divided by the batch size of
    ``example_input``; the model runs in eval mode and its train/eval flags are restored.

    Args:
        model: any module.
        example_input: a tensor, or a tuple of positional inputs.

    Returns:
        Integer MACs per sample (FLOPs = 2 x MACs).
    """
    total = _macs_total(model, _as_args(example_input))
    return int(round(total / _batch_size(example_input)))


def _layer_bits(module: nn.Module) -> tuple[int, int] | None:
    """``(weight bits, activation bits)`` a layer multiplies at, or None for a float layer.

    A quantized layer holds them (``w_bits``, ``a_bits``; a powers-of-two layer's ``w_bits`` is
    its ``pow2_bits``). A ``LowRankRNN`` is one layer whose matrices share ``w_bits`` while only
    the first reads the quantized input sequence: the cost model counts all its MACs at that pair.
    """
    if isinstance(module, LowRankRNN):
        first = module.matrices()[0]
        first = first[0] if isinstance(first, LowRank) else first
        aq = getattr(first, "act_quant", None)
        return int(getattr(first, "w_bits", 32)), int(aq.bits) if aq is not None else 32
    wb, ab = getattr(module, "w_bits", None), getattr(module, "a_bits", None)
    if isinstance(wb, int) and isinstance(ab, int):
        return wb, ab
    return None


@torch.no_grad()
def count_bops(model: nn.Module, example_input: Any) -> float:
    """Bit-operations per sample of one forward pass: each MAC times the widths of its operands.

    A quantized layer's MACs count ``w_bits x a_bits`` (a powers-of-two layer holds ``w_bits =
    pow2_bits``: its ``b``-bit weights multiply as ``b``-bit operands, really shifts; a k-means
    shared layer multiplies by float32 codebook values, 32 bits); every other MAC, and the
    attention products of a quantized ``MultiheadAttention``, counts ``32 x 32``. The ground truth
    of ``CompressionSpace.bops``.

    Args:
        model: any module.
        example_input: a tensor, or a tuple of positional inputs.

    Returns:
        BOPs per sample (a float: MACs per sample may be fractional for packed sequences).
    """
    args = _as_args(example_input)
    units = {id(m): bits for m in model.modules()
             if (bits := _layer_bits(m)) is not None and bits != (32, 32)}
    total = 1024.0 * _macs_total(model, args)
    with eval_mode(model):
        with _outermost_calls(m for m in model.modules() if id(m) in units) as calls:
            model(*args)  # which layers run, on what
        for module, inputs, kw in calls:
            macs = _macs_total(module, inputs, kw)
            if isinstance(module, nn.MultiheadAttention):  # QK^T and AV stay float
                lq, lk = _mha_lengths(module, _full_inputs(module, inputs, kw))
                macs -= 2.0 * lq * lk * module.embed_dim * _module_batch(module, inputs[0])
            wb, ab = units[id(module)]
            total += macs * (wb * ab - 1024.0)
    return total / _batch_size(example_input)


def _masked(model: nn.Module) -> dict[int, tuple[nn.Module, Tensor]]:
    """``{id(weight): (module, mask)}`` of the sparse layers (a ``weight_mask`` buffer)."""
    out = {}
    for m in model.modules():
        mask = getattr(m, "weight_mask", None)
        w = getattr(m, "weight", None)
        if isinstance(mask, Tensor) and isinstance(w, Tensor) and mask.shape == w.shape:
            out[id(w)] = (m, mask)
    return out


def count_params(model: nn.Module) -> int:
    """Number of stored parameter elements (shared parameters counted once; a sparse weight
    counts its nonzeros, the entries its ``weight_mask`` keeps)."""
    masked = _masked(model)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int(masked[id(p)][1].sum()) if id(p) in masked else p.numel()
    return total


def count_size_bytes(model: nn.Module) -> float:
    """Storage of the parameters at their real bit-widths, in bytes.

    Quantized weight tensors (see ``autocompress.compression.quantize``) count ``numel x bits / 8``
    plus 4 bytes per scale (per output channel at 3-16 bits, one per tensor at 1-2 bits), capped
    at their float32 size (powers-of-two weights: their value table instead of scales); every other parameter counts 4 bytes (float32). A sparse weight (a
    ``weight_mask`` buffer) is stored as its nonzeros plus a bitmap when that is smaller, a shared weight (a
    ``weight_codebook``) as log2(k)-bit indices plus its codebook (``knobs.weight_storage_bytes``).
    Buffers (BatchNorm running statistics, activation ranges, masks) are not counted.
    """
    special: dict[int, float] = {}
    for m in model.modules():
        for p, nbytes in quantized_weight_bytes(m):
            special[id(p)] = nbytes
    for m in model.modules():  # sparse (weight_mask) and shared (weight_codebook) weights
        mask, book = getattr(m, "weight_mask", None), getattr(m, "weight_codebook", None)
        w = getattr(m, "weight", None)
        if not isinstance(w, Tensor) or not (isinstance(mask, Tensor) or isinstance(book, Tensor)):
            continue
        bits = int(getattr(m, "w_bits", 32))
        pow2 = bits < 32 and getattr(m, "w_grid", "uniform") == "pow2"  # a value table, no scales
        scales = (0 if bits >= 32 or pow2 or getattr(m, "scale_folded", False)
                  else weight_scale_count(w.shape, bits))
        nnz = int(mask.sum()) if isinstance(mask, Tensor) else w.numel()
        side = pow2_codebook_bytes(bits) if pow2 else 0.0
        if isinstance(book, Tensor):
            bits, side = int(round(math.log2(book.numel()))), 4.0 * book.numel()
        special[id(w)] = weight_storage_bytes(w.numel(), nnz, int(w.shape[0]), bits, scales, side)
    total = 0.0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += special.get(id(p), 4.0 * p.numel())
    return total
