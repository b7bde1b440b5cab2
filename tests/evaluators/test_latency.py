"""Measured latency: positive, finite, monotone in batch size, on every backend."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autocompress.errors import UserInputError
from autocompress.evaluators import export_onnx, measure_latency
from autocompress.evaluators.latency import summarize
from autocompress.models import create_model


@pytest.fixture(scope="module")
def convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_convnet").eval()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("backend", "clock"), [("torch", "wall"), ("ort", "wall"), ("ort-int8", "wall"), ("ort", "cpu")]
)
def test_latency_positive_finite_and_monotone_in_batch(
    convnet: torch.nn.Module, backend: str, clock: str
) -> None:
    x = torch.randn(1, 3, 16, 16)
    small = measure_latency(convnet, x, backend=backend, batch=1, repeats=7, clock=clock)
    big = measure_latency(convnet, x, backend=backend, batch=64, repeats=7, clock=clock)
    for s in (small, big):
        assert math.isfinite(s.median_ms) and s.median_ms > 0
        assert s.p10_ms <= s.median_ms <= s.p90_ms and s.iqr_ms >= 0
        assert s.backend == backend and s.threads == 1 and s.repeats == 7 and s.clock == clock
    assert (small.batch, big.batch) == (1, 64)
    # 64x the work must show clearly; compared on the fastest tenth of the runs, which other jobs on
    # a busy machine inflate least (a loaded CI run once put batch 1's median at 2.4 ms, p10 1.1 ms)
    assert big.p10_ms > 4 * small.p10_ms


def test_onnx_export_matches_torch(convnet: torch.nn.Module) -> None:
    x = torch.randn(5, 3, 16, 16)
    sess = ort.InferenceSession(export_onnx(convnet, x[:1]), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})  # dynamic batch axis
    with torch.no_grad():
        ref = convnet(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_summary_statistics() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0], backend="ort", batch=1, threads=1)
    assert s.median_ms == 3.0 and s.iqr_ms == 2.0 and s.spread == pytest.approx(2 / 3)
    assert s.to_dict()["median_ms"] == 3.0


def test_bad_settings(convnet: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(UserInputError, match="tensorrt"):
        measure_latency(convnet, x, backend="tensorrt")
    with pytest.raises(UserInputError, match="batch=0"):
        measure_latency(convnet, x, batch=0)
    with pytest.raises(UserInputError, match="threads=1"):
        measure_latency(convnet, x, threads=2, clock="cpu")
    with pytest.raises(UserInputError, match="wall, cpu"):
        measure_latency(convnet, x, clock="sundial")
