"""Deployment formats of a model: ONNX export, ONNX Runtime int8 quantization and sessions, TorchScript.

One place for the conversions that both latency measurement (``evaluators.latency``) and
``export`` (``report.export``) run, so a measured model and an exported file are built the same
way. It sits below ``evaluators`` and imports nothing of the package: ``onnx`` and
``onnxruntime`` are imported inside the functions that need them (they cost import time and a
search that measures no ONNX latency never loads them).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Sequence
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


def export_onnx_with(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET,
                     fold_batchnorm: bool = True) -> tuple[bytes, str]:
    """The model as ONNX bytes with a dynamic batch axis (weights embedded), and the exporter used.

    Uses the TorchScript-based exporter (about 20x faster than the dynamo exporter on small CNNs,
    which matters when a lookup table exports hundreds of single layers; it also keeps module
    scopes in node names, see ``onnx_node_module``) and falls back to the dynamo exporter when the
    graph does not trace. The graph has one input ``input`` and one output ``output``.
    ``fold_batchnorm=False`` keeps BatchNorm layers as ``BatchNormalization`` nodes instead of
    folding them into the preceding convolution's weight, so quantized weights stay on their grid
    (see ``store_lowbit_weights``).
    """
    model = model.eval()
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
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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


@dataclass(frozen=True)
class LowBitWeights:
    """What ``store_lowbit_weights`` did to one ONNX graph.

    ``stored``: ``(module, bits, ONNX type)`` per weight replaced by integer codes and a
    ``DequantizeLinear``; ``kept_float``: ``(module, reason)`` per quantized layer whose weight
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


