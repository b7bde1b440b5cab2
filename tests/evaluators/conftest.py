"""Shared fixtures: one really trained tiny problem (ResNet-8 width 8 on digits) per session."""

from __future__ import annotations

import pytest

from autocompress.evaluators import EvaluatorConfig
from autocompress.evaluators.latency import torch_threads
from autocompress.problem import Problem


@pytest.fixture(scope="session")
def tiny_problem(_isolated_cache: object) -> Problem:
    """test_resnet trained 5 epochs on digits (about 96% top-1), latency off, default cache."""
    with torch_threads(1):
        return Problem.build("test_resnet", data="digits", train_epochs=5, seed=0,
                             evaluator=EvaluatorConfig(latency="none"), progress=False)
