"""Shared fixtures: tiny trained problems and a cheap scoring hook for the env tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autocompress.compression import CompressionPolicy
from autocompress.evaluators import EvaluatorConfig
from autocompress.problem import Problem

TINY_EVAL = EvaluatorConfig(
    latency="none", val_samples=256, low_fidelity_val_samples=64, recalib_batches=2, recalib_batch_size=32,
)


@pytest.fixture(scope="session")
def convnet_problem() -> Problem:
    """test_convnet (residual, concat, depthwise) trained briefly on digits."""
    return Problem.build("test_convnet", data="digits", train_epochs=2, evaluator=TINY_EVAL)


@pytest.fixture(scope="session")
def mlp_problem() -> Problem:
    """test_mlp trained briefly on digits."""
    return Problem.build("test_mlp", data="digits", train_epochs=2, evaluator=TINY_EVAL)


def _cheap_eval(space: object) -> Callable[[CompressionPolicy], dict[str, float]]:
    def fn(policy: CompressionPolicy) -> dict[str, float]:
        costs = space.costs(policy)  # type: ignore[attr-defined]
        base = space.costs(CompressionPolicy({}))  # type: ignore[attr-defined]
        return {**costs, "acc": 0.5 + 0.5 * costs["macs"] / base["macs"]}

    return fn


@pytest.fixture(scope="session")
def cheap_eval() -> Callable[[object], Callable[[CompressionPolicy], dict[str, float]]]:
    """Factory of a scoring hook without a model: predicted costs plus a synthetic accuracy."""
    return _cheap_eval
