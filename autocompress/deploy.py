"""Deployment formats of a model: ONNX export, ONNX Runtime int8 quantization and sessions, TorchScript.

One place for the conversions that both latency measurement (``evaluators.latency``) and
``export`` (``report.export``) run, so a measured model and an exported file are built the same
way. It sits below ``evaluators`` and imports nothing of the package: ``onnx`` and
``onnxruntime`` are imported inside the functions that need them (they cost import time and a
search that measures no ONNX latency never loads them).
"""

from __future__ import annotations

import io
import math
import re
import tempfile
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: ONNX opset of every export.
ONNX_OPSET = 17

#: Layer types whose inputs and weights the ``layers`` int8 scheme quantizes.
INT8_LAYER_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

#: Schemes of ``quantize_int8``.
INT8_SCHEMES: tuple[str, ...] = ("full", "layers")


class _ProjLSTM(nn.Module):
    """An ``nn.LSTM`` with ``proj_size`` (uni- or bidirectional, any depth), its steps as separate
    matrix products.

    ONNX's ``LSTM`` node has no output projection (the TorchScript exporter refuses such an LSTM
    and the dynamo exporter writes a file ONNX Runtime rejects), so ``exportable`` swaps it for
    this module before export: per layer ``k`` and direction ``d`` (``j = k * directions + d``,
    PyTorch's order of ``h_n``), ``ih[j]`` (``W_ih x + b_ih``), ``hh[j]`` (``W_hh h + b_hh``) and
    ``hr[j]`` (``h = W_hr (o * tanh(c))``), PyTorch's equations. The reverse direction runs over
    the steps from last to first; a bidirectional layer's output at step ``t`` is the forward and
    the reverse ``h`` of that step concatenated, the next layer's input. A quantized LSTM's input
    rounding (``act_quant``) and weight bits (``w_bits`` on each matrix, which
    ``store_lowbit_weights`` reads through the exporter's node scopes) come along.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.act_quant = getattr(lstm, "act_quant", None)
        self.batch_first, self.num_layers = lstm.batch_first, lstm.num_layers
        self.hidden_size, self.proj_size = lstm.hidden_size, lstm.proj_size
        self.directions = 2 if lstm.bidirectional else 1
        self.ih, self.hh, self.hr = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        bits = getattr(lstm, "w_bits", 32)
        for k in range(lstm.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                for mods, name in ((self.ih, "ih"), (self.hh, "hh"), (self.hr, "hr")):
                    w = getattr(lstm, f"weight_{name}_l{k}{suffix}").detach()
                    b = (getattr(lstm, f"bias_{name}_l{k}{suffix}", None)
                         if lstm.bias and name != "hr" else None)
                    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None).to(w.device, w.dtype)
                    with torch.no_grad():
                        lin.weight.copy_(w)
                        if b is not None:
                            lin.bias.copy_(b.detach())
                    if bits < 32:
                        lin.w_bits = bits
                    mods.append(lin)

    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.act_quant is not None:
            x = self.act_quant(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        b, steps = x.shape[0], x.shape[1]
        n = self.num_layers * self.directions
        if hx is None:
            h0 = x.new_zeros(n, b, self.proj_size)
            c0 = x.new_zeros(n, b, self.hidden_size)
        else:
            h0, c0 = hx
        hs, cs = [], []
        for k in range(self.num_layers):
            layer_out = []
            for d in range(self.directions):
                j = k * self.directions + d
                gi = self.ih[j](x)
                h, c = h0[j], c0[j]
                outs: list[Tensor] = [h] * steps
                for t in range(steps) if d == 0 else reversed(range(steps)):
                    i, f, g, o = (gi[:, t] + self.hh[j](h)).chunk(4, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = self.hr[j](torch.sigmoid(o) * torch.tanh(c))
                    outs[t] = h
                layer_out.append(torch.stack(outs, 1))
                hs.append(h)
                cs.append(c)
            x = torch.cat(layer_out, -1) if self.directions == 2 else layer_out[0]
        out = x if self.batch_first else x.transpose(0, 1)
        return out, (torch.stack(hs), torch.stack(cs))


def exportable(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy whose ``proj_size`` LSTMs are ``_ProjLSTM``s (same outputs;
    see there why). Batched inputs only, as exports take."""
    import copy

    def swappable(m: nn.Module) -> bool:
        return isinstance(m, nn.LSTM) and getattr(m, "proj_size", 0) > 0

    if not any(swappable(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if swappable(m):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, _ProjLSTM(m))
    return model


def export_onnx_with(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET,
                     fold_batchnorm: bool = True) -> tuple[bytes, str]:
    """The model as ONNX bytes with a dynamic batch axis (weights embedded), and the exporter used.

    Uses the TorchScript-based exporter (about 20x faster than the dynamo exporter on small CNNs,
    which matters when a lookup table exports hundreds of single layers; it also keeps module
    scopes in node names, see ``onnx_node_module``) and falls back to the dynamo exporter when the
    graph does not trace. The graph has one input ``input`` and one output ``output``.
    ``fold_batchnorm=False`` keeps BatchNorm layers as ``BatchNormalization`` nodes instead of
    folding them into the preceding convolution's weight, so quantized weights stay on their grid
    (see ``store_lowbit_weights``). A ``proj_size`` LSTM is exported unrolled (``exportable``).
    """
    model = exportable(model.eval())
    buf = io.BytesIO()
    mode: dict[str, Any] = {} if fold_batchnorm else {"training": torch.onnx.TrainingMode.PRESERVE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example_input,), buf, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **mode,
            )
            return buf.getvalue(), "torch.onnx (TorchScript)"
        except Exception:  # noqa: BLE001 - try the other exporter before giving up
            pass
        program = torch.onnx.export(
            model, (example_input,), dynamo=True, external_data=False,
            input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
        )
        assert program is not None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(str(path), external_data=False)
            return path.read_bytes(), "torch.onnx (dynamo)"


