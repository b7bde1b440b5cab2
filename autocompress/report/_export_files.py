"""What an export writes for a policy: the layers an int8 model runs in int8, and the ONNX file
of a compressed model with its weights stored as the search counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from autocompress.deploy import (
    ONNX_OPSET,
    LowBitWeights,
    export_onnx_with,
    exportable,
    store_lowbit_weights,
)

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy


def int8_eligible(policy: CompressionPolicy) -> bool:
    """True when the policy quantizes something and every quantized knob is exactly 8 bits."""
    bits = [b for a in policy.layers.values() for b in (a.w_bits, a.a_bits)]
    return any(b == 8 for b in bits) and all(b in (8, 32) for b in bits)


def float_layers(policy: CompressionPolicy) -> list[str]:
    """Layers the policy leaves in float (both bit-widths 32)."""
    return [n for n, a in policy.layers.items() if a.w_bits == 32 and a.a_bits == 32]


def int8_layers(policy: CompressionPolicy) -> list[str]:
    """Layers an int8 model runs in int8: 8-bit weights and 8-bit activations in the policy."""
    return [n for n, a in policy.layers.items() if a.w_bits == 8 and a.a_bits == 8]


def _bits(policy: CompressionPolicy, names: Sequence[str]) -> list[str]:
    return [f"{n} (w{policy[n].w_bits}/a{policy[n].a_bits})" for n in names]


def onnx_bytes(model: nn.Module, example_input: Tensor) -> tuple[bytes, str]:
    """The model as one self-contained ONNX file (dynamic batch axis) and the exporter used.

    The TorchScript-based exporter (``dynamo=False``) keeps module scopes in node names (used to
    keep float layers out of int8 quantization); the dynamo exporter is the fallback for graphs
    that do not trace.
    """
    return export_onnx_with(model, example_input, opset=ONNX_OPSET)


def _pow2(m: nn.Module) -> bool:
    return getattr(m, "w_grid", "uniform") == "pow2" and int(getattr(m, "w_bits", 32)) < 32


def weight_bits(model: nn.Module) -> dict[str, int]:
    """Module FQN -> weight bits of every layer of ``model`` whose weights are quantized (< 32)
    on the uniform grid (powers-of-two weights are stored as indices, see ``shared_layers``)."""
    return {n: int(m.w_bits) for n, m in model.named_modules()
            if isinstance(getattr(m, "w_bits", None), int) and m.w_bits < 32 and not _pow2(m)}


def sparse_layers(model: nn.Module) -> list[str]:
    """Module FQNs of the layers of ``model`` whose weights are sparse (a ``weight_mask``)."""
    return [n for n, m in model.named_modules() if isinstance(getattr(m, "weight_mask", None), Tensor)]


def shared_layers(model: nn.Module) -> dict[str, int]:
    """Module FQN -> index bits of every layer whose weight is k-means shared (a codebook) or on
    the powers-of-two grid (``pow2_bits``: indices into its few values, as ``size_bytes`` counts)."""
    out = {n: int(round(math.log2(m.weight_codebook.numel()))) for n, m in model.named_modules()
           if isinstance(getattr(m, "weight_codebook", None), Tensor)}
    out.update({n: int(m.w_bits) for n, m in model.named_modules() if _pow2(m)})
    return out


def compressed_onnx_bytes(model: nn.Module, example_input: Tensor) -> tuple[bytes, str, LowBitWeights | None]:
    """The ONNX file of a compressed model, its weights stored as the search counts them.

    A model without quantized, sparse or shared weights is exported exactly as ``onnx_bytes``
    does (same bytes; the ``LowBitWeights`` is None). Otherwise BatchNorm is kept out of the
    convolution weights (``fold_batchnorm=False``: folding would move them off their grid or
    codebook) and ``store_lowbit_weights`` replaces each quantized weight (LSTM / GRU ``W`` and
    ``R`` included) by INT2/INT4/INT8/INT16 codes, its scales and a ``DequantizeLinear``, each
    shared weight by its indices and codebook, and each sparse weight by its nonzeros and a
    bitmap: the same values, in about the bytes ``size_bytes`` counts.
    """
    model = exportable(model)  # a proj_size LSTM's matrices, each with its bits
    bits = weight_bits(model)
    sparse, shared = sparse_layers(model), shared_layers(model)
    if not bits and not sparse and not shared:
        blob, exporter = onnx_bytes(model, example_input)
        return blob, exporter, None
    blob, exporter = export_onnx_with(model, example_input, opset=ONNX_OPSET, fold_batchnorm=False)
    blob, lowbit = store_lowbit_weights(blob, bits, sparse=sparse, shared=shared)
    return blob, exporter, lowbit
