"""Low-bit weight storage in exported ONNX files: the file carries the bits the search reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import autocompress.deploy as deploy
from autocompress.compression import CompressionSpace, compress
from autocompress.models import create_model
from autocompress.report import load_run
from autocompress.report._rebuild import rebuild_problem, scored_model
from autocompress.report.export import compressed_onnx_bytes, export_point, onnx_bytes, weight_bits

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]


def _weight_types(path_or_blob: Path | bytes) -> dict[str, int]:
    """Module FQN of each Conv/Gemm/MatMul -> data type of the initializer feeding its weight
    (through a DequantizeLinear when there is one)."""
    blob = path_or_blob.read_bytes() if isinstance(path_or_blob, Path) else path_or_blob
    graph = onnx.load_from_string(blob).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for n in graph.node:
        if n.op_type in deploy.LOWBIT_LAYER_OPS:
            src = producer.get(n.input[1])
            name = src.input[0] if src is not None and src.op_type == "DequantizeLinear" else n.input[1]
            out[deploy.onnx_node_module(n.name)] = inits[name].data_type if name in inits else -1
    return out


def _weight_bytes(blob: bytes) -> int:
    """Bytes of the initializers' data (codes, scales, zero points, biases, BatchNorm)."""
    return sum(len(numpy_helper.to_array(i).tobytes()) if not i.raw_data else len(i.raw_data)
               for i in onnx.load_from_string(blob).graph.initializer)


def test_w8_and_w4_points_export_int8_and_int4_weights(real_run: Path, tmp_path: Path) -> None:
    run = load_run(real_run)
    x, _ = rebuild_problem(run).data.tensors("val")
    for pid, dtype, bits in (("2", TensorProto.INT8, 8), ("3", TensorProto.INT4, 4)):
        out = tmp_path / f"p{pid}.onnx"
        info = export_point(real_run, pid, "onnx", out, repeats=3, int8=False)
        types = _weight_types(out)
        assert types and set(types.values()) == {dtype}, types
        assert len(info.weight_storage) == len(types) and not info.weight_float_layers
        assert all(e.endswith(f": w{bits} as {'INT8' if bits == 8 else 'INT4'}") for e in info.weight_storage)
        assert info.onnx_opset == (17 if bits == 8 else 21)
        model = onnx.load(str(out))
        onnx.checker.check_model(model, full_check=True)
        # The existing checks, unchanged: ONNX Runtime vs the PyTorch compressed model.
        assert info.max_abs_diff <= 1e-4 and info.quant_agreement is not None and info.quant_agreement >= 0.98
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x[:64].numpy()})[0]
        small = scored_model(rebuild_problem(run), run.point(pid).policy)
        with torch.inference_mode():
            ref = small(x[:64]).numpy()
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
        assert info.reported_size_bytes == run.point(pid).metrics["size_bytes"]
        assert info.reported_size_ratio == pytest.approx(info.size_bytes / info.reported_size_bytes)
        assert any(line.startswith("size ") and "reported by the search" in line for line in info.lines())


