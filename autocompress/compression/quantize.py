"""Simulated (fake-quant) quantization: quantized weights stored once, activation ranges calibrated.

Weights (``w_bits``):
    * 3..16 bits: per-output-channel symmetric, ``s_c = max|w_c| / (2^(b-1) - 1)``,
      ``q = clamp(round(w / s_c)) * s_c`` (at most ``2^b - 1`` distinct values per channel);
    * 2 bits: ternary (TWN, Li et al. 2016), per tensor: ``D = 0.7 * mean|w|``,
      ``a = mean(|w| for |w| > D)``, ``q = a * sign(w) * [|w| > D]``: exactly the values ``{-a, 0, +a}``;
    * 1 bit: binary, per tensor: ``q = mean|w| * sign(w)`` (sign(0) = +1);
    * 32 bits: untouched;
    * powers of two (a layer whose ``w_grid`` is ``"pow2"``, set by the ``pow2_bits`` knob): INQ's
      grid ``{0, +-2^n2, ..., +-2^n1}`` (:func:`pow2_weight`).
The quantized values are written into the layer's weight at compress time, so the stored model
already holds them (plain inference needs no quantization op for weights). In training mode the
weight is re-quantized in the forward pass with a straight-through estimator, so fine-tuning
(e.g. knowledge distillation) keeps the forward pass on the grid while updating latent weights.

Activations (``a_bits`` < 32): per-tensor affine quantization of the layer's input,
``[lo, hi]`` calibrated as the min/max over the calibration batches (widened to include 0),
applied as ``x + (q(x) - x).detach()`` (straight-through), built from plain round/clamp ops so
the model stays exportable with ``torch.onnx.export``.

RNNs (LSTM/GRU/RNN) and MultiheadAttention get their weight matrices quantized in place and their
input(s) quantized; their weights are not re-quantized during training. The recurrent states (an
LSTM's cell state c and hidden state h, a GRU's h) stay float32 whatever ``w_bits`` / ``a_bits``
say: the survey (§3) reports that the cell state needs at least 10 bits, so it is kept above every
weight width on offer (at most 16 bits) rather than searched; ``a_bits`` quantizes only the input
sequence. The fused ``nn.LSTM`` / ``nn.GRU`` kernels and ONNX's ``LSTM`` / ``GRU`` operators also keep
their states in float, so the exported model computes the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ActQuant",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantGRU",
    "QuantLSTM",
    "QuantLinear",
    "QuantMultiheadAttention",
    "QuantRNN",
    "calibrate_",
    "pow2_codebook_bytes",
    "pow2_levels",
    "pow2_quantize_",
    "pow2_weight",
    "quantize_factorised_",
    "quantize_levels",
    "quantize_module_",
    "quantize_weight",
    "quantized_weight_bytes",
    "requantize",
    "weight_scale_count",
]


def weight_scale_count(shape: tuple[int, ...] | torch.Size, bits: int) -> int:
    """How many float32 scales a weight of ``shape`` stores at ``bits`` (0 when not quantized)."""
    if bits >= 32:
        return 0
    if bits <= 2:
        return 1  # ternary / binary: one scale per tensor
    return int(shape[0]) if len(shape) > 0 else 1


@torch.no_grad()
def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """The fake-quantized copy of a weight tensor (see the module docstring for the schemes)."""
    if bits >= 32:
        return w.clone()
    w = w.detach()
    if bits == 1:
        alpha = w.abs().mean()
        return torch.where(w >= 0, alpha, -alpha).to(w.dtype)
    if bits == 2:
        absw = w.abs()
        delta = 0.7 * absw.mean()
        mask = absw > delta
        if not bool(mask.any()):  # all-equal magnitudes: keep the largest
            mask = absw >= absw.max()
        alpha = absw[mask].mean()
        return (torch.sign(w) * mask * alpha).to(w.dtype)
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale
    return q.reshape(w.shape).to(w.dtype)


def pow2_levels(w: Tensor, bits: int) -> Tensor:
    """INQ's magnitudes for ``w`` at ``bits`` (Zhou et al. 2017): ``[0, 2^n2, ..., 2^n1]`` (float64).

    ``n1 = floor(log2(4 max|w| / 3))`` (so the largest weight rounds to ``2^n1``) and
    ``n2 = n1 + 1 - 2^(b-2)``: one bit says zero, one the sign, ``b - 2`` the exponent, so
    ``2^(b-2)`` exponents and ``2^(b-1) + 1`` values (5 bits: 8 exponents, 17 values). An
    all-zero ``w`` has the single level 0.
    """
    s = float(w.detach().abs().max()) if w.numel() else 0.0
    if s <= 0.0 or not math.isfinite(s):
        return torch.zeros(1, dtype=torch.float64)
    m, e = math.frexp(s)  # s = m 2^e, 0.5 <= m < 1: 4 s / 3 >= 2^e exactly when m >= 3/4
    n1 = e if m >= 0.75 else e - 1
    n2 = n1 + 1 - 2 ** (bits - 2)
    exps = torch.arange(n2, n1 + 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.pow(2.0, exps)])


@torch.no_grad()
def pow2_weight(w: Tensor, bits: int, levels: Tensor | None = None) -> Tensor:
    """``w`` on INQ's powers-of-two grid: ``sign(w) beta`` for the level ``beta`` of
    :func:`pow2_levels` with ``(alpha + beta) / 2 <= |w| < (beta + gamma) / 2`` (``alpha`` the
    level below, ``gamma`` the one above; 0 below half the smallest power). ``levels``: a grid
    fixed beforehand (INQ's stages keep the one of the full-precision layer). Idempotent: the
    largest weight lands on ``2^n1``, whose grid is the same.
    """
    w = w.detach()
    lv = pow2_levels(w, bits) if levels is None else levels.to(torch.float64)
    mids = (lv[:-1] + lv[1:]) / 2
    mag = lv[torch.bucketize(w.abs().double().cpu(), mids, right=True)]
    return (torch.sign(w).double().cpu() * mag + 0.0).to(device=w.device, dtype=w.dtype)  # no -0.0


@torch.no_grad()
def quantize_levels(w: Tensor, bits: int) -> Tensor:
    """Round onto the unit-scale integer grid (a low-rank first factor whose scales were folded).

    3-16 bits: ``clamp(round(w), -(2^(b-1) - 1), 2^(b-1) - 1)``; 2 bits: ``sign(w) [|w| > 0.5]``;
    1 bit: ``sign(w)`` (sign(0) = +1); 32 bits: unchanged.
    """
    if bits >= 32:
        return w.clone()
    w = w.detach()
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if bits == 2:
        return (torch.sign(w) * (w.abs() > 0.5)).to(w.dtype)
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(w), -qmax, qmax)


def requantize(module: nn.Module, w: Tensor) -> Tensor:
    """``w`` projected onto ``module``'s weight grid: use it to re-project after fine-tuning.

    A quantized layer's grid is ``quantize_weight(w, module.w_bits)``, except for the first
    factor of a quantized low-rank pair (``module.scale_folded``), whose scales live in the second
    factor: its grid is the unit-scale integer one (``quantize_levels``), and for a layer on the
    powers-of-two grid (``module.w_grid == "pow2"``: ``pow2_weight``). A sparse layer's
    ``weight_mask`` is applied after rounding (binary weights have no zero level).
    """
    bits = int(getattr(module, "w_bits", 32))
    if getattr(module, "w_grid", "uniform") == "pow2" and bits < 32:
        q = pow2_weight(w, bits)
    elif getattr(module, "scale_folded", False):
        q = quantize_levels(w, bits)
    else:
        q = quantize_weight(w, bits)
    mask = getattr(module, "weight_mask", None)  # unstructured sparsity: zeros stay zeros
    if isinstance(mask, Tensor) and mask.shape == q.shape:
        q = q * mask
    return q


class _STEWeight(torch.autograd.Function):
    """Forward: the weight on its module's grid; backward: identity (straight-through)."""

    @staticmethod
    def forward(ctx: object, w: Tensor, module: nn.Module) -> Tensor:  # type: ignore[override]
        return requantize(module, w)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class ActQuant(nn.Module):
    """Per-tensor affine fake-quantizer for activations, calibrated by min/max observation.

    Modes: ``"observe"`` (pass through, record min/max), ``"quant"`` (quantize),
    ``"off"`` (pass through; also used when the layer was never reached during calibration).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.mode = "observe" if self.bits < 32 else "off"
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))

    @property
    def qmax(self) -> int:
        """Largest integer level (levels are 0..qmax)."""
        return 2**self.bits - 1

    def freeze(self) -> None:
        """End calibration: fix scale and zero point from the observed range."""
        if self.bits >= 32:
            self.mode = "off"
            return
        if not bool(torch.isfinite(self.lo)) or not bool(torch.isfinite(self.hi)):
            self.mode = "off"  # never reached by the calibration data
            return
        lo = torch.clamp(self.lo, max=0.0)
        hi = torch.clamp(self.hi, min=0.0)
        scale = (hi - lo) / self.qmax
        if float(scale) <= 0.0:
            scale = torch.tensor(1.0)
        self.scale.fill_(float(scale))
        self.zero_point.fill_(float(torch.round(-lo / scale)))
        self.mode = "quant"

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "off" or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        if self.mode == "observe":
            d = x.detach()
            self.lo.copy_(torch.minimum(self.lo, d.min().to(self.lo.dtype)))
            self.hi.copy_(torch.maximum(self.hi, d.max().to(self.hi.dtype)))
            return x
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0.0, float(self.qmax))
        q = (q - self.zero_point) * self.scale
        return x + (q - x).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}"


class _QuantMixin:
    """Shared state of quantized layers: ``w_bits``, ``a_bits``, ``act_quant`` and the weight names."""

    w_bits: int
    a_bits: int
    act_quant: ActQuant
    _QUANT_WEIGHTS: tuple[str, ...] = ("weight",)

    def _quant_weight_names(self) -> list[str]:
        return [n for n in self._QUANT_WEIGHTS if isinstance(getattr(self, n, None), nn.Parameter)]

    def _setup_quant(self, w_bits: int, a_bits: int) -> None:
        self.w_bits = int(w_bits)
        self.a_bits = int(a_bits)
        first = next(iter(self.parameters()), None)  # type: ignore[attr-defined]
        self.act_quant = ActQuant(a_bits).to(first.device if first is not None else "cpu")
        with torch.no_grad():
            for name in self._quant_weight_names():
                p = getattr(self, name)
                mask = getattr(self, "weight_mask", None) if name == "weight" else None
                q = quantize_weight(p, self.w_bits)
                p.copy_(q if mask is None else q * mask)

    def _train_weight(self, w: Tensor) -> Tensor:
        if self.training and self.w_bits < 32 and torch.is_grad_enabled():  # type: ignore[attr-defined]
            return _STEWeight.apply(w, self)
        return w


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with a quantized weight and a quantized input."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self._train_weight(self.weight), self.bias)


class QuantConv1d(_QuantMixin, nn.Conv1d):
    """``nn.Conv1d`` with a quantized weight and a quantized input."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self._train_weight(self.weight), self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with a quantized weight and a quantized input."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self._train_weight(self.weight), self.bias)


