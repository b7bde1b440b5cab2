"""Evaluators: a fast, trustworthy accuracy proxy, measured and predicted latency, costs, and a cache."""

from __future__ import annotations

from autocompress.evaluators.accuracy import kd_finetune, kd_loss, recalibrate_bn, topk_correct
from autocompress.evaluators.base import (
    FIDELITIES,
    METRICS,
    BaseEvaluator,
    Direction,
    EvalResult,
    create_evaluator,
    evaluator_class,
    list_evaluators,
    register_evaluator,
)
from autocompress.evaluators.cache import EvalCache, cache_key, model_fingerprint
from autocompress.evaluators.compression_evaluator import CompressionEvaluator, structural_policy
from autocompress.evaluators.config import LATENCY_BACKENDS, LATENCY_MODES, EvaluatorConfig
from autocompress.evaluators.latency import LatencyStats, export_onnx, measure_latency
from autocompress.evaluators.lut import LatencyLUT
from autocompress.evaluators.trust import ProxyTrust, proxy_trust

__all__ = [
    "FIDELITIES",
    "LATENCY_BACKENDS",
    "LATENCY_MODES",
    "METRICS",
    "BaseEvaluator",
    "CompressionEvaluator",
    "Direction",
    "EvalCache",
    "EvalResult",
    "EvaluatorConfig",
    "LatencyLUT",
    "LatencyStats",
    "ProxyTrust",
    "cache_key",
    "create_evaluator",
    "evaluator_class",
    "export_onnx",
    "kd_finetune",
    "kd_loss",
    "list_evaluators",
    "measure_latency",
    "model_fingerprint",
    "proxy_trust",
    "recalibrate_bn",
    "register_evaluator",
    "structural_policy",
    "topk_correct",
]
