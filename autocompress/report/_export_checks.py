"""The checks and timings of an export: a file's logits, top-1 and latency next to the PyTorch
model's, and activation rounding replaced by clipping for the exact comparison.

``export_point`` (``report.export``) runs them on every file it writes, and on the original model
exported the same way.
"""

from __future__ import annotations

import contextlib
import io
import math
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.compression import ActQuant
from autocompress.deploy import ort_session, within_modules
from autocompress.evaluators.latency import time_runner, torch_threads


def _ort_logits(sess: Any, x: Tensor, batch_size: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size].numpy().astype(np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def _time(run: Any, threads: int, repeats: int) -> float:
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
    active = [m for name, m in model.named_modules() if isinstance(m, ActQuant) and m.mode == "quant"
              and (only is None or within_modules(name, only))]
    for m in active:
        m.forward = types.MethodType(_clip_forward, m)  # type: ignore[method-assign]
    try:
        yield bool(active)
    finally:
        for m in active:
            del m.forward


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
