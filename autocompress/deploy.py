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


def export_onnx_with(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET) -> tuple[bytes, str]:
    """The model as ONNX bytes with a dynamic batch axis (weights embedded), and the exporter used.

    Uses the TorchScript-based exporter (about 20x faster than the dynamo exporter on small CNNs,
    which matters when a lookup table exports hundreds of single layers; it also keeps module
    scopes in node names, see ``onnx_node_module``) and falls back to the dynamo exporter when the
    graph does not trace. The graph has one input ``input`` and one output ``output``.
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example_input,), buf, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
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
