"""ONNX Runtime: static int8 quantization of an ONNX graph, and the CPU sessions that run files.

``onnx`` and ``onnxruntime`` are imported inside the functions (they cost import time, and a
search that measures no ONNX latency never loads them).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from autocompress.deploy.onnx_export import onnx_node_module, within_modules

#: Layer types whose inputs and weights the ``layers`` int8 scheme quantizes.
INT8_LAYER_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")

#: Schemes of ``quantize_int8``.
INT8_SCHEMES: tuple[str, ...] = ("full", "layers")


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


def ort_session(blob: bytes, threads: int, *, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation.

    ORT fuses a ``DequantizeLinear`` weight feeding a ``MatMul`` (a low-bit file's linear layer
    over a sequence, see ``store_lowbit_weights``) into ``MatMulNBits``, which by default
    quantizes its float input to int8 (accuracy level 4): 4e-4 off on ``test_lstm``'s embedding.
    Level 1 computes in float32, as the model does; files without such a pair are unaffected.

    ``profile_prefix``: profile every node's run (``end_profiling()`` writes the JSON trace to a
    file starting with it), the session otherwise the one that is timed.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    so.log_severity_level = 3
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
