"""Unstructured magnitude pruning (Han et al. 2015): the ``sparsity`` knob.

``sparsity = s`` zeroes the ``floor(s * numel)`` smallest-magnitude weights of a conv / linear
layer (of each factor of a factorised layer), ties broken by position. The zeros are kept by a
boolean ``weight_mask`` buffer on the layer: fine-tuning (``distill``) multiplies the weight by it
after every optimizer step, and quantization (``quantize.requantize``) keeps masked weights at zero.

Storage (:func:`sparse_bytes`): a sparse weight is stored as its nonzeros' values (at the layer's
weight bit-width, 32 in float) plus a bitmap of the flattened weight, one bit per entry packed
eight to a byte (``ceil(numel / 8)`` bytes); quantized layers keep their float32 scales. This is
the layout the exported ONNX file holds (``deploy._lowbit_encode._encode``: a UINT8 bitmap, rebuilt with standard
operators), so the reported size is the file's weight bytes. Unlike Deep Compression's relative
indices with filler zeros for long gaps, its size depends on the nonzero count alone, so the cost
model predicts it from the policy. A tensor is stored dense when that is smaller (sparsity above
``1 / bits`` makes the bitmap pay), so raising ``sparsity`` never raises the size. MACs and BOPs
are those of the dense layer (dense kernels); ``params`` counts the stored (nonzero) weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autocompress.compression.knobs import (
    WEIGHT_KINDS,
    Knob,
    KnobType,
    apply_per_weight_,
    register_knob,
)

# torch is imported by the functions that touch tensors: the knob's spec (range, identity, storage)
# is read by policies and run-directory readers that never load torch.
if TYPE_CHECKING:
    from torch import Tensor, nn

    from autocompress.compression.policy import CompressionPolicy
    from autocompress.compression.space import CompressionSpace

__all__ = ["MAX_SPARSITY", "magnitude_mask", "sparse_bytes", "zeroed"]

#: Largest sparsity offered per layer (the survey's magnitude-pruning settings reach 0.9).
MAX_SPARSITY = 0.95


def zeroed(numel: int, sparsity: float) -> int:
    """Weights zeroed in a tensor of ``numel`` elements at ``sparsity``."""
    return int(math.floor(sparsity * numel + 1e-9))


def sparse_bytes(nnz: int, numel: int, bits: int, scales: int) -> float:
    """Bytes of a sparse weight: ``nnz`` values at ``bits``, a one-bit-per-entry bitmap of its
    ``numel`` entries (whole bytes), float32 scales."""
    return nnz * bits / 8.0 + float(-(-numel // 8)) + 4.0 * scales


def magnitude_mask(w: Tensor, sparsity: float) -> Tensor:
    """Boolean mask keeping all but the ``zeroed(numel, sparsity)`` smallest ``|w|`` (stable)."""
    import torch

    k = zeroed(w.numel(), sparsity)
    with torch.no_grad():
        mask = torch.ones(w.numel(), dtype=torch.bool)
        if k > 0:
            order = torch.sort(w.detach().abs().flatten().cpu(), stable=True).indices
            mask[order[:k]] = False
        return mask.reshape(w.shape).to(w.device)


def sparsify_(module: nn.Module, sparsity: float) -> None:
    """Zero the smallest weights of ``module`` and register its ``weight_mask`` buffer."""
    import torch

    with torch.no_grad():
        mask = magnitude_mask(module.weight, sparsity)
        module.register_buffer("weight_mask", mask)
        module.weight.mul_(mask)


class SparsityKnob(KnobType):
    """Fraction of a layer's weights zeroed by magnitude (unstructured)."""

    name = "sparsity"
    identity = 0.0
    default = False
    stage = 30
    costs = ("params", "size_bytes")
    restats = True
    label = "sparsity"
    allowed = f"0 <= sparsity <= {MAX_SPARSITY:g}"

    def in_range(self, value: float) -> bool:
        return math.isfinite(value) and 0.0 <= value <= MAX_SPARSITY

    def layer_knob(self, kind: str, module: nn.Module) -> Any:
        from torch import nn

        if kind not in WEIGHT_KINDS or not isinstance(getattr(module, "weight", None), nn.Parameter):
            return f"{kind} layers are not sparsified"
        return Knob(self.name, low=0.0, high=MAX_SPARSITY, most_compressed=MAX_SPARSITY,
                    least_compressed=0.0)

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        apply_per_weight_(model, policy, space, self.name, sparsify_)

    def stored_params(self, value: float | int, numel: int) -> int:
        return numel - zeroed(numel, float(value))


register_knob(SparsityKnob())
