"""Export one Pareto point as a deployable file (ONNX, int8 ONNX, TorchScript or a pickled module).

The exported model is rebuilt from the run (``spec.json``: same base model, data split, seed) and
compressed with the point's policy: a really smaller network, not a masked one. Every export is
checked against the PyTorch compressed model before it is kept, and its file size and measured
latency are reported next to the original (uncompressed) model's, exported and timed the same way
in the same process.

Formats:
    * ``onnx``: one self-contained file (weights embedded), dynamic batch axis, opset 17 (21 or
      25 when it stores INT4/INT16 or INT2 weights, see "Low-bit storage" below). Layers
      the policy quantizes are exported with their simulated quantization (weights already on the
      grid, activations through round/clamp), so the file computes what the search scored. Its
      outputs must match PyTorch within ``atol`` (1e-4) on validation inputs, checked with ONNX
      Runtime. Rounding is discontinuous, so where activations are quantized that check runs with
      rounding replaced by clipping to the calibrated ranges in both models (same graph, same
      on-grid weights), and
      the quantized file itself must agree with PyTorch on >= 98% of top-1 predictions (typically
      100%, with ~1% of samples differing by one rounding step). When every quantized layer of the
      policy is 8-bit (weights and activations), an int8 model is also written next to it
      (``NAME.int8.onnx``) by ONNX Runtime static quantization (``quant_pre_process``, then
      ``quantize_static`` with QUInt8 activations and per-channel QInt8 weights, calibrated on the
      calibration split) of the point's model with activation rounding replaced by clipping in
      its 8-bit layers. Only layers with 8-bit weights *and* activations run in int8; every
      other layer stays in float (with its simulated quantization, for a mixed-precision point
      exported with ``int8=True``). The int8 file is first built with every tensor in int8
      (fastest); when its top-1 agreement with the PyTorch model is below
      ``min_int8_agreement`` (95%; each extra 8-bit tensor is a rounding the model does not
      make, which flips near-tied predictions of a weak model), it is rebuilt with only the
      8-bit layers' inputs and weights in int8 (what the fake quantization computes; 98-99% on
      such models). Below the threshold either way, no int8 file is written.

      Low-bit storage: the weights of every quantized Conv / Gemm / MatMul, and the ``W`` and
      ``R`` of every quantized LSTM / GRU / RNN, are stored in their bits
      (``compressed_onnx_bytes``, ``deploy.store_lowbit_weights``): integer codes of the
      narrowest ONNX type ONNX Runtime 1.32 dequantizes per axis on CPU (1-2 bits INT2, opset 25;
      3-4 bits INT4, opset 21; 5-8 bits INT8; 9-16 bits INT16, opset 21), one float32 scale per
      output channel (per gate row of an LSTM / GRU; per tensor at 1-2 bits), a zero zero point
      and a ``DequantizeLinear`` feeding the layer. Weights k-means shared (``share_bits``) are
      stored as UINT2 / UINT4 / UINT8 indices plus their float32 codebook, rebuilt by ``Cast`` +
      ``Gather``; sparse weights (``sparsity``) as their nonzeros (float32, codes or shared
      indices) plus a one-bit-per-entry bitmap of their positions (the layout ``size_bytes``
      counts), rebuilt by ``BitShift`` + ``NonZero`` + ``ScatterElements`` + ``Reshape`` (+ ``Mul``
      by the scales), when smaller than dense. The
      rebuilt weights equal the fp32 ones (checked per tensor), so the file passes the same
      checks; BatchNorm is then kept as ``BatchNormalization`` (folded into the weights it would
      move them off their grid). The file's size is printed next to the search's ``size_bytes``
      (``ExportInfo.reported_size_bytes``): on resnet20 the file is 1.07x the reported size at
      w8/a8, 1.14x at w4/a8, 1.06x at w4 with float activations, 1.11x mixed w4/w8
      (``benchmarks/bench_export_size.py``, which also has the sparse, shared and RNN rows).
      What remains: 3-bit weights are stored in INT4 (4/3 of their bits), 1-bit (binary) in
      INT2 (2x; ternary 2-bit is exact); packing 1 or 3 bits would need a custom operator. The
      rest of the file is not weights: the graph (the activation quantizers' round/clip nodes,
      about 10 per layer; names shortened; an LSTM / GRU factorised by ``rank`` is unrolled over
      the steps, 15-40 KB of nodes on the test models), BatchNorm running statistics (not
      counted by ``size_bytes``), biases and scales (counted), ~20 KB on resnet20, 5-10 KB on
      the tiny test models, where it dominates. Attention weights, and weights off their grid
      (named in ``ExportInfo.weight_float_layers``), stay float32. A point without quantized,
      sparse or shared weights is exported exactly as before. ONNX Runtime fuses a
      ``DequantizeLinear`` feeding a ``MatMul`` into ``MatMulNBits``, whose default accuracy level
      quantizes the float input to int8: load such a file with the session option
      ``session.qdq_matmulnbits_accuracy_level = 1`` (as ``deploy.ort_session`` does) to get
      the model's float computation.
    * ``torchscript``: ``torch.jit.trace`` of the compressed model, saved by ``torch.jit.save``;
      loads with ``torch.jit.load(path)`` and needs neither autocompress nor the model's code.
    * ``pt``: the whole compressed ``nn.Module`` pickled by ``torch.save``; loads with
      ``torch.load(path, weights_only=False)`` as a module ready to run or train further (the
      pruned shapes are in the module itself; no policy, space or ``compress`` call is needed, only
      the model's classes importable, e.g. autocompress installed for built-in models).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

# The ONNX / int8 / TorchScript conversions are shared with latency measurement; the names tests
# and benchmarks import from here stay importable.
from autocompress.deploy import (  # noqa: F401
    INT8_LAYER_OPS,
    ONNX_OPSET,
    LowBitWeights,
    export_onnx_with,
    exportable,
    onnx_node_module,
    ort_session,
    pt_bytes,
    quantize_int8,
    store_lowbit_weights,
    torchscript_bytes,
    within_modules,
)
from autocompress.errors import CheckFailedError, UserInputError
from autocompress.report.run import load_run
from autocompress.rundir import EXPORT_DIR, EXPORT_LOG

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt": ".pt"}


class ExportMismatchError(CheckFailedError):
    """The exported file does not compute what the PyTorch compressed model computes."""


@dataclass(frozen=True)
class ExportInfo:
    """What ``export_point`` wrote and measured.

    Sizes are bytes on disk; latencies are the median milliseconds per forward pass at ``batch``
    with ``threads`` threads on ``backend`` (``ort`` for ONNX files, ``torch`` otherwise), the
    original model timed the same way in the same call. ``acc`` is the exported file's top-1 on the
    validation split, computed by the runtime that loads it; ``recorded_acc`` is what the search
    reported for the point. ``max_abs_diff`` is the largest output difference between the file and
    the PyTorch compressed model; for a policy that quantizes activations it is measured with
    activation rounding replaced by clipping in both (see ``export_point``), and the quantized graph's own
    comparison is in ``quant_max_abs_diff``, ``quant_agreement`` (top-1 agreement) and
    ``quant_match_fraction`` (share of samples whose outputs all agree within ``atol``).
    """

    point_id: str
    format: str
    path: Path
    size_bytes: int
    original_size_bytes: int
    latency_ms: float
    original_latency_ms: float
    backend: str
    batch: int
    threads: int
    max_abs_diff: float
    acc: float
    recorded_acc: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    quant_max_abs_diff: float | None = None
    quant_agreement: float | None = None
    quant_match_fraction: float | None = None
    int8_path: Path | None = None
    int8_size_bytes: int | None = None
    int8_latency_ms: float | None = None
    int8_acc: float | None = None
    int8_agreement: float | None = None
    int8_layers: tuple[str, ...] = ()
    int8_float_layers: tuple[str, ...] = ()
    int8_note: str | None = None
    int8_scheme: str | None = None
    exporter: str = ""
    finetuned: bool = False
    seconds: float = 0.0
    #: The exported file's top-1 on the held-out test split (None when the data has none).
    test_acc: float | None = None
    test_samples: int = 0
    #: The search's ``size_bytes`` metric of the point: its weights at their bit-widths.
    reported_size_bytes: float | None = None
    #: ONNX: ``"module: wB as TYPE"`` per quantized weight stored as integer codes
    #: (``"module: shareB as UINT4 indices + codebook"``, ``"module: w32 as sparse FLOAT +
    #: bitmap"`` for shared and sparse weights; an LSTM / GRU has one entry per ``W`` / ``R``).
    weight_storage: tuple[str, ...] = ()
    #: ONNX: ``"module (wB): reason"`` per compressed weight the file keeps in float32.
    weight_float_layers: tuple[str, ...] = ()
    #: ONNX: the file's opset (21 with 4- or 16-bit types, 25 with 2-bit ones).
    onnx_opset: int | None = None

    @property
    def reported_size_ratio(self) -> float | None:
        """File size over the search's reported size (None when the point has none)."""
        if not self.reported_size_bytes or not math.isfinite(self.reported_size_bytes):
            return None
        return self.size_bytes / self.reported_size_bytes

    @property
    def size_ratio(self) -> float:
        """Exported file size over the original's (same format)."""
        return self.size_bytes / self.original_size_bytes

    @property
    def speedup(self) -> float:
        """Original latency over the exported model's (same backend, same run)."""
        return self.original_latency_ms / self.latency_ms

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (paths as strings)."""
        d = asdict(self)
        for k in ("path", "int8_path"):
            d[k] = None if d[k] is None else str(d[k])
        d["size_ratio"] = self.size_ratio
        d["reported_size_ratio"] = self.reported_size_ratio
        d["speedup"] = self.speedup
        return d

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line (what the CLI prints)."""
        out = [
            f"point {self.point_id}{' (fine-tuned)' if self.finetuned else ''} -> {self.path} "
            f"({self.format}, {self.exporter})",
            f"size     {_mb(self.size_bytes)} vs original {_mb(self.original_size_bytes)} "
            f"({self.size_ratio:.2f}x)",
            *self._reported_lines(),
            f"latency  {self.latency_ms:.3f} ms vs original {self.original_latency_ms:.3f} ms "
            f"({self.speedup:.2f}x faster; {self.backend}, batch {self.batch}, {self.threads} thread(s))",
            f"top-1    {100 * self.acc:.2f}% ({'fine-tune' if self.finetuned else 'search'} recorded "
            + (f"{100 * self.recorded_acc:.2f}%)" if self.recorded_acc is not None else "nothing)")
            + f"; max |diff| vs PyTorch {self.max_abs_diff:.2e}",
        ]
        if self.test_acc is not None:
            out.append(f"test top-1 {100 * self.test_acc:.2f}% (held-out test split, "
                       f"{self.test_samples} samples, scored by the exported file)")
        if self.quant_agreement is not None:
            out.append(
                f"simulated quantization: top-1 agreement with PyTorch {100 * self.quant_agreement:.1f}%, "
                f"{100 * (self.quant_match_fraction or 0):.1f}% of samples within tolerance, "
                f"max |diff| {self.quant_max_abs_diff:.2e} (single rounding-step flips)"
            )
        if self.int8_path is not None:
            out.append(
                f"int8     {self.int8_path}: {_mb(self.int8_size_bytes or 0)}, "
                f"{self.int8_latency_ms:.3f} ms ({self.original_latency_ms / (self.int8_latency_ms or math.inf):.2f}x "
                f"faster than the original fp32), top-1 {100 * (self.int8_acc or 0):.2f}%, "
                f"top-1 agreement with PyTorch {100 * (self.int8_agreement or 0):.1f}% "
                f"({_SCHEMES.get(self.int8_scheme or '', self.int8_scheme)})"
            )
            if self.int8_float_layers:
                out.append(
                    f"int8 layers: {len(self.int8_layers)} with 8-bit weights and activations "
                    f"({_names(self.int8_layers)}); kept in float with their simulated "
                    f"quantization: {_names(self.int8_float_layers)}"
                )
        if self.int8_note:
            out.append(f"int8     {self.int8_note}")
        return out

    def _reported_lines(self) -> list[str]:
        out = []
        ratio = self.reported_size_ratio
        if ratio is not None and self.reported_size_bytes is not None:
            out.append(f"size     {_mb(self.size_bytes)} file vs {_mb(int(round(self.reported_size_bytes)))} "
                       f"reported by the search (weights at their bits): {ratio:.2f}x")
        if self.weight_storage:
            kinds: dict[str, int] = {}
            for entry in self.weight_storage:
                kind = entry.rsplit(" as ", 1)[-1]
                kinds[kind] = kinds.get(kind, 0) + 1
            codes = {k: n for k, n in kinds.items() if " " not in k}  # INT2 / INT4 / INT8 / INT16
            if codes:
                out.append("weights  " + ", ".join(f"{n} layer(s) as {k}" for k, n in sorted(codes.items()))
                           + f" codes + float32 scales behind DequantizeLinear (opset {self.onnx_opset})")
            other = {k: n for k, n in kinds.items() if k not in codes}  # sparse / shared
            if other:
                out.append("weights  " + ", ".join(f"{n} weight(s) as {k}" for k, n in sorted(other.items()))
                           + f", rebuilt in the graph by standard ops (opset {self.onnx_opset})")
        if self.weight_float_layers:
            out.append(f"weights  kept in float32: {_names(self.weight_float_layers, 6)}")
        return out


