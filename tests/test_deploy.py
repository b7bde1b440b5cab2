"""The deployment conversions shared by latency measurement and export: one implementation."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import autocompress.deploy as deploy
from autocompress.evaluators import latency
from autocompress.models import create_model
from autocompress.report import export

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def convnet_onnx() -> tuple[bytes, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("test_convnet").eval()
    x = torch.randn(4, 3, 16, 16)
    return deploy.export_onnx(model, x[:1]), x


def test_latency_and_export_use_the_same_conversions() -> None:
    for name in ("export_onnx", "export_onnx_with", "ort_session", "quantize_int8"):
        assert getattr(latency, name) is getattr(deploy, name), name
    for name in ("export_onnx_with", "ort_session", "quantize_int8", "onnx_node_module", "INT8_LAYER_OPS"):
        assert getattr(export, name) is getattr(deploy, name), name


def test_deploy_imports_nothing_of_the_package() -> None:
    """It sits below evaluators and report, so both may import it: its modules import one another
    and nothing else of the package."""
    files = sorted(Path(deploy.__file__).parent.glob("*.py"))
    assert len(files) > 1
    for path in files:
        tree = ast.parse(path.read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        outside = [m for m in mods if m.split(".")[0] == "autocompress"
                   and m != "autocompress.deploy" and not m.startswith("autocompress.deploy.")]
        assert mods and not outside, (path.name, outside)


@pytest.mark.timeout(120)
def test_int8_calibration_from_tensors_or_arrays_is_the_same_graph(
    convnet_onnx: tuple[bytes, torch.Tensor],
) -> None:
    blob, x = convnet_onnx
    from_tensors = deploy.quantize_int8(blob, [x[:2], x[2:]])
    from_arrays = deploy.quantize_int8(blob, [x[:2].numpy(), x[2:].numpy().astype(np.float64)])
    assert from_tensors == from_arrays
    ops = {n.op_type for n in onnx.load_from_string(from_tensors).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The int8 latency runner times exactly this graph.
    run = latency.make_ort_runner(blob, x[:1], backend="ort-int8", batch=2, threads=1, calib=[x[:2], x[2:]])
    (out,) = run()
    (same,) = deploy.ort_session(from_tensors, 1).run(None, {"input": x[:1].expand(2, -1, -1, -1).numpy()})
    np.testing.assert_array_equal(out, same)


def test_unknown_int8_scheme_is_refused(convnet_onnx: tuple[bytes, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="'full' or 'layers'"):
        deploy.quantize_int8(convnet_onnx[0], [convnet_onnx[1]], scheme="per-tensor")
