"""What the deployment target runs fast: the channel multiple kept channel counts default to.

CPU convolution kernels (oneDNN in PyTorch, MLAS in ONNX Runtime) vectorise over output
channels in blocks of the SIMD width in fp32 lanes: 16 with AVX-512, 8 with AVX2/AVX, 4 with
128-bit NEON/SSE. A layer whose channel count is not a multiple of the block is padded up to it
(the extra lanes are computed and thrown away) or leaves the blocked fast path altogether, so
pruning 16 channels to 12 saves MACs on paper and no time; ``benchmarks/README.md`` ("Measured
speed-up") shows pruned models barely faster, or slower, with ``round_to=1``. The default
``round_to="auto"`` therefore rounds kept channel counts to this block.
"""

from __future__ import annotations

#: PyTorch's CPU capability name -> fp32 lanes of one SIMD register.
_LANES = {"AVX512": 16, "AVX2": 8, "AVX": 8, "ZVECTOR": 4, "VSX": 4, "NEON": 4, "SVE256": 8, "DEFAULT": 4}


def cpu_simd_floats() -> int:
    """fp32 lanes of this CPU's vector unit as PyTorch dispatches to it (4 when unknown)."""
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - an old or unusual build: the narrowest common width
        return 4
    return _LANES.get(capability, 4)


def auto_round_to() -> int:
    """The channel multiple ``round_to="auto"`` resolves to on this machine's CPU."""
    return cpu_simd_floats()


def resolve_round_to(value: object) -> int:
    """``"auto"`` -> :func:`auto_round_to`; a positive integer stays; anything else is refused."""
    from autocompress.errors import UserInputError

    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_round_to()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise UserInputError(f"round_to={value!r}; expected a positive integer or auto")
    return int(value)
