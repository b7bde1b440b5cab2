"""Recurrent, sparse and shared weights in exported ONNX files: stored as the search counts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

import autocompress.deploy as deploy
from autocompress.compression import CompressionSpace, compress
from autocompress.deploy import lowbit
from autocompress.models import create_model
from autocompress.models._registry import default_input_shape
from autocompress.report.export import (
    activation_quant_as_clip,
    compressed_onnx_bytes,
    export_point,
    onnx_bytes,
    shared_layers,
    sparse_layers,
    weight_bits,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]

SPARSE_KNOBS = ("prune", "w_bits", "a_bits", "rank", "sparsity")
SHARE_KNOBS = ("prune", "a_bits", "rank", "sparsity", "share_bits")
POW2_KNOBS = ("prune", "a_bits", "rank", "sparsity", "pow2_bits")


def _compressed(name: str, knobs: tuple[str, ...] | None = None, **policy: Any) -> tuple[Any, Any, float]:
    """``(compressed model, calibration inputs, reported size_bytes)`` of a uniform policy."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(16, *default_input_shape(name, model))
    space = CompressionSpace.from_model(model, x[:1], **({"knobs": knobs} if knobs else {}))
    pol = space.uniform(**policy)
    return compress(model, pol, space=space, calib=x).eval(), x, space.size_bytes(pol)


def _matches_pytorch(small: torch.nn.Module, x: torch.Tensor) -> float:
    """The file's largest difference from PyTorch (activation rounding as clipping in both)."""
    with activation_quant_as_clip(small):
        with torch.inference_mode():
            ref = small(x).numpy()
        got = deploy.ort_session(compressed_onnx_bytes(small, x[:1])[0], 1).run(None, {"input": x.numpy()})[0]
    return float(np.abs(got - ref).max())


def _data_bytes(graph: Any) -> int:
    """Bytes of the initializers' data (weights, codes, bitmaps, scales, biases, ranges)."""
    return sum(len(i.raw_data) if i.raw_data else len(numpy_helper.to_array(i).tobytes())
               for i in graph.initializer)