def export_onnx(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET) -> bytes:
    """The model as ONNX bytes (see ``export_onnx_with``)."""
    return export_onnx_with(model, example_input, opset=opset)[0]


def within_modules(name: str, prefixes: Sequence[str]) -> bool:
    """True when module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in prefixes)


def onnx_node_module(node_name: str) -> str:
    """The module FQN of a node named by the TorchScript ONNX exporter.

    ``/layer2/layer2.0/shortcut/shortcut.0/Conv`` -> ``layer2.0.shortcut.0``: the exporter
    writes one scope per module, children of containers as ``parent.index``.
    """
    comps = [c for c in node_name.split("/") if c][:-1]
    parts: list[str] = []
    prev: str | None = None
    for c in comps:
        parts.append(c[len(prev) + 1:] if prev is not None and c.startswith(prev + ".") else c)
        prev = c
    return ".".join(parts)


def quantize_int8(blob: bytes, calib: Sequence[Tensor | np.ndarray], *, exclude_modules: Sequence[str] = (),
                  scheme: str = "full") -> bytes:
    """ONNX Runtime static int8 quantization (QDQ): QUInt8 activations, per-channel QInt8 weights.

    Signed int8 activations ran slower than fp32 on these CPUs, QUInt8 after ``quant_pre_process``
    about 3x faster (see the project's dependency notes). ``calib``: calibration batches for the
    graph's input ``input`` (tensors or arrays). Nodes of ``exclude_modules`` (and their children)
    stay in float.

    Schemes: ``full`` quantizes every tensor ORT can (layer outputs, adds, pooling too), so ORT
    fuses whole int8 kernels: the fastest file (what latency measurement times), but each extra
    8-bit tensor is a rounding the PyTorch model does not make. ``layers`` quantizes exactly what
    the compression core's fake quantization does, the inputs and weights of convolution / linear
    layers, and keeps their outputs in float: the faithful file (also for mixed precision, where
    the int8 layers sit between float ones).
    """
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r}; expected 'full' or 'layers'")
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [(c.detach().numpy() if torch.is_tensor(c) else np.asarray(c)).astype(np.float32)
               for c in calib]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    excluded = []
    if exclude_modules:
        graph = onnx.load_from_string(blob).graph
        for node in graph.node:
            if within_modules(onnx_node_module(node.name), exclude_modules):
                excluded.append(node.name)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(blob)
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # noqa: BLE001 - shape inference can fail on odd graphs; quantize raw
            pre = src
        scheme_kwargs: dict[str, Any] = {} if scheme == "full" else {
            "op_types_to_quantize": list(INT8_LAYER_OPS),
            "extra_options": {"OpTypesToExcludeOutputQuantization": list(INT8_LAYER_OPS)},
        }
        quantize_static(
            str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, **scheme_kwargs,
        )
        return out.read_bytes()


def ort_session(blob: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation.

    ORT fuses a ``DequantizeLinear`` weight feeding a ``MatMul`` (a low-bit file's linear layer
    over a sequence, see ``store_lowbit_weights``) into ``MatMulNBits``, which by default
    quantizes its float input to int8 (accuracy level 4): 4e-4 off on ``test_lstm``'s embedding.
    Level 1 computes in float32, as the model does; files without such a pair are unaffected.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    so.log_severity_level = 3
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def torchscript_bytes(model: nn.Module, example_input: Tensor) -> bytes:
    """``torch.jit.trace`` of the model in eval mode, saved by ``torch.jit.save`` (loads without its code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model.eval(), (example_input,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def pt_bytes(model: nn.Module) -> bytes:
    """The whole module in eval mode pickled by ``torch.save`` (loads with its classes importable)."""
    buf = io.BytesIO()
    torch.save(model.eval(), buf)
    return buf.getvalue()


# -- low-bit weight storage -----------------------------------------------------------------------

#: ONNX type that stores the integer codes of a weight quantized at ``bits`` (symmetric, zero
#: point 0), as ``(type name, stored bits, lowest opset whose DequantizeLinear takes it)``: the
#: narrowest type ONNX Runtime 1.32 dequantizes per axis on CPU. 1-2 bits (binary / ternary codes
#: in {-1, 0, 1}) are INT2 (opset 25), 3-4 bits INT4 (opset 21), 5-8 bits INT8 (opset 13, so the
#: export's opset 17 stays), 9-16 bits INT16 (opset 21).
LOWBIT_STORAGE: dict[int, tuple[str, int, int]] = {
    **{b: ("INT2", 2, 25) for b in (1, 2)},
    **{b: ("INT4", 4, 21) for b in (3, 4)},
    **{b: ("INT8", 8, 13) for b in range(5, 9)},
    **{b: ("INT16", 16, 21) for b in range(9, 17)},
}

#: Layer types whose weight initializer ``store_lowbit_weights`` replaces.
LOWBIT_LAYER_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

#: Recurrent layer types whose ``W`` and ``R`` initializers ``store_lowbit_weights`` replaces.
LOWBIT_RNN_OPS: tuple[str, ...] = ("LSTM", "GRU", "RNN")

#: ONNX type of the indices of a weight k-means shared among ``2^b`` values (the ``share_bits``
#: knob), as ``(type name, stored bits, lowest opset that casts it)``: UINT2 (opset 25) at 1-2
#: bits, UINT4 (opset 21) at 3-4, UINT8 at 5-8.
SHARED_INDEX_STORAGE: dict[int, tuple[str, int, int]] = {
    **{b: ("UINT2", 2, 25) for b in (1, 2)},
    **{b: ("UINT4", 4, 21) for b in (3, 4)},
    **{b: ("UINT8", 8, 13) for b in range(5, 9)},
}

#: File-level constants of the sparse weights' rebuild (``_encode``), added once per file when
#: read: the bit positions of a byte, the modulus that isolates one bit, the shapes of a column and
#: of a flat vector.
SPARSE_CONSTANTS: dict[str, np.ndarray] = {
    "sparse_shifts": np.arange(8, dtype=np.uint8).reshape(1, 8),
    "sparse_two": np.array(2, dtype=np.uint8),
    "sparse_column": np.array([-1, 1], dtype=np.int64),
    "sparse_flat": np.array([-1], dtype=np.int64),
}


@dataclass(frozen=True)
class LowBitWeights:
    """What ``store_lowbit_weights`` did to one ONNX graph.

    ``stored``: ``(module, bits, storage)`` per weight replaced: integer codes and a
    ``DequantizeLinear`` (storage = the ONNX type, ``INT4``), shared indices (bits = index bits,
    ``UINT4 indices + codebook``) or a sparse layout (``sparse INT8 + bitmap``; bits 32
    for float values); ``kept_float``: ``(module, reason)`` per compressed layer whose weight
    stays float32 in the file; ``opset``: the file's ONNX opset.
    """

    stored: tuple[tuple[str, int, str], ...] = ()
    kept_float: tuple[tuple[str, str], ...] = ()
    opset: int = ONNX_OPSET


def _codes_and_scales(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer codes ``q`` and float32 scales ``s`` with ``q * s`` equal to ``w`` (as float32).

    ``w`` comes from the compression core's grid (``autocompress.compression.quantize``):
    per-output-channel ``s = max|w_c| / (2^(b-1) - 1)`` at 3-16 bits, one ``s`` per tensor with
    codes in {-1, 0, 1} at 1-2 bits, scale 1 for the first factor of a low-rank pair (its scales
    live in the second factor). ``s`` is recovered from the stored values, trying the float32
    neighbours of ``max|w_c| / qmax`` (the division can round either way) and 1.0; the product is
    then checked in float32, as ``DequantizeLinear`` computes it. None when no candidate
    reproduces a channel (the weight is not on a ``bits`` grid: it stays float).
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0 or w.size == 0 or not np.isfinite(w).all():
        return None
    per_tensor = bits <= 2
    if not per_tensor and axis >= w.ndim:
        return None
    qmax = 1 if per_tensor else 2 ** (bits - 1) - 1
    flat = w.reshape(1, -1) if per_tensor else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(flat).max(axis=1)
    base = np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    candidates = [base]
    for direction in (np.inf, 0.0):
        step = base
        for _ in range(2):
            step = np.nextafter(step, np.float32(direction)).astype(np.float32)
            candidates.append(step)
    candidates.append(np.ones_like(base))
    scales = np.zeros_like(base)
    codes = np.zeros(flat.shape, dtype=np.int32)
    todo = np.ones(len(base), dtype=bool)
    for cand in candidates:
        cand = np.where(cand > 0, cand, np.float32(1.0)).astype(np.float32)
        q = np.rint(flat / cand[:, None])
        ok = (np.abs(q) <= qmax).all(axis=1) & (q.astype(np.float32) * cand[:, None] == flat).all(axis=1)
        take = todo & ok
        scales[take] = cand[take]
        codes[take] = q[take].astype(np.int32)
        todo &= ~ok
        if not todo.any():
            break
    if todo.any():
        return None
    if per_tensor:
        return codes.reshape(w.shape), scales.reshape(())
    return np.moveaxis(codes.reshape(np.moveaxis(w, axis, 0).shape), 0, axis), scales


def _weight_axis(node: Any) -> int:
    """Output-channel axis of a layer's weight input: 0 for Conv and Gemm(transB=1), else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: weight is (in, out)


def _compact_graph(graph: Any, keep: Collection[str] = ()) -> None:
    """Drop what a low-bit file does not need, so its bytes are the weights' (same computation).

    The exporter's names of intermediate tensors (``/layer1/layer1.0/conv1/act_quant/Add_1_output_0``)
    and of element-wise nodes are about 100 bytes per node, as much as the INT4 weights of a small
    network: intermediate tensors get short names (``v12``; the rebuilt weights named in ``keep``
    keep theirs) and only the layer nodes (``Conv``, ``Gemm``, ``MatMul``, ``LSTM``, ``GRU``,
    ``RNN``, ``BatchNormalization``) keep their scoped names (``onnx_node_module`` still maps
    them to modules). ``Identity`` nodes that alias an initializer (the exporter's de-duplicated
    constants) are bypassed, and the shape annotations the opset converter adds (``value_info``)
    are dropped. Graph inputs, outputs and initializer names stay.
    """
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH / GRAPHS: leave as is
        return
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs}
    nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    rename: dict[str, str] = {}
    for n in nodes:
        for o in n.output:
            if o and o not in outputs and o not in inits and o not in keep:
                rename[o] = f"v{len(rename)}"
    for n in nodes:
        for k, name in enumerate(n.input):
            name = alias.get(name, name)
            n.input[k] = rename.get(name, name)
        for k, name in enumerate(n.output):
            n.output[k] = rename.get(name, name)
        if n.op_type not in (*LOWBIT_LAYER_OPS, *LOWBIT_RNN_OPS, "BatchNormalization"):
            n.name = ""
        n.doc_string = ""
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]


def _bypass_aliases(graph: Any) -> None:
    """Read initializers directly instead of through the ``Identity`` nodes that alias them.

    The exporter de-duplicates a constant read several times (a recurrence unrolled over the
    steps reads its weight once per step) into one initializer and one ``Identity`` per extra
    reader; ``_compact_graph`` bypasses them too (graphs with subgraphs are left as they are).
    """
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):
        return
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return
    nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for n in nodes:
        for k, name in enumerate(n.input):
            n.input[k] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(nodes)


def _np_type(type_name: str) -> Any:
    import ml_dtypes

    return {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8, "INT16": np.int16,
            "UINT2": ml_dtypes.uint2, "UINT4": ml_dtypes.uint4, "UINT8": np.uint8,
            "UINT16": np.uint16, "FLOAT": np.float32}[type_name]


def _weight_refs(node: Any) -> list[tuple[str, int]]:
    """``(weight input, output-channel axis)`` of each weight a layer node reads.

    Conv / Gemm / MatMul: input 1. LSTM / GRU / RNN: ``W`` (input 1) and ``R`` (input 2), shaped
    ``(directions, gates x hidden, in)``, whose rows (axis 1) are PyTorch's weight rows reordered
    by gate, so each keeps its per-row scale.
    """
    if node.op_type in LOWBIT_LAYER_OPS and len(node.input) >= 2:
        return [(node.input[1], _weight_axis(node))]
    if node.op_type in LOWBIT_RNN_OPS:
        return [(name, 1) for name in node.input[1:3] if name]
    return []


@dataclass
class _Encoded:
    """One weight's replacement: initializers, the nodes rebuilding it, its kind and opset."""

    tensors: list[Any]
    nodes: list[Any]
    kind: str
    opset: int


def _encode(weight: str, w: np.ndarray, bits: int, axis: int, sparse: bool,
            share: int | None) -> _Encoded | str | None:
    """The compact storage of one float32 weight, or why it stays float32 (None: dense float32
    is the smaller storage of a sparse float weight, as the cost model counts it too).

    Values: ``share`` (k-means shared): unsigned ``share``-bit indices into a float32 codebook of
    the weight's distinct values, rebuilt by ``Cast`` + ``Gather``; ``bits`` < 32: integer codes
    and float32 scales (``_codes_and_scales``); else float32. ``sparse``: only the nonzeros are
    stored, as values plus a bitmap of the flattened weight (one bit per entry, eight per UINT8,
    ``ceil(numel / 8)`` bytes: the layout ``sparsity.sparse_bytes`` counts, so the file holds the
    bytes the search reports), rebuilt by ``BitShift`` + ``Mod`` (the bits) + ``NonZero`` (their
    positions) + ``ScatterElements`` into ``ConstantOfShape`` zeros + ``Reshape`` (and ``Mul`` by
    the scales for codes), when that is smaller than the dense storage. Every rebuilt weight is
    checked here to equal ``w`` as float32 values.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    helper = onnx.helper
    flat = w.reshape(-1)
    keep = flat != 0 if sparse else np.ones(flat.shape, dtype=bool)
    if not keep.any():
        keep[0] = True  # an all-zero weight: one stored zero
    scale: np.ndarray | None = None
    book: np.ndarray | None = None
    if share is not None:
        if share not in SHARED_INDEX_STORAGE:
            return f"{share}-bit shared indices have no ONNX integer type"
        book = np.unique(flat[keep]).astype(np.float32)
        if len(book) > 2**share:
            return f"weight has {len(book)} distinct values, more than 2^{share} (not shared)"
        codes = np.searchsorted(book, flat).clip(0, len(book) - 1)
        value_type, value_bits, need = SHARED_INDEX_STORAGE[share]
        zero_code: int | None = int(np.searchsorted(book, 0.0)) if 0.0 in book else None
        if zero_code is None and len(book) < 2**share:  # the left-out zeros need a value
            book, zero_code = np.append(book, np.float32(0.0)), len(book)
        values = codes if zero_code is None else np.where(keep, codes, zero_code)
    elif bits < 32:
        found = _codes_and_scales(w, bits, axis)
        if found is None:
            return f"weight is not on the {bits}-bit grid (e.g. BatchNorm folded into it)"
        codes, scale = found
        value_type, value_bits, need = LOWBIT_STORAGE[bits]
        scale = scale if scale.ndim == 0 else np.expand_dims(
            scale, tuple(d for d in range(w.ndim) if d != axis))
        if not np.array_equal(codes.astype(np.float32) * scale, w):
            return f"codes x scales do not reproduce the {bits}-bit weight exactly"
        zero_code, values = 0, codes.reshape(-1)
        if sparse:
            keep &= values != 0  # a kept weight rounded to zero is a zero too
            if not keep.any():
                keep[0] = True
    else:
        value_type, value_bits, need, zero_code, values = "FLOAT", 32, ONNX_OPSET, 0, flat

    dense_bytes = flat.size * value_bits / 8
    layout: np.ndarray | None = None  # the stored positions of a sparse layout
    if sparse:
        pos = np.flatnonzero(keep)
        # A full codebook has no zero: such a weight can only be stored sparse.
        best = dense_bytes if zero_code is not None else math.inf
        if -(-flat.size // 8) + len(pos) * value_bits / 8 < best:
            layout = pos
        if layout is None and share is None and bits >= 32:
            return None
        if layout is None and zero_code is None:
            return f"2^{share} shared values and its zeros do not fit {share}-bit indices"
    tensors: list[Any] = []
    nodes: list[Any] = []

    def tensor(array: np.ndarray, suffix: str) -> str:
        tensors.append(numpy_helper.from_array(array, f"{weight}_{suffix}"))
        return tensors[-1].name

    def node(op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or f"{weight}_{op}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    if layout is None:  # dense: quantized codes or shared indices
        if book is not None:
            idx = tensor(values.reshape(w.shape).astype(_np_type(value_type)), "index")
            node("Gather", [tensor(book, "codebook"), node("Cast", [idx], to=TensorProto.INT64)], weight)
            kind, rebuilt = f"{value_type} indices + codebook", book[values].reshape(w.shape)
        else:
            assert scale is not None
            np_type = _np_type(value_type)
            s = scale.reshape(-1) if scale.ndim else scale
            q, sn = tensor(codes.astype(np_type), "quantized"), tensor(s.astype(np.float32), "scale")
            z = tensor(np.zeros(s.shape, dtype=np_type), "zero_point")
            nodes.append(helper.make_node("DequantizeLinear", [q, sn, z], [weight],
                                          name=f"{weight}_DequantizeLinear",
                                          **({} if s.ndim == 0 else {"axis": axis})))
            return _Encoded(tensors, nodes, value_type, need)
    else:
        stored = values[layout]
        vals = tensor(stored.astype(_np_type(value_type)), "values")
        bitmap = np.zeros(flat.size, dtype=bool)
        bitmap[layout] = True
        column = node("Reshape", [tensor(np.packbits(bitmap, bitorder="little"), "bitmap"),
                                  "sparse_column"])
        bit = node("Mod", [node("BitShift", [column, "sparse_shifts"], direction="RIGHT"), "sparse_two"])
        pos64 = node("Reshape", [node("NonZero", [node("Reshape", [bit, "sparse_flat"])]), "sparse_flat"])
        if book is not None:
            vals = node("Gather", [tensor(book, "codebook"), node("Cast", [vals], to=TensorProto.INT64)])
            dense = book[stored]
        elif scale is not None:
            vals = node("Cast", [vals], to=TensorProto.FLOAT)
            dense = stored.astype(np.float32)
        else:
            dense = stored
        zeros = node("ConstantOfShape", [tensor(np.array([flat.size], dtype=np.int64), "numel")],
                     value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))
        full = node("ScatterElements", [zeros, pos64, vals], axis=0)
        shaped = node("Reshape", [full, tensor(np.array(w.shape, dtype=np.int64), "shape")],
                      None if scale is not None else weight)
        rebuilt = np.zeros(flat.size, dtype=np.float32)
        rebuilt[layout] = dense
        rebuilt = rebuilt.reshape(w.shape)
        if scale is not None:
            node("Mul", [shaped, tensor(scale.astype(np.float32), "scale")], weight)
            rebuilt = rebuilt * scale
        values_kind = f"{value_type} indices + codebook" if book is not None else value_type
        kind = f"sparse {values_kind} + bitmap"
    if not np.array_equal(rebuilt, w):
        return "the compact storage does not reproduce the weight exactly"
    return _Encoded(tensors, nodes, kind, need)


def _encode_directions(weight: str, w: np.ndarray, bits: int, axis: int, sparse: bool,
                       share: int | None) -> _Encoded | str | None:
    """``_encode`` of each direction of a bidirectional ``W`` / ``R`` on its own, joined by a
    ``Concat``: the two directions' rows share the row axis, and each row keeps its own scale
    (PyTorch quantizes ``weight_ih_l0`` and ``weight_ih_l0_reverse`` separately)."""
    from onnx import helper

    parts: list[_Encoded] = []
    for d in range(w.shape[0]):
        enc = _encode(f"{weight}_dir{d}", w[d:d + 1], bits, axis, sparse, share)
        if enc is None:  # dense float32 is smaller: the whole weight stays as it is
            return None
        if isinstance(enc, str):
            return enc
        parts.append(enc)
    concat = helper.make_node("Concat", [f"{weight}_dir{d}" for d in range(w.shape[0])], [weight], axis=0)
    return _Encoded([t for e in parts for t in e.tensors], [n for e in parts for n in e.nodes] + [concat],
                    parts[0].kind, max(e.opset for e in parts))


def store_lowbit_weights(blob: bytes, weight_bits: dict[str, int], *, sparse: Collection[str] = (),
                         shared: Mapping[str, int] | None = None) -> tuple[bytes, LowBitWeights]:
    """Store the weights of quantized, sparse and shared layers in their bits.

    ``weight_bits``: module FQN -> weight bits of each layer the policy quantizes (< 32);
    ``sparse``: modules whose weights have zeros left out (the ``sparsity`` knob); ``shared``:
    module -> index bits of the layers whose weights are k-means shared (``share_bits``). Each
    ``Conv`` / ``Gemm`` / ``MatMul`` weight and each ``LSTM`` / ``GRU`` / ``RNN`` ``W`` and ``R``
    (each direction of a bidirectional layer on its own, joined by a ``Concat``) of such a module (found by node scope, see ``onnx_node_module``, or by the initializer name
    ``FQN.weight``) that is a plain float initializer read by that module only is replaced:

    * quantized, dense: an integer initializer of the ``LOWBIT_STORAGE`` type (codes packed: two
      INT4 or four INT2 per byte), one float32 scale per output channel (per tensor at 1-2
      bits), a zero zero point, and a ``DequantizeLinear``;
    * shared, dense: ``SHARED_INDEX_STORAGE`` indices and a float32 codebook, ``Cast`` + ``Gather``;
    * sparse: the nonzeros' values (float32, codes or shared indices) and a bitmap of their
      positions, rebuilt by ``NonZero`` + ``ScatterElements`` when smaller than the dense storage
      (see ``_encode``).

    The rebuilding nodes' output keeps the old initializer's name and equals the float32 weight
    (bit for bit, except that a -0.0 comes back as +0.0; checked here, tensor by tensor), so the
    graph computes what it did. The graph is converted to the opset the narrowest type needs
    (``onnx.version_converter``; 17 when every stored type is 8 bits or wider) and its names are
    shortened (``_compact_graph``). A weight that is not on its grid (e.g. BatchNorm folded into
    it by the exporter: export with ``fold_batchnorm=False``), shared with another module, not an
    initializer, or whose opset conversion fails stays float32 and is listed in
    ``LowBitWeights.kept_float``.

    Returns:
        The new ONNX bytes (``blob`` itself when nothing was replaced) and what was stored.
    """
    import onnx
    from onnx import numpy_helper, version_converter

    sparse = set(sparse)
    shared = dict(shared or {})
    model = onnx.load_from_string(blob)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    _bypass_aliases(graph)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    known = set(weight_bits) | sparse | set(shared)
    refs: dict[str, list[tuple[str, int]]] = {}  # initializer -> (module, axis) per reader
    kept: dict[str, str] = {}
    for node in graph.node:
        for weight, axis in _weight_refs(node):
            module = onnx_node_module(node.name)
            if module not in known:  # a module called again is scoped ``name_1``, ``name_2``, ...
                module = re.sub(r"_\d+$", "", module)
            if module not in known:
                module = weight[: -len(".weight")] if weight.endswith(".weight") else ""
            bits = weight_bits.get(module, 32)
            if module in kept or (bits >= 32 and module not in sparse and module not in shared):
                continue
            if bits < 32 and bits not in LOWBIT_STORAGE:
                kept[module] = f"{bits}-bit weights have no ONNX integer type"
            elif weight not in inits:
                kept[module] = "weight is computed in the graph, not stored"
            else:
                refs.setdefault(weight, []).append((module, axis))
    plan: dict[str, tuple[str, int, int]] = {}  # initializer -> (module, bits, axis)
    for weight, readers in refs.items():
        module, axis = readers[0]
        if module in kept:
            continue
        # One module may read its weight several times (a recurrence unrolled over the steps).
        if uses.get(weight, 0) != len(readers) or len(set(readers)) != 1:
            kept[module] = "weight initializer is shared"
        else:
            plan[weight] = (module, weight_bits.get(module, 32), axis)
    stored: list[tuple[str, int, str]] = []
    encoded: dict[str, _Encoded] = {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    for weight, (module, bits, axis) in plan.items():
        w = numpy_helper.to_array(inits[weight])
        if w.dtype != np.float32:
            kept[module] = f"weight is {w.dtype}, not float32"
            continue
        if w.ndim == 0 or w.size == 0 or not np.isfinite(w).all():
            kept[module] = "weight is empty or not finite"
            continue
        if w.ndim == 3 and w.shape[0] > 1:  # a bidirectional W / R: (directions, rows, columns)
            enc = _encode_directions(weight, w, bits, axis, module in sparse, shared.get(module))
        else:
            enc = _encode(weight, w, bits, axis, module in sparse, shared.get(module))
        if isinstance(enc, str):
            kept[module] = enc
            continue
        if enc is None:
            continue
        encoded[weight] = enc
        stored.append((module, shared.get(module, bits), enc.kind))
        opset = max(opset, enc.opset)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    if opset > current and encoded:
        try:
            # Convert the float graph first: the converter's adapters know every op it holds.
            model = version_converter.convert_version(model, opset)
            graph = model.graph
        except Exception as exc:  # noqa: BLE001 - keep what the current opset can store
            why = f"opset {current} -> {opset} conversion failed ({type(exc).__name__})"
            names = list(encoded)
            for k in reversed(range(len(stored))):
                if encoded[names[k]].opset > current:
                    kept[stored[k][0]] = why
                    del encoded[names[k]], stored[k]
            opset = current
    report_kept = tuple(sorted(kept.items()))
    if not encoded:
        return blob, LowBitWeights((), report_kept, current)
    extra = []
    read = {i for e in encoded.values() for n in e.nodes for i in n.input}
    extra.extend(numpy_helper.from_array(v, k) for k, v in SPARSE_CONSTANTS.items() if k in read)
    keep = [i for i in graph.initializer if i.name not in encoded]
    del graph.initializer[:]
    graph.initializer.extend(keep + [t for e in encoded.values() for t in e.tensors] + extra)
    inputs = [i for i in graph.input if i.name not in encoded]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = [n for e in encoded.values() for n in e.nodes] + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    _compact_graph(graph, keep=set(encoded))
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(
        list(model.opset_import), ignore_unknown=True))
    onnx.checker.check_model(model)
    return model.SerializeToString(), LowBitWeights(tuple(stored), report_kept, opset)