class QuantConv3d(_QuantMixin, nn.Conv3d):
    """``nn.Conv3d`` with a quantized weight and a quantized input."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self._train_weight(self.weight), self.bias)


class _QuantRNNMixin(_QuantMixin):
    def _quant_weight_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters(recurse=False) if n.startswith("weight_")]  # type: ignore[attr-defined]

    def forward(self, input, hx=None):  # type: ignore[no-untyped-def]  # noqa: A002 - nn.RNNBase's name
        if torch.is_tensor(input):
            input = self.act_quant(input)
        return super().forward(input, hx)  # type: ignore[misc]


class QuantLSTM(_QuantRNNMixin, nn.LSTM):
    """``nn.LSTM`` with quantized weight matrices and a quantized input sequence."""


class QuantGRU(_QuantRNNMixin, nn.GRU):
    """``nn.GRU`` with quantized weight matrices and a quantized input sequence."""


class QuantRNN(_QuantRNNMixin, nn.RNN):
    """``nn.RNN`` with quantized weight matrices and a quantized input sequence."""


class QuantMultiheadAttention(_QuantMixin, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with quantized projection weights and quantized inputs."""

    def _quant_weight_names(self) -> list[str]:
        return [
            n
            for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
            if isinstance(getattr(self, n, None), nn.Parameter)
        ]

    def _setup_quant(self, w_bits: int, a_bits: int) -> None:
        super()._setup_quant(w_bits, a_bits)
        with torch.no_grad():
            self.out_proj.weight.copy_(quantize_weight(self.out_proj.weight, self.w_bits))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        q = self.act_quant(query)
        k = q if key is query else self.act_quant(key)
        v = q if value is query else (k if value is key else self.act_quant(value))
        return super().forward(q, k, v, *args, **kwargs)


