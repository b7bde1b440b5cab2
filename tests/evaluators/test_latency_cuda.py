"""``torch-cuda`` latency: CUDA events on the GPU, a lookup table per GPU model, and a clear refusal
on a machine without CUDA (the setting itself loads anywhere, as stored specs must)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from autocompress.errors import UserInputError
from autocompress.evaluators import EvaluatorConfig, measure_latency
from autocompress.evaluators.config import LATENCY_BACKENDS, check_backend_available

pytestmark = pytest.mark.timeout(300)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_the_setting_is_valid_everywhere_but_not_with_the_cpu_clock() -> None:
    assert "torch-cuda" in LATENCY_BACKENDS
    assert EvaluatorConfig(latency="measured", latency_backend="torch-cuda").latency_backend == "torch-cuda"
    with pytest.raises(UserInputError, match=r"latency_clock='cpu' cannot time latency_backend='torch-cuda'"):
        EvaluatorConfig(latency_backend="torch-cuda", latency_clock="cpu")
    assert check_backend_available("ort") == "ort"


@no_cuda
def test_without_cuda_timing_is_refused_in_one_line() -> None:
    with pytest.raises(UserInputError, match=r"'torch-cuda' needs CUDA.*allowed here: torch, ort, ort-int8"):
        measure_latency(_net(), torch.randn(1, 3, 16, 16), backend="torch-cuda")


@no_cuda
def test_cli_search_refuses_torch_cuda_before_creating_the_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autocompress.cli import main

    out = tmp_path / "run"
    for extra, needle in ((["--latency-backend", "torch-cuda"], "'torch-cuda' needs CUDA"),
                          (["--latency-backend", "gpu"], "latency_backend='gpu'")):
        res = CliRunner().invoke(main, ["search", "--model", "test_mlp", "--budget", "latency=2ms",
                                        *extra, "--out", str(out)])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], res.stderr
        assert not out.exists()


@needs_cuda
def test_cuda_events_time_a_gpu_copy_and_leave_the_model_on_the_cpu() -> None:
    net = _net()
    stats = measure_latency(net, torch.randn(1, 3, 32, 32), backend="torch-cuda", batch=8, repeats=5)
    assert stats.clock == "cuda-events" and stats.median_ms > 0 and stats.p10_ms <= stats.p90_ms
    assert next(net.parameters()).device.type == "cpu"


@needs_cuda
def test_lookup_table_on_the_gpu_is_keyed_by_its_name(tmp_path: Path, one_torch_thread: None) -> None:
    from autocompress.compression import CompressionSpace
    from autocompress.evaluators import LatencyLUT
    from autocompress.evaluators.lut import gpu_name

    net, x = _net(), torch.randn(1, 3, 32, 32)
    space = CompressionSpace.from_model(net, x, knobs=("prune",))
    lut = LatencyLUT.build(net, space, x, backend="torch-cuda", cache_dir=tmp_path, progress=False,
                           calibration_policies=2)
    assert lut.backend == "torch-cuda" and lut.predict(space.identity()) > 0
    cpu_key = LatencyLUT.cache_key(net, space, x, "torch", 1, 1, (5, 4, 2))
    assert lut.key != cpu_key and gpu_name()
    assert LatencyLUT.build(net, space, x, backend="torch-cuda", cache_dir=tmp_path, progress=False,
                            calibration_policies=2).key == lut.key  # loaded back, not re-profiled
