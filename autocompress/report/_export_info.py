"""``ExportInfo``: what ``export_point`` wrote and measured, as a JSON record and as the lines the
command line prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
