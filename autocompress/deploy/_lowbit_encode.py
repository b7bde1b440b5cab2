"""The compact storage of one float32 weight in an ONNX graph: integer codes and scales, shared
indices and a codebook, or a sparse layout, with the nodes that rebuild the float32 weight.

``store_lowbit_weights`` (``lowbit``) finds the weights of a graph and swaps in what is built here;
every rebuilt weight is checked to equal the original as float32 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.deploy.onnx_export import ONNX_OPSET

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


def _np_type(type_name: str) -> Any:
    import ml_dtypes

    return {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8, "INT16": np.int16,
            "UINT2": ml_dtypes.uint2, "UINT4": ml_dtypes.uint4, "UINT8": np.uint8,
            "UINT16": np.uint16, "FLOAT": np.float32}[type_name]


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
