"""INQ's powers-of-two weights (Zhou et al. 2017): the ``pow2_bits`` knob.

``pow2_bits = b`` puts a conv / linear weight (each factor of a factorised layer) on the grid
``{0, +-2^n2, ..., +-2^n1}`` of incremental network quantization: ``n1 = floor(log2(4 max|w| / 3))``
from the layer's largest weight, ``2^(b-2)`` exponents (one bit for zero, one for the sign,
``b - 2`` for the exponent; 5 bits: 8 exponents, 17 values), each weight rounded to the nearest
level (``quantize.pow2_weight``). A multiplication by such a weight is a shift. The layer is a
quantized layer (``w_bits = b``, ``w_grid = "pow2"``): fine-tuning re-projects it straight-through,
a sparse layer's zeros stay zeros. INQ's incremental schedule (quantize a growing share of the
weights, largest first, retraining the rest in between) is a training recipe on top of this grid
(``benchmarks/bench_survey.py``, ``schedule: inq``); compressing with the knob is its last step.

Storage: ``b`` bits per weight plus the float32 table of the ``2^(b-1) + 1`` values
(``quantize.pow2_codebook_bytes``), no per-channel scales: what the exported ONNX file holds with
standard operators (the indices and the values present, rebuilt by ``Gather``, the path of
``share_bits``; a ``b``-bit index is stored in the narrowest ONNX type that holds it: UINT2 at 2
bits, UINT4 at 3-4, UINT8 at 5-8). ``pow2_bits``, ``w_bits`` and ``share_bits`` all decide how the
weights are stored, so a space offers one of them.

BOPs (MACs x weight bits x activation bits, the multiplier's operand widths): a ``b``-bit
powers-of-two weight (a sign and an exponent index) multiplies as a ``b``-bit operand (really a
shift), so the layer counts ``b`` where ``w_bits`` would stand (``compute_bits``; the layer holds
``w_bits = b``, which ``counting.count_bops`` reads). A ``share_bits`` layer, by contrast, still
multiplies by float32 codebook values and counts 32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autocompress.compression.knobs import WeightCodeKnob, register_knob

# torch is imported where a layer is looked at: the knob's spec (range, identity, storage) is read
# by policies and run-directory readers that never load torch.
if TYPE_CHECKING:
    from torch import nn


__all__ = ["POW2_BITS"]

#: Bit-widths offered (32 = not on the powers-of-two grid); 2 bits is ``{0, +-2^n1}``.
POW2_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 32)


class Pow2BitsKnob(WeightCodeKnob):
    """Bits of a layer's powers-of-two weights (INQ's grid; 32 = not on it)."""

    name = "pow2_bits"
    choices = POW2_BITS
    left_out = "have no powers-of-two weights"
    stage = 45  # after ``w_bits`` / ``a_bits`` (40), which may have made the layer quantized
    costs = ("size_bytes", "bops")
    label = "pow2 bits"
    allowed = f"one of {POW2_BITS}"
    excludes = ("w_bits", "share_bits")

    def encode_(self, module: nn.Module, bits: int) -> None:
        # quantize loads torch, which the registry's modules must not at import
        from autocompress.compression.quantize import pow2_quantize_

        pow2_quantize_(module, bits)

    def side_bytes(self, value: float | int) -> float:
        # quantize loads torch, which the registry's modules must not at import
        from autocompress.compression.quantize import pow2_codebook_bytes

        return pow2_codebook_bytes(int(value)) if value < 32 else 0.0

    def compute_bits(self, value: float | int, bits: int) -> int:
        return int(value) if value < 32 else bits


register_knob(Pow2BitsKnob())