def _sources(graph: Any, tensor: str) -> list[Any]:
    """The initializers a tensor is computed from (itself when it is one)."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out, todo, seen = [], [tensor], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inits:
            out.append(inits[name])
        elif name in producer:
            todo.extend(i for i in producer[name].input if i)
    return out


@pytest.mark.parametrize("name,w_bits,dtype", [("test_lstm", 8, TensorProto.INT8),
                                               ("test_lstm", 4, TensorProto.INT4),
                                               ("test_gru", 8, TensorProto.INT8),
                                               ("test_gru", 2, TensorProto.INT2)])
def test_lstm_and_gru_store_w_and_r_at_their_bits(name: str, w_bits: int, dtype: int) -> None:
    """The fused LSTM / GRU node reads ``W`` and ``R`` through a ``DequantizeLinear`` of codes
    with one scale per gate row (per tensor at 2 bits), and computes what PyTorch does."""
    small, x, reported = _compressed(name, w_bits=w_bits)
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    graph = onnx.load_from_string(blob).graph
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    rnn = [n for n in graph.node if n.op_type in ("LSTM", "GRU")]
    assert len(rnn) == small.get_submodule(name[5:]).num_layers
    for node in rnn:
        for k in (1, 2):
            dq = producer[node.input[k]]
            assert dq.op_type == "DequantizeLinear"
            codes, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
            assert codes.data_type == dtype and node.input[k] not in inits
            assert scale.size == (1 if w_bits <= 2 else codes.dims[1])
    assert sum(1 for _, _, t in lowbit.stored if t == onnx.helper.tensor_dtype_to_string(dtype)[12:]) \
        == len(weight_bits(small)) - 1 + 2 * len(rnn)
    assert _matches_pytorch(small, x) <= 1e-4
    # Every weight is stored in its bits: the initializers' data is the reported size plus the
    # activation ranges, zero points and padding of odd-sized packed tensors.
    assert _data_bytes(graph) <= 1.1 * reported + 200
    assert len(blob) < (w_bits / 32 + 0.45) * len(onnx_bytes(small, x[:1])[0])


def test_weights_dominate_the_file_of_a_larger_lstm() -> None:
    """``lstm`` (64 hidden units, 43k weights) at w8: the whole file within 15% of the reported size."""
    torch.manual_seed(0)
    model = create_model("lstm").eval()
    x = torch.randn(8, 1, 8, 8)
    space = CompressionSpace.from_model(model, x[:1])
    policy = space.uniform(w_bits=8)
    small = compress(model, policy, space=space, calib=x).eval()
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and {t for _, _, t in lowbit.stored} == {"INT8"}
    assert abs(len(blob) / space.size_bytes(policy) - 1) <= 0.15, (len(blob), space.size_bytes(policy))


def test_low_rank_rnn_unrolled_over_the_steps_stores_every_factor() -> None:
    """A factorised GRU is an unrolled graph whose recurrent factors every step reads: each is
    stored once, in its bits, and read through one ``DequantizeLinear``."""
    small, x, _ = _compressed("test_gru", w_bits=4, rank=0.5)
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert {m for m, _, _ in lowbit.stored} == set(weight_bits(small))
    assert {t for _, _, t in lowbit.stored} == {"INT4"}
    graph = onnx.load_from_string(blob).graph
    assert not [i for i in graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2]
    assert _matches_pytorch(small, x) <= 1e-4


@pytest.mark.parametrize("sparsity,w_bits,values", [(0.5, 32, TensorProto.FLOAT),
                                                     (0.8, 32, TensorProto.FLOAT),
                                                     (0.8, 4, TensorProto.INT4)])
def test_sparse_layers_store_their_nonzeros_and_a_bitmap(sparsity: float, w_bits: int, values: int) -> None:
    """test_resnet with the ``sparsity`` knob: each conv / linear weight is rebuilt in the graph
    from its nonzeros (float32 or INT4 codes) and a UINT8 bitmap, whose bytes are those the search
    counts for the weight (values, bitmap, scales; INT4 packing rounds up to a whole byte)."""
    from autocompress.compression import count_size_bytes

    small, x, reported = _compressed("test_resnet", SPARSE_KNOBS, sparsity=sparsity, w_bits=w_bits)
    assert reported == count_size_bytes(small)
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert {m for m, _, _ in lowbit.stored} == set(sparse_layers(small))
    assert {t for _, _, t in lowbit.stored} == {f"sparse {'FLOAT' if w_bits == 32 else 'INT4'} + bitmap"}
    graph = onnx.load_from_string(blob).graph
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    layers = [n for n in graph.node if n.op_type in deploy.LOWBIT_LAYER_OPS]
    assert len(layers) == len(sparse_layers(small))
    counted = {id(p): b for m in small.modules() for p, b in _weight_bytes(m)}
    for node in layers:
        src = {i.name.rsplit("_", 1)[-1]: i for i in _sources(graph, node.input[1])}
        assert src["values"].data_type == values and src["bitmap"].data_type == TensorProto.UINT8
        numel = int(np.prod(numpy_helper.to_array(src["shape"])))
        assert src["bitmap"].dims == [-(-numel // 8)]
        nnz = int(numpy_helper.to_array(src["values"]).size)
        assert nnz <= (1 - sparsity) * numel + 1  # the nonzeros only, no fillers
        assert not any(i.data_type == TensorProto.FLOAT and np.prod(i.dims) == numel for i in src.values())
        module = small.get_submodule(deploy.onnx_node_module(node.name))
        stored = sum(_data_bytes_of(src[k]) for k in ("values", "bitmap", "scale") if k in src)
        assert counted[id(module.weight)] <= stored <= counted[id(module.weight)] + 0.5
    assert _matches_pytorch(small, x) <= 1e-4


def _weight_bytes(m: torch.nn.Module) -> list[tuple[Any, float]]:
    """``(weight, bytes counted)`` of a sparse layer (the formula ``count_size_bytes`` applies)."""
    from autocompress.compression.knobs import weight_storage_bytes
    from autocompress.compression.quantize import weight_scale_count

    mask = getattr(m, "weight_mask", None)
    if mask is None:
        return []
    bits = int(getattr(m, "w_bits", 32))
    scales = 0 if bits >= 32 else weight_scale_count(m.weight.shape, bits)
    return [(m.weight, weight_storage_bytes(m.weight.numel(), int(mask.sum()), m.weight.shape[0],
                                            bits, scales))]


def _data_bytes_of(init: Any) -> int:
    return len(init.raw_data) if init.raw_data else len(numpy_helper.to_array(init).tobytes())


@pytest.mark.parametrize("sparsity,layout", [(0.0, "UINT4 indices + codebook"),
                                             (0.8, "sparse UINT4 indices + codebook + bitmap")])
def test_shared_layers_store_indices_and_codebook(sparsity: float, layout: str) -> None:
    """``share_bits`` 4: UINT4 indices into at most 16 float32 values, gathered in the graph
    (the nonzeros' indices and their bitmap when the layer is sparse too)."""
    small, x, reported = _compressed("test_resnet", SHARE_KNOBS, share_bits=4, sparsity=sparsity)
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert dict.fromkeys(m for m, _, _ in lowbit.stored) == dict.fromkeys(shared_layers(small))
    assert {(b, t) for _, b, t in lowbit.stored} == {(4, layout)}
    graph = onnx.load_from_string(blob).graph
    for node in (n for n in graph.node if n.op_type in deploy.LOWBIT_LAYER_OPS):
        src = {i.name.rsplit("_", 1)[-1]: i for i in _sources(graph, node.input[1])}
        index = src["values" if sparsity else "index"]
        assert index.data_type == TensorProto.UINT4
        assert src["codebook"].data_type == TensorProto.FLOAT and src["codebook"].dims[0] <= 16
    assert _matches_pytorch(small, x) <= 1e-4
    assert _data_bytes(graph) <= 1.1 * reported + 2500  # + BatchNorm statistics


@pytest.mark.parametrize("bits,index_type,stored_bits", [(5, TensorProto.UINT8, 8),
                                                         (4, TensorProto.UINT4, 4)])
def test_pow2_layers_store_indices_into_their_powers_of_two(bits: int, index_type: int,
                                                            stored_bits: int) -> None:
    """``pow2_bits``: each weight is indices into its few values (0 and +-2^n, at most
    2^(b-1) + 1), gathered in the graph; the data is the size the search counts, except that
    ONNX has no 5-bit type (5-bit indices are stored in UINT8)."""
    small, x, reported = _compressed("test_resnet", POW2_KNOBS, pow2_bits=bits)
    assert not weight_bits(small) and set(shared_layers(small).values()) == {bits}
    blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert {m for m, _, _ in lowbit.stored} == set(shared_layers(small))
    graph = onnx.load_from_string(blob).graph
    for node in (n for n in graph.node if n.op_type in deploy.LOWBIT_LAYER_OPS):
        src = {i.name.rsplit("_", 1)[-1]: i for i in _sources(graph, node.input[1])}
        assert src["index"].data_type == index_type
        book = numpy_helper.to_array(src["codebook"])
        assert len(book) <= 2 ** (bits - 1) + 1
        mag = np.abs(book[book != 0]).astype(np.float64)
        assert np.array_equal(np.exp2(np.round(np.log2(mag))), mag)  # powers of two
    assert _matches_pytorch(small, x) <= 1e-4
    assert _data_bytes(graph) <= reported * stored_bits / bits + 2500  # + BatchNorm statistics


def test_a_full_codebook_with_zeros_is_stored_sparse() -> None:
    """16 distinct nonzeros and zeros do not fit 4-bit dense indices: the zeros are left out."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16).astype(np.float32)[rng.integers(0, 16, (8, 16, 3, 3))]
    w[rng.random(w.shape) < 0.3] = 0.0
    enc = lowbit._encode("w", w, 32, 0, True, 4)
    assert isinstance(enc, lowbit._Encoded) and enc.kind.startswith("sparse UINT4 indices")


def test_export_point_writes_compact_rnn_sparse_and_shared_files(lstm_run: Path, compact_run: Path,
                                                                tmp_path: Path) -> None:
    """``autocompress export``'s checks (ONNX Runtime vs PyTorch) pass on an LSTM at w8 and w4 and
    on sparse and shared MLPs, and it reports the compact storage next to the search's size."""
    runs = [
        (lstm_run, {"1": "lstm: w8 as INT8", "2": "lstm: w4 as INT4"}),
        (compact_run, {"1": "w32 as sparse FLOAT + bitmap", "2": "share4 as UINT4 indices + codebook",
                       "3": "share4 as sparse UINT4 indices + codebook + bitmap"}),
    ]
    for k, (run, expected) in enumerate(runs):
        for pid, entry in expected.items():
            info = export_point(run, pid, "onnx", tmp_path / f"{k}-{pid}.onnx", repeats=2, int8=False)
            assert info.max_abs_diff <= 1e-4 and not info.weight_float_layers
            assert any(e.endswith(entry) for e in info.weight_storage), info.weight_storage
            assert info.reported_size_ratio is not None and info.reported_size_ratio < 4
            assert any(line.startswith("weights ") for line in info.lines())


@pytest.mark.parametrize("cell,layers,w_bits", [("LSTM", 1, 4), ("GRU", 2, 8), ("LSTM", 2, 2)])
def test_bidirectional_rnn_stores_each_direction_at_its_bits(cell: str, layers: int, w_bits: int) -> None:
    """Both directions' rows share W's (and R's) row axis, each with its own scales: every
    direction is stored as codes behind its own ``DequantizeLinear`` and the two are joined by a
    ``Concat``; the file computes the model and its weights take the size the search counts."""
    from autocompress.compression import count_size_bytes
    from autocompress.compression.quantize import quantize_module_

    class BiRNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(8, 16, num_layers=layers, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x.reshape(x.shape[0], 8, 8))[0][:, -1])

    torch.manual_seed(0)
    model = BiRNN().eval()
    float_blob = onnx_bytes(model, torch.randn(1, 1, 8, 8))[0]
    quantize_module_(model.rnn, w_bits, 32)
    quantize_module_(model.fc, w_bits, 32)
    x = torch.randn(4, 1, 8, 8)
    blob, _, lowbit = compressed_onnx_bytes(model, x[:1])
    assert lowbit is not None and not lowbit.kept_float
    assert [m for m, _, _ in lowbit.stored].count("rnn") == 2 * layers  # W and R of every layer
    graph = onnx.load_from_string(blob).graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.op_type == cell.upper()):
        for k in (1, 2):
            join = producer[node.input[k]]
            assert join.op_type == "Concat" and len(join.input) == 2
            assert all(producer[i].op_type == "DequantizeLinear" for i in join.input)
    assert _matches_pytorch(model, x) <= 1e-4
    reported = count_size_bytes(model)
    assert _data_bytes(graph) <= 1.1 * reported + 200, (_data_bytes(graph), reported)
    assert len(blob) < (w_bits / 32 + 0.45) * len(float_blob)