_SCHEMES = {"full": "every tensor int8",
            "layers": "int8 inputs and weights of the 8-bit layers, their outputs in float"}


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


# -- policy helpers -------------------------------------------------------------------------


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


# -- ONNX -----------------------------------------------------------------------------------


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


def _ort_logits(sess: Any, x: Tensor, batch_size: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size].numpy().astype(np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def _time(run: Any, threads: int, repeats: int) -> float:
    from autocompress.evaluators.latency import time_runner, torch_threads

    with torch_threads(threads):
        times = time_runner(run, warmup=5, repeats=repeats)
    return float(np.median(times))


def _ort_latency(blob: bytes, x: Tensor, threads: int, repeats: int) -> float:
    sess = ort_session(blob, threads)
    feed = {sess.get_inputs()[0].name: x.numpy().astype(np.float32)}
    return _time(lambda: sess.run(None, feed), threads, repeats)


def _torch_latency(module: nn.Module, x: Tensor, threads: int, repeats: int) -> float:
    def run() -> Any:
        with torch.inference_mode():
            return module(x)

    return _time(run, threads, repeats)


def _clip_forward(self: nn.Module, x: Tensor) -> Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point():
        return x
    lo = (0.0 - self.zero_point) * self.scale  # type: ignore[operator]
    hi = (float(self.qmax) - self.zero_point) * self.scale  # type: ignore[attr-defined, operator]
    return torch.clamp(x, float(lo), float(hi))


@contextlib.contextmanager
def activation_quant_as_clip(model: nn.Module, only: Sequence[str] | None = None) -> Iterator[bool]:
    """Temporarily replace rounding by clipping in the calibrated activation quantizers.

    ``only``: restrict to the quantizers inside these modules (the int8 layers of a mixed
    precision point; the others keep their rounding).

    Each quantizer then computes ``clamp(x, lo, hi)`` over its calibrated range: the quantized
    model without its rounding. A model fine-tuned with activation quantization relies on that
    clipping (dropping it cost 7 points of top-1 on a fine-tuned resnet20), so this float model
    is both the exact comparison target and the source of the int8 export, whose ONNX Runtime
    calibration then finds the same ranges. Yields whether any quantizer was active.
    """
    import types

    from autocompress.compression import ActQuant

    active = [m for name, m in model.named_modules() if isinstance(m, ActQuant) and m.mode == "quant"
              and (only is None or within_modules(name, only))]
    for m in active:
        m.forward = types.MethodType(_clip_forward, m)  # type: ignore[method-assign]
    try:
        yield bool(active)
    finally:
        for m in active:
            del m.forward


# -- TorchScript / pickled module -------------------------------------------------------------


def _load(fmt: str, blob: bytes) -> nn.Module:
    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
    # ``blob`` is the module this process pickled a moment ago (never bytes read from disk):
    # unpickling it is the check that the written file loads as documented.
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False).eval()