def test_dequantized_weights_equal_the_float_weights(real_run: Path) -> None:
    """codes x scales reproduce the fp32 export's weights exactly (a low-rank w4 point: its first
    factor stores unit-scale integer levels, its second the scales)."""
    run = load_run(real_run)
    problem = rebuild_problem(run)
    small = scored_model(problem, run.point("5").policy)
    fp32 = onnx_bytes(small, problem.example_input)[0]  # BatchNorm-free MLP: the same weights
    blob, _, lowbit = compressed_onnx_bytes(small, problem.example_input)
    assert lowbit is not None and not lowbit.kept_float
    assert {m for m, _, _ in lowbit.stored} == set(weight_bits(small))
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(fp32).graph.initializer}
    graph = onnx.load_from_string(blob).graph
    after = {i.name: i for i in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == len(lowbit.stored)
    for n in dq:
        q, s, z = (after[name] for name in n.input)
        assert q.data_type == TensorProto.INT4 and z.data_type == TensorProto.INT4
        codes = numpy_helper.to_array(q).astype(np.float32)
        scale = numpy_helper.to_array(s)
        assert np.abs(codes).max() <= 7 and not numpy_helper.to_array(z).astype(int).any()
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * codes.ndim
        shape[axis] = -1
        np.testing.assert_array_equal(codes * scale.reshape(shape), before[n.output[0]])


def test_fp32_point_is_unchanged_byte_for_byte(real_run: Path, tmp_path: Path) -> None:
    run = load_run(real_run)
    problem = rebuild_problem(run)
    info = export_point(real_run, "1", "onnx", tmp_path / "f.onnx", repeats=3)
    small = scored_model(problem, run.point("1").policy)
    assert (tmp_path / "f.onnx").read_bytes() == deploy.export_onnx(small, problem.example_input)
    assert not info.weight_storage and not info.weight_float_layers and info.onnx_opset == 17


def test_int8_path_keeps_working_on_a_w8_point(real_run: Path, tmp_path: Path) -> None:
    info = export_point(real_run, "2", "onnx", tmp_path / "q.onnx", repeats=3)
    assert info.int8_path is not None and info.int8_agreement is not None and info.int8_agreement > 0.95
    assert TensorProto.INT8 in {i.data_type for i in onnx.load(str(info.int8_path)).graph.initializer}
    assert set(_weight_types(tmp_path / "q.onnx").values()) == {TensorProto.INT8}


@pytest.mark.parametrize("w_bits", [8, 4])
def test_weight_only_tiny_mlp_file_is_within_15_percent_of_reported(w_bits: int) -> None:
    """Weights dominate a weight-only quantized MLP (16x16 inputs: 20k weights): the whole file
    is within 15% of the cost model's size."""
    torch.manual_seed(0)
    model = create_model("test_mlp", input_shape=(1, 16, 16)).eval()
    x = torch.randn(8, 1, 16, 16)
    space = CompressionSpace.from_model(model, x[:1])
    policy = space.uniform(w_bits=w_bits)
    small = compress(model, policy, space=space, calib=x).eval()
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and len(lowbit.stored) == len(weight_bits(small))
    reported = space.size_bytes(policy)
    assert abs(len(blob) / reported - 1) <= 0.15, (len(blob), reported)
    assert len(blob) < (w_bits / 32 + 0.1) * len(onnx_bytes(small, x[:1])[0])


@pytest.mark.parametrize("w_bits,dtype", [(8, TensorProto.INT8), (4, TensorProto.INT4),
                                          (2, TensorProto.INT2), (16, TensorProto.INT16)])
def test_conv_net_with_batchnorm_stores_low_bit_weights_and_matches(w_bits: int, dtype: int) -> None:
    """test_resnet (BatchNorm kept out of the weights, residual adds, strided shortcuts): every
    weight stored as codes; the weight bytes are within 15% of the reported size (the rest of
    the file, ~5-9 KB here, is the graph: nodes, BatchNorm statistics, activation quantizers)."""
    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    x = torch.randn(16, 3, 16, 16)
    space = CompressionSpace.from_model(model, x[:1])
    policy = space.uniform(w_bits=w_bits, a_bits=8)
    small = compress(model, policy, space=space, calib=x).eval()
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert set(_weight_types(blob).values()) == {dtype}
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    with deploy_clip(small):
        with torch.inference_mode():
            ref = small(x).numpy()
        got = deploy.ort_session(compressed_onnx_bytes(small, x[:1])[0], 1).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    # Codes + scales (+ zero points) of the quantized weights vs the cost model's bytes for them.
    reported = space.size_bytes(policy)
    stored = _weight_bytes(blob)
    assert stored <= 1.15 * reported + 2500  # + BatchNorm statistics and activation ranges
    assert len(blob) < (0.5 if w_bits <= 8 else 0.8) * len(onnx_bytes(small, x[:1])[0])


def deploy_clip(model: torch.nn.Module):  # noqa: ANN201 - a context manager
    from autocompress.report.export import activation_quant_as_clip

    return activation_quant_as_clip(model)


def test_weight_off_its_grid_stays_float() -> None:
    """BatchNorm folded into a quantized convolution (the default exporter) moves its weight off
    the grid: it is kept in float32 and named, never rounded."""
    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    x = torch.randn(4, 3, 16, 16)
    space = CompressionSpace.from_model(model, x[:1])
    small = compress(model, space.uniform(w_bits=4), space=space, calib=x).eval()
    folded = deploy.export_onnx(small, x[:1])  # BatchNorm folded
    blob, lowbit = deploy.store_lowbit_weights(folded, weight_bits(small))
    assert lowbit.kept_float and all("grid" in why for _, why in lowbit.kept_float)
    assert "fc" in {m for m, _, _ in lowbit.stored}  # no BatchNorm after the classifier
    a = deploy.ort_session(folded, 1).run(None, {"input": x.numpy()})[0]
    b = deploy.ort_session(blob, 1).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