@pytest.mark.parametrize(
    "layers,w_bits,a_bits,bidirectional,batch_first",
    [(1, 4, 32, False, True), (2, 8, 8, False, True), (2, 32, 32, False, True),
     (1, 4, 32, True, True), (2, 8, 8, True, True), (2, 32, 32, True, False),
     (1, 32, 32, True, False), (2, 4, 8, True, False)],
)
def test_proj_size_lstm_exports_unrolled_with_its_bits(layers: int, w_bits: int, a_bits: int,
                                                       bidirectional: bool, batch_first: bool) -> None:
    """ONNX's LSTM node has no output projection: a ``proj_size`` LSTM is exported as separate
    matrix products per step (``deploy.exportable``), which compute what PyTorch does at any batch
    size, and its ``W_ih``, ``W_hh`` and ``W_hr`` are stored in their bits like any layer's. A
    bidirectional one runs its reverse direction over the reversed steps; the output (both
    directions per step), ``h_n`` and ``c_n`` (layer-major, direction-minor) all match."""
    from autocompress.compression import CompressionPolicy, LayerAction

    directions = 2 if bidirectional else 1

    class ProjLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 16, num_layers=layers, batch_first=batch_first, proj_size=6,
                                      bidirectional=bidirectional)
            self.fc = torch.nn.Linear(6 * directions, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq = x.reshape(x.shape[0], 8, 8)
            out, (h, c) = self.lstm(seq if batch_first else seq.transpose(0, 1))
            out = out if batch_first else out.transpose(0, 1)
            # every output: the head on the last step, the whole sequence, h_n and c_n by sample
            return torch.cat([self.fc(out[:, -1]), out.flatten(1), h.transpose(0, 1).flatten(1),
                              c.transpose(0, 1).flatten(1)], 1)

    torch.manual_seed(0)
    model = ProjLSTM().eval()
    x = torch.randn(4, 1, 8, 8)
    space = CompressionSpace.from_model(model, x[:1], knobs=("w_bits", "a_bits"))
    policy = CompressionPolicy({n: LayerAction(w_bits=w_bits, a_bits=a_bits if n == "lstm" else 32)
                                for n in ("lstm", "fc")})
    small = compress(model, policy, space=space, calib=x).eval()
    with torch.no_grad():  # the unrolled module is the LSTM, step for step
        assert torch.allclose(deploy.exportable(small)(x), small(x), atol=1e-6)
    blob, exporter, lowbit = compressed_onnx_bytes(small, x[:1])
    assert exporter == "torch.onnx (TorchScript)"
    assert _matches_pytorch(small, x) <= 1e-4
    if w_bits == 32:
        assert lowbit is None
        return
    assert lowbit is not None and not lowbit.kept_float
    assert sorted(m for m, _, _ in lowbit.stored if m.startswith("lstm.")) == sorted(
        f"lstm.{kind}.{j}" for j in range(layers * directions) for kind in ("ih", "hh", "hr"))
    assert _data_bytes(onnx.load_from_string(blob).graph) <= 1.1 * space.size_bytes(policy) + 200