def _compact_graph(graph: Any) -> None:
    """Drop what a low-bit file does not need, so its bytes are the weights' (same computation).

    The exporter's names of intermediate tensors (``/layer1/layer1.0/conv1/act_quant/Add_1_output_0``)
    and of element-wise nodes are about 100 bytes per node, as much as the INT4 weights of a small
    network: intermediate tensors get short names (``v12``; dequantized weights keep theirs) and only the layer nodes (``Conv``,
    ``Gemm``, ``MatMul``, ``BatchNormalization``) keep their scoped names (``onnx_node_module``
    still maps them to modules). ``Identity`` nodes that alias an initializer (the exporter's
    de-duplicated constants) are bypassed, and the shape annotations the opset converter adds
    (``value_info``) are dropped. Graph inputs, outputs and initializer names stay.
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
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits:
            continue  # a stored weight: its output keeps the parameter's name
        for o in n.output:
            if o and o not in outputs and o not in inits:
                rename[o] = f"v{len(rename)}"
    for n in nodes:
        for k, name in enumerate(n.input):
            name = alias.get(name, name)
            n.input[k] = rename.get(name, name)
        for k, name in enumerate(n.output):
            n.output[k] = rename.get(name, name)
        if n.op_type not in (*LOWBIT_LAYER_OPS, "BatchNormalization"):
            n.name = ""
        n.doc_string = ""
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]


def store_lowbit_weights(blob: bytes, weight_bits: dict[str, int]) -> tuple[bytes, LowBitWeights]:
    """Store the weights of quantized layers as integer codes behind ``DequantizeLinear``.

    ``weight_bits``: module FQN -> weight bits of each layer the policy quantizes (< 32). Each
    ``Conv`` / ``Gemm`` / ``MatMul`` of such a module (found by node scope, see
    ``onnx_node_module``, or by the initializer name ``FQN.weight``) whose weight is a plain
    float initializer on the layer's quantization grid gets an integer initializer of the
    ``LOWBIT_STORAGE`` type (codes packed: two INT4 or four INT2 per byte), one float32 scale per
    output channel (per tensor at 1-2 bits), a zero zero point, and a ``DequantizeLinear`` whose
    output keeps the old initializer's name. The dequantized values equal the float32 weights
    (bit for bit, except that a -0.0 comes back as +0.0; checked here, tensor by tensor), so the
    graph computes what it did. The graph is converted to the opset the narrowest type needs
    (``onnx.version_converter``; 17 when every stored weight is INT8) and its names are
    shortened (``_compact_graph``). A weight that is not on its grid (e.g. BatchNorm folded into
    it by the exporter: export with ``fold_batchnorm=False``), shared, not an initializer, or
    whose opset conversion fails stays float32 and is listed in ``LowBitWeights.kept_float``.

    Returns:
        The new ONNX bytes (``blob`` itself when nothing was replaced) and what was stored.
    """
    import ml_dtypes
    import onnx
    from onnx import numpy_helper, version_converter

    model = onnx.load_from_string(blob)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    plan: dict[str, tuple[str, int, int]] = {}  # initializer -> (module, bits, axis)
    kept: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in LOWBIT_LAYER_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        module = onnx_node_module(node.name)
        if module not in weight_bits:
            module = weight[: -len(".weight")] if weight.endswith(".weight") else ""
        bits = weight_bits.get(module)
        if bits is None or bits >= 32 or module in kept:
            continue
        if bits not in LOWBIT_STORAGE:
            kept[module] = f"{bits}-bit weights have no ONNX integer type"
        elif weight not in inits:
            kept[module] = "weight is computed in the graph, not stored"
        elif uses.get(weight, 0) != 1:
            kept[module] = "weight initializer is shared"
        else:
            plan[weight] = (module, bits, _weight_axis(node))
    stored: list[tuple[str, int, str]] = []
    new_nodes = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    replaced: dict[str, Any] = {}
    for weight, (module, bits, axis) in plan.items():
        w = numpy_helper.to_array(inits[weight])
        if w.dtype != np.float32:
            kept[module] = f"weight is {w.dtype}, not float32"
            continue
        found = _codes_and_scales(w, bits, axis)
        if found is None:
            kept[module] = f"weight is not on the {bits}-bit grid (e.g. BatchNorm folded into it)"
            continue
        codes, scale = found
        type_name, _, need = LOWBIT_STORAGE[bits]
        np_type = {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8,
                   "INT16": np.int16}[type_name]
        deq = codes.astype(np.float32) * (scale if scale.ndim == 0 else np.expand_dims(
            scale, tuple(d for d in range(w.ndim) if d != axis)))
        # Equal as float32 values: a -0.0 the fake quantization wrote (round(-0.3) * s) comes
        # back as +0.0, which no sum of products tells apart; every other value bit for bit.
        if not np.array_equal(deq, w):
            kept[module] = f"codes x scales do not reproduce the {bits}-bit weight exactly"
            continue
        q_name, s_name, z_name = f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point"
        replaced[weight] = [
            numpy_helper.from_array(codes.astype(np_type), q_name),
            numpy_helper.from_array(scale.astype(np.float32), s_name),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np_type), z_name),
        ]
        attrs = {} if scale.ndim == 0 else {"axis": axis}
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [weight],
                                               name=f"{weight}_DequantizeLinear", **attrs))
        stored.append((module, bits, type_name))
        opset = max(opset, need)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    if opset > current and replaced:
        try:
            # Convert the float graph first: the converter's adapters know every op it holds.
            model = version_converter.convert_version(model, opset)
            graph = model.graph
        except Exception as exc:  # noqa: BLE001 - keep what the current opset can store
            why = f"opset {current} -> {opset} conversion failed ({type(exc).__name__})"
            for k in reversed(range(len(stored))):
                module, bits, _ = stored[k]
                if LOWBIT_STORAGE[bits][2] > current:
                    kept[module] = why
                    weight = new_nodes[k].output[0]
                    del replaced[weight], new_nodes[k], stored[k]
            opset = current
    report_kept = tuple(sorted(kept.items()))
    if not replaced:
        return blob, LowBitWeights((), report_kept, current)
    keep = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep + [t for ts in replaced.values() for t in ts])
    inputs = [i for i in graph.input if i.name not in replaced]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    _compact_graph(graph)
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(
        list(model.opset_import), ignore_unknown=True))
    onnx.checker.check_model(model)
    return model.SerializeToString(), LowBitWeights(tuple(stored), report_kept, opset)
