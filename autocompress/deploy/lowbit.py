"""Low-bit, sparse and shared weight storage of an ONNX graph (``store_lowbit_weights``).

The exported file holds the weights of quantized, k-means shared and sparse layers in about the
bytes the search counts: each such weight initializer is replaced by its compact storage
(``_lowbit_encode``) and the nodes rebuilding it, and the graph's names are shortened.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.deploy._lowbit_encode import (
    LOWBIT_STORAGE,
    SHARED_INDEX_STORAGE,
    SPARSE_CONSTANTS,
    _encode,
    _encode_directions,
    _Encoded,
)
from autocompress.deploy.onnx_export import ONNX_OPSET, onnx_node_module

__all__ = [
    "LOWBIT_LAYER_OPS",
    "LOWBIT_RNN_OPS",
    "LOWBIT_STORAGE",
    "SHARED_INDEX_STORAGE",
    "SPARSE_CONSTANTS",
    "LowBitWeights",
    "store_lowbit_weights",
]

#: Layer types whose weight initializer ``store_lowbit_weights`` replaces.
LOWBIT_LAYER_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

#: Recurrent layer types whose ``W`` and ``R`` initializers ``store_lowbit_weights`` replaces.
LOWBIT_RNN_OPS: tuple[str, ...] = ("LSTM", "GRU", "RNN")


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
