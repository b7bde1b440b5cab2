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

from typing import TYPE_CHECKING, Any

from autocompress.compression.knobs import KnobType, register_knob

# torch is imported where a layer is looked at: the knob's spec (range, identity, storage) is read
# by policies and run-directory readers that never load torch.
if TYPE_CHECKING:
    from torch import nn

    from autocompress.compression.policy import CompressionPolicy
    from autocompress.compression.space import CompressionSpace

__all__ = ["POW2_BITS"]

#: Bit-widths offered (32 = not on the powers-of-two grid); 2 bits is ``{0, +-2^n1}``.
POW2_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 32)
_POW2_KINDS = ("conv", "depthwise_conv", "grouped_conv", "linear")


class Pow2BitsKnob(KnobType):
    """Bits of a layer's powers-of-two weights (INQ's grid; 32 = not on it)."""

    name = "pow2_bits"
    identity = 32
    integer = True
    default = False
    stage = 45  # after ``w_bits`` / ``a_bits`` (40), which may have made the layer quantized
    costs = ("size_bytes", "bops")
    restats = False
    label = "pow2 bits"
    allowed = f"one of {POW2_BITS}"
    excludes = ("w_bits", "share_bits")

    def in_range(self, value: float) -> bool:
        return value in POW2_BITS

    def format(self, value: float | int) -> str:
        return "-" if value == 32 else str(int(value))

    def layer_knob(self, kind: str, module: nn.Module) -> Any:
        from torch import nn

        from autocompress.compression.space import Knob

        if kind not in _POW2_KINDS or not isinstance(getattr(module, "weight", None), nn.Parameter):
            return f"{kind} layers have no powers-of-two weights"
        return Knob(self.name, choices=POW2_BITS, most_compressed=min(POW2_BITS), least_compressed=32)

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        from autocompress.compression.lowrank import LowRank
        from autocompress.compression.quantize import pow2_quantize_

        for point in space.decision_points:
            value = policy.get(point.name).pow2_bits
            if value >= 32 or self.name not in point.knobs:
                continue
            module = model.get_submodule(point.name)
            for m in (module[0], module[1]) if isinstance(module, LowRank) else (module,):
                pow2_quantize_(m, int(value))

    def value_bits(self, value: float | int, bits: int) -> int:
        return int(value) if value < 32 else bits

    def side_bytes(self, value: float | int) -> float:
        from autocompress.compression.quantize import pow2_codebook_bytes

        return pow2_codebook_bytes(int(value)) if value < 32 else 0.0

    def compute_bits(self, value: float | int, bits: int) -> int:
        return int(value) if value < 32 else bits


register_knob(Pow2BitsKnob())
