"""Deployment formats of a model: ONNX export, ONNX Runtime int8 quantization and sessions,
TorchScript and pickled modules, and the low-bit / sparse / shared weight storage of ONNX files.

One place for the conversions that both latency measurement (``evaluators.latency``) and
``export`` (``report.export``) run, so a measured model and an exported file are built the same
way. It sits below ``evaluators`` and imports nothing of the package outside itself: ``onnx`` and
``onnxruntime`` are imported inside the functions that need them (they cost import time and a
search that measures no ONNX latency never loads them).

Modules: ``onnx_export`` (the exporters, ``proj_size`` LSTMs unrolled, node scopes),
``torch_export`` (TorchScript, pickled module), ``int8`` (static int8 quantization, ORT sessions),
``lowbit`` (weights stored in their bits; one weight's encoding in ``_lowbit_encode``).
"""

from __future__ import annotations

from autocompress.deploy.int8 import INT8_LAYER_OPS, INT8_SCHEMES, ort_session, quantize_int8
from autocompress.deploy.lowbit import (
    LOWBIT_LAYER_OPS,
    LOWBIT_RNN_OPS,
    LOWBIT_STORAGE,
    SHARED_INDEX_STORAGE,
    SPARSE_CONSTANTS,
    LowBitWeights,
    store_lowbit_weights,
)
from autocompress.deploy.onnx_export import (
    ONNX_OPSET,
    export_onnx,
    export_onnx_with,
    exportable,
    onnx_node_module,
    within_modules,
)
from autocompress.deploy.torch_export import pt_bytes, torchscript_bytes

__all__ = [
    "INT8_LAYER_OPS",
    "INT8_SCHEMES",
    "LOWBIT_LAYER_OPS",
    "LOWBIT_RNN_OPS",
    "LOWBIT_STORAGE",
    "ONNX_OPSET",
    "SHARED_INDEX_STORAGE",
    "SPARSE_CONSTANTS",
    "LowBitWeights",
    "export_onnx",
    "export_onnx_with",
    "exportable",
    "onnx_node_module",
    "ort_session",
    "pt_bytes",
    "quantize_int8",
    "store_lowbit_weights",
    "torchscript_bytes",
    "within_modules",
]
