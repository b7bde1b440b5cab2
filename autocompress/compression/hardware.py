"""What the deployment target runs fast: the channel multiple kept channel counts default to.

CPU convolution kernels (oneDNN in PyTorch, MLAS in ONNX Runtime) vectorise over output
channels in blocks of the SIMD width in fp32 lanes: 16 with AVX-512, 8 with AVX2/AVX, 4 with
128-bit NEON/SSE. A layer whose channel count is not a multiple of the block is padded up to it
(the extra lanes are computed and thrown away) or leaves the blocked fast path altogether, so
pruning 16 channels to 12 saves MACs on paper and no time; ``benchmarks/README.md`` ("Measured
speed-up") shows pruned models barely faster, or slower, with ``round_to=1``. The default
``round_to="auto"`` therefore rounds kept channel counts to this block, halved where the model's
narrowest layer would otherwise lose its pruning choices (see :func:`auto_round_to`).
"""

from __future__ import annotations

from autocompress.errors import UserInputError

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


def narrowest_width(model: object, num_classes: int | None = None) -> int | None:
    """Fewest output channels of any convolution / hidden linear layer of ``model`` (None if none).

    A linear layer with ``num_classes`` outputs is the classifier and is never pruned.
    """
    from torch import nn

    widths = []
    for m in model.modules():  # type: ignore[attr-defined]
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            widths.append(int(m.out_channels))
        elif isinstance(m, nn.Linear) and m.out_features != num_classes:
            widths.append(int(m.out_features))
        elif isinstance(m, nn.LSTM | nn.GRU):
            widths.append(int(m.hidden_size))
    return min(widths) if widths else None


def auto_round_to(model: object = None, num_classes: int | None = None) -> int:
    """The channel multiple ``round_to="auto"`` resolves to: the CPU's SIMD width in floats, halved
    until the model's narrowest layer can still lose half its channels (16 channels with AVX2:
    8; a width-8 layer: 4), so every layer stays prunable."""
    lanes = cpu_simd_floats()
    narrow = narrowest_width(model, num_classes) if model is not None else None
    if narrow is None:
        return lanes
    m = lanes
    while m > 1 and m > narrow // 2:
        m //= 2
    return m


def check_round_to(value: object) -> int | str:
    """``"auto"`` stays ``"auto"`` (resolved per model by :func:`auto_round_to`); a positive
    integer (or its text) becomes an int; anything else is refused in one line."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise UserInputError(f"round_to={value!r}; expected a positive integer or auto")
    return int(value)