def _torch_logits(model: nn.Module, x: Tensor, batch_size: int = 256) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _top1(logits: np.ndarray, y: Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean()) if len(y) else math.nan


def _write_atomic(path: Path, blob: bytes) -> None:
    from autocompress.rundir import write_bytes_atomic

    write_bytes_atomic(path, blob)


def default_export_path(run_dir: str | Path, point_id: str | int, fmt: str) -> Path:
    """``RUN/export/point-<id>.<onnx|ts|pt>``."""
    return Path(run_dir) / EXPORT_DIR / f"point-{point_id}{_SUFFIX[fmt]}"


def export_point(
    run_dir: str | Path,
    point_id: str | int,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    force: bool = False,
    int8: bool | None = None,
    batch: int = 1,
    threads: int = 1,
    repeats: int = 20,
    atol: float = 1e-4,
    min_agreement: float = 0.98,
    min_int8_agreement: float = 0.95,
    check_samples: int = 256,
    progress: bool = False,
    finetuned: bool = False,
    device: str | None = None,
) -> ExportInfo:
    """Write point ``point_id`` of the run's front as a really compressed model file.

    Args:
        run_dir: the search run directory.
        point_id: an id of a Pareto point (see ``autocompress report RUN``).
        fmt: ``onnx``, ``torchscript`` or ``pt`` (see the module docstring).
        out: output file (default ``RUN/export/point-<id>.<ext>``); an existing file is refused
            unless ``force``.
        force: overwrite ``out`` (and the int8 file) if they exist.
        int8: also write ``NAME.int8.onnx`` (ONNX only); None = when every quantized layer of
            the policy is 8-bit. ``True`` on a mixed-precision point runs exactly its layers with
            8-bit weights and activations in int8 and keeps the others in float with their
            simulated quantization (``ExportInfo.int8_layers`` / ``int8_float_layers``).
        batch, threads, repeats: latency measurement settings (median of ``repeats``).
        atol: largest allowed output difference between the file and PyTorch.
        min_agreement: smallest allowed top-1 agreement of an ONNX file with simulated activation
            quantization (whose outputs can differ by single rounding steps; see below).
        min_int8_agreement: smallest top-1 agreement of the int8 file with the PyTorch compressed
            model on the validation split; below it no int8 file is written (and an explicit
            ``int8=True`` is refused).
        check_samples: validation samples used for the output comparison.
        progress: show progress while a missing base model is trained.
        finetuned: export the point's latest fine-tuned model (``finetune_point``) instead of
            the model as the search scored it.
        device: where the point is rebuilt (recalibration, the evaluator's short fine-tune);
            None: the run's own setting. The file is written, checked and timed on the CPU.

    Returns:
        ``ExportInfo`` with sizes, latencies (original alongside), accuracy and the check result.

    Raises:
        UserInputError: unknown format, point not on the front, ``out`` exists or its directory
            does not, int8 asked of a non-ONNX format or of a point without 8-bit layers, or an
            asked-for int8 model that does not agree with PyTorch (nothing is written).
        ExportMismatchError: the file's outputs differ from PyTorch by more than ``atol`` (nothing
            is left at ``out``).

    Example:
        >>> info = export_point("runs/demo", 3, "onnx", "model.onnx")  # doctest: +SKIP
        >>> print("\\n".join(info.lines()))  # doctest: +SKIP
    """
    from autocompress.report._rebuild import rebuild_problem, scored_model
    from autocompress.report.finetune import latest_finetune, load_finetuned

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise UserInputError(f"export format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise UserInputError(f"int8 export is an ONNX Runtime model; use --format onnx, not {fmt!r}")
    if not math.isfinite(atol) or atol <= 0:
        raise UserInputError(f"atol={atol!r}; expected a positive number")
    run = load_run(run_dir)
    point = run.point(point_id)
    path = Path(out) if out is not None else default_export_path(run.path, point.id, fmt)
    if out is not None:
        # Only the default directory (RUN/export/) is created; a typo in --out is not.
        if not path.parent.exists():
            raise UserInputError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not "
                                 "exist; create it first or choose another path")
        if not path.parent.is_dir():
            raise UserInputError(f"--out {str(path)!r}: {str(path.parent)!r} is not a directory")
    do_int8 = fmt == "onnx" and (int8_eligible(point.policy) if int8 is None else bool(int8))
    q_layers = int8_layers(point.policy)
    if do_int8 and not q_layers:
        quantized = [n for n, a in point.policy.layers.items() if a.w_bits < 32 or a.a_bits < 32]
        raise UserInputError(
            f"--int8: point {point.id} has no layer with 8-bit weights and activations "
            f"({_names(_bits(point.policy, quantized), 6) if quantized else 'it is not quantized'}); "
            "an int8 model would run layers at bit-widths the search did not score"
        )
    int8_path = path.with_name(path.stem + ".int8.onnx") if do_int8 else None
    for p in (path, int8_path):
        if p is not None and p.exists() and not force:
            raise UserInputError(f"--out {str(p)!r} already exists; pass --force to overwrite it "
                                 "or choose another path")
        if p is not None and p.is_dir():
            raise UserInputError(f"--out {str(p)!r} is a directory; give a file path")

    record = latest_finetune(run.path, point.id) if finetuned else None
    if finetuned and record is None:
        raise UserInputError(
            f"point {point.id} has no fine-tuned model in {str(run.path / 'finetune')!r}; run "
            f"`autocompress finetune {run.path} --point {point.id}` first"
        )
    # The fine-tuned weights are checked (and refused when they are not plain tensors) before
    # anything is rebuilt; the problem is memoised, so it is built once either way.
    small = (load_finetuned(run, point, record, progress=progress, device=device)
             if record is not None else None)
    problem = rebuild_problem(run, progress=progress, device=device)
    example = problem.example_input
    if small is None:
        small = scored_model(problem, point.policy)
    small = small.cpu()  # rebuilt on the device; written, checked and timed on the CPU
    original = problem.model.eval()
    x_val, y_val = problem.data.tensors("val")
    test = problem.data.tensors("test") if getattr(problem.data, "test", None) is not None else None
    test_acc: float | None = None
    x_check = x_val[:check_samples]
    x_lat = example[:1].expand(batch, *example.shape[1:]).contiguous()
    ref = _torch_logits(small, x_check)

    quant: dict[str, Any] = {}
    storage: dict[str, Any] = {}
    if fmt == "onnx":
        blob, exporter, lowbit = compressed_onnx_bytes(small, example)
        if lowbit is not None:
            bits, shared = weight_bits(small), shared_layers(small)

            def label(m: str, b: int | None = None) -> str:
                if m in shared:
                    return f"share{shared[m]}"
                return f"w{b if b is not None else bits.get(m, 32)}"

            storage = {
                "weight_storage": tuple(f"{m}: {label(m, b)} as {t}" for m, b, t in lowbit.stored),
                "weight_float_layers": tuple(f"{m} ({label(m)}): {why}" for m, why in lowbit.kept_float),
                "onnx_opset": lowbit.opset,
            }
        else:
            storage = {"onnx_opset": ONNX_OPSET}
        orig_blob, _ = onnx_bytes(original, example)
        sess = ort_session(blob, threads)
        got = _ort_logits(sess, x_check)
        acc = _top1(_ort_logits(sess, x_val), y_val)
        if test is not None:
            test_acc = _top1(_ort_logits(sess, test[0]), test[1])
        with activation_quant_as_clip(small) as had_quant:
            if had_quant:
                # Activation rounding is discontinuous: ~1e-6 float noise between ONNX Runtime's
                # kernels (fused Conv+BN) and PyTorch's flips single rounding steps in ~1% of
                # samples. The exact check runs with rounding replaced by clipping in both (same
                # graph, same on-grid weights); the quantized graph is checked by agreement.
                flips = np.abs(got - ref).reshape(len(got), -1).max(axis=1)
                quant = {"quant_max_abs_diff": float(flips.max()) if flips.size else 0.0,
                         "quant_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                         "quant_match_fraction": float((flips <= atol).mean())}
                ref = _torch_logits(small, x_check)
                got = _ort_logits(ort_session(compressed_onnx_bytes(small, example)[0], threads), x_check)
        if quant and quant["quant_agreement"] < min_agreement:
            raise ExportMismatchError(
                f"the onnx export of point {point.id} agrees with the PyTorch compressed model on "
                f"{100 * quant['quant_agreement']:.1f}% of top-1 predictions (< "
                f"{100 * min_agreement:g}%); nothing was written"
            )
        latency = _ort_latency(blob, x_lat, threads, repeats)
        orig_latency = _ort_latency(orig_blob, x_lat, threads, repeats)
        backend = "ort"
    else:
        blob = torchscript_bytes(small, example) if fmt == "torchscript" else pt_bytes(small)
        orig_blob = torchscript_bytes(original, example) if fmt == "torchscript" else pt_bytes(original)
        exporter = "torch.jit.trace" if fmt == "torchscript" else "torch.save (pickled module)"
        loaded = _load(fmt, blob)
        got = _torch_logits(loaded, x_check)
        acc = _top1(_torch_logits(loaded, x_val), y_val)
        if test is not None:
            test_acc = _top1(_torch_logits(loaded, test[0]), test[1])
        latency = _torch_latency(loaded, x_lat, threads, repeats)
        orig_latency = _torch_latency(_load(fmt, orig_blob), x_lat, threads, repeats)
        backend = "torch"
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    if not (got.shape == ref.shape and diff <= atol):
        raise ExportMismatchError(
            f"the {fmt} export of point {point.id} differs from the PyTorch compressed model by "
            f"{diff:.3g} (> {atol:g}); nothing was written"
        )
    int8_fields: dict[str, Any] = {}
    q_blob: bytes | None = None
    if do_int8 and int8_path is not None:
        # Only the layers the policy runs at 8-bit weights and activations become int8. Their
        # source is this very model with their activation rounding replaced by clipping: 8-bit
        # weights already sit on the symmetric per-channel grid ORT quantizes them to, and ORT's
        # calibration finds the clipped ranges the model was scored (or fine-tuned) with. Every
        # other layer of the policy stays in float with its simulated quantization (rounding
        # included), as the search scored it.
        keep_float = [n for n in point.policy.layers if n not in q_layers]
        simulated = [n for n in keep_float
                     if point.policy[n].w_bits < 32 or point.policy[n].a_bits < 32]
        with activation_quant_as_clip(small, only=q_layers):
            float_blob = onnx_bytes(small, example)[0]
        ref_val = _torch_logits(small, x_val)
        # The fast all-int8 graph when every quantized layer is 8-bit and it agrees with the
        # model; else (and for mixed precision) only the 8-bit layers' inputs and weights.
        schemes = ("full", "layers") if int8_eligible(point.policy) else ("layers",)
        for scheme in schemes:
            q_blob = quantize_int8(float_blob, problem.evaluator.calib_batches,
                                   exclude_modules=keep_float, scheme=scheme)
            q_logits = _ort_logits(ort_session(q_blob, threads), x_val)
            agreement = float((q_logits.argmax(1) == ref_val.argmax(1)).mean()) if len(x_val) else 1.0
            if agreement >= min_int8_agreement:
                break
        if agreement < min_int8_agreement:
            msg = (f"the int8 model of point {point.id} agrees with the PyTorch compressed model on "
                   f"{100 * agreement:.1f}% of top-1 predictions (< {100 * min_int8_agreement:g}%)")
            if int8:  # asked for: refuse the whole export rather than write a model that lies
                raise UserInputError(f"{msg}; nothing was written (export without --int8)")
            q_blob = None
            int8_fields = {"int8_note": f"{msg}; no int8 file written"}
        else:
            int8_fields = {
                "int8_path": int8_path,
                "int8_size_bytes": len(q_blob),
                "int8_acc": _top1(q_logits, y_val),
                "int8_agreement": agreement,
                "int8_layers": tuple(q_layers),
                "int8_float_layers": tuple(_bits(point.policy, simulated)),
                "int8_scheme": scheme,
            }
    _write_atomic(path, blob)
    if q_blob is not None and int8_path is not None:
        _write_atomic(int8_path, q_blob)
        int8_fields["int8_latency_ms"] = _ort_latency(q_blob, x_lat, threads, repeats)
    recorded = point.metrics.get("acc") if record is None else record.get("acc_after")
    reported_size = point.metrics.get("size_bytes")
    info = ExportInfo(
        point_id=point.id, format=fmt, path=path, size_bytes=len(blob),
        original_size_bytes=len(orig_blob), latency_ms=latency, original_latency_ms=orig_latency,
        backend=backend, batch=batch, threads=threads, max_abs_diff=diff, acc=acc,
        recorded_acc=None if recorded is None or not math.isfinite(recorded) else recorded,
        metrics=dict(point.metrics), exporter=exporter, finetuned=record is not None, seconds=time.perf_counter() - t0,
        test_acc=test_acc, test_samples=0 if test is None else len(test[1]),
        reported_size_bytes=float(reported_size) if isinstance(reported_size, (int, float)) else None,
        **quant, **int8_fields, **storage,
    )
    write_export_record(info, run.path)
    return info


def write_export_record(info: ExportInfo, run_dir: str | Path) -> Path:
    """Append the export's facts to ``RUN/export/exports.jsonl`` (a log; never rewritten).

    ``export_point`` calls it; recording the same export again adds nothing.
    """
    log = Path(run_dir) / EXPORT_DIR / EXPORT_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(info.to_dict(), sort_keys=True)
    if log.is_file() and line in log.read_text().splitlines():
        return log
    with open(log, "a") as fh:
        fh.write(line + "\n")
    return log