_QUANT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.LSTM: QuantLSTM,
    nn.GRU: QuantGRU,
    nn.RNN: QuantRNN,
    nn.MultiheadAttention: QuantMultiheadAttention,
}


def quantizable(module: nn.Module) -> bool:
    """Whether ``quantize_module_`` supports this exact module type."""
    return type(module) in _QUANT_CLASSES


def quantize_module_(module: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
    """Turn a supported layer into its quantized class in place (same parameters, same FQN).

    The instance keeps its identity and parameter names (``layer.weight`` stays ``layer.weight``):
    only its class changes and an ``act_quant`` submodule is added. Returns the module.
    """
    cls = _QUANT_CLASSES.get(type(module))
    if cls is None:
        raise TypeError(f"cannot quantize a {type(module).__name__}")
    module.__class__ = cls
    module._setup_quant(w_bits, a_bits)  # type: ignore[attr-defined]
    return module


@torch.no_grad()
def quantize_factorised_(first: nn.Module, second: nn.Module | Sequence[nn.Module], w_bits: int,
                         a_bits: int) -> None:
    """Quantize the two factors of a low-rank pair, folding the first factor's scales into the second.

    ``first`` (``r x n``) is quantized and divided by its scales (per row at 3-16 bits, one per
    tensor at 1-2 bits) so it stores plain integer levels; the scales multiply the matching
    input columns of ``second`` (``m x r``) before ``second`` is quantized. The pair then stores
    exactly as many scales as the unfactorised layer would (so factorising never adds storage).
    ``second`` may be several modules reading ``first``'s output (a shared projection,
    ``rnn.LowRankRNN``): each gets the scales folded in.
    """
    seconds = list(second) if isinstance(second, (list, tuple)) else [second]
    if w_bits < 32:
        qb = quantize_weight(first.weight, w_bits)
        flat = qb.reshape(qb.shape[0], -1)
        if w_bits <= 2:
            scale = flat.abs().amax().expand(flat.shape[0])
        else:
            scale = flat.abs().amax(dim=1) / (2 ** (w_bits - 1) - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        first.weight.copy_((flat / scale[:, None]).round().reshape(qb.shape))
        for m in seconds:
            m.weight.mul_(scale.reshape([1, -1] + [1] * (m.weight.dim() - 2)))
    quantize_module_(first, w_bits, a_bits)  # integer levels: re-quantization is exact
    first.scale_folded = True
    for m in seconds:
        quantize_module_(m, w_bits, a_bits)


@torch.no_grad()
def pow2_quantize_(module: nn.Module, bits: int) -> nn.Module:
    """Put a conv / linear layer's weight on INQ's powers-of-two grid at ``bits`` (in place).

    The layer becomes (or stays, when ``a_bits`` made it one) a quantized layer with
    ``w_bits = bits`` and ``w_grid = "pow2"``, so fine-tuning re-projects it straight-through and
    ``requantize`` knows its grid; no scale is folded into it. Returns the module.
    """
    if not isinstance(module, _QuantMixin):
        quantize_module_(module, 32, 32)
    module.w_bits = int(bits)  # type: ignore[union-attr]
    module.w_grid = "pow2"  # type: ignore[union-attr]
    module.scale_folded = False  # type: ignore[union-attr]
    w = module.weight
    w.copy_(requantize(module, w))  # type: ignore[arg-type]
    return module


def pow2_codebook_bytes(bits: int) -> float:
    """Bytes of the float32 table of a powers-of-two weight's ``2^(b-1) + 1`` values (0, +-2^n):
    what a file of standard operators stores next to its ``b``-bit indices."""
    return 4.0 * (2 ** (bits - 1) + 1)


def quantized_weight_bytes(module: nn.Module) -> list[tuple[nn.Parameter, float]]:
    """``(parameter, bytes)`` for each quantized weight owned by ``module`` (empty if none).

    Powers-of-two weights: ``bits`` per entry plus their value table (``pow2_codebook_bytes``).
    """
    if not isinstance(module, _QuantMixin) or module.w_bits >= 32:
        return []
    if getattr(module, "w_grid", "uniform") == "pow2":
        w = module.weight  # type: ignore[attr-defined]
        return [(w, min(w.numel() * module.w_bits / 8.0, 4.0 * w.numel()) + pow2_codebook_bytes(module.w_bits))]
    out = []
    names = module._quant_weight_names()
    params = [getattr(module, n) for n in names]
    if isinstance(module, QuantMultiheadAttention):
        params.append(module.out_proj.weight)
    folded = getattr(module, "scale_folded", False)  # first factor of a low-rank pair
    for p in params:
        n_scales = 0 if folded else weight_scale_count(p.shape, module.w_bits)
        nbytes = p.numel() * module.w_bits / 8.0 + 4.0 * n_scales
        out.append((p, min(nbytes, 4.0 * p.numel())))  # never more than float32 storage
    return out


@torch.no_grad()
def calibrate_(model: nn.Module, batches: list[object]) -> None:
    """Observe activation ranges on ``batches`` (inputs, in eval mode), then freeze every quantizer."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant)]
    if not quantizers:
        return
    for q in quantizers:
        if q.bits < 32:
            q.mode = "observe"
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for x in batches:
            if isinstance(x, tuple):
                model(*x)
            else:
                model(x)
    finally:
        for m, flag in was_training:
            m.training = flag
    for q in quantizers:
        q.freeze()
