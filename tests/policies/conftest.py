"""Shared fixtures for the agent tests: tiny compression spaces and cheap scoring hooks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from autocompress.compression import CompressionPolicy, CompressionSpace
from autocompress.models import create_model, default_input_shape


def _space(name: str, knobs: tuple[str, ...]) -> CompressionSpace:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, *default_input_shape(name, model))
    return CompressionSpace.from_model(model, x, knobs=knobs)


@pytest.fixture(scope="session")
def convnet_space() -> CompressionSpace:
    """test_convnet's space with every knob (8 points)."""
    return _space("test_convnet", ("prune", "w_bits", "a_bits", "rank"))


@pytest.fixture(scope="session")
def convnet_prune_space() -> CompressionSpace:
    """test_convnet's space with the prune knob only (3 points)."""
    return _space("test_convnet", ("prune",))


@pytest.fixture(scope="session")
def cost_eval() -> Callable[[CompressionSpace], Callable[[CompressionPolicy], dict[str, float]]]:
    """Factory: predicted costs plus a synthetic accuracy that falls with compression."""

    def make(space: CompressionSpace) -> Callable[[CompressionPolicy], dict[str, float]]:
        base = space.costs(space.identity())

        def fn(policy: CompressionPolicy) -> dict[str, float]:
            c = space.costs(policy)
            return {**c, "acc": 0.5 + 0.25 * c["macs"] / base["macs"] + 0.25 * c["size_bytes"] / base["size_bytes"]}

        return fn

    return make


@pytest.fixture(scope="session")
def toy_eval() -> Callable[[CompressionSpace], Callable[[CompressionPolicy], dict[str, float]]]:
    """Factory: a synthetic accuracy with a known structure, ``1 - sum_i s_i * prune_i``.

    The first point (most MACs) is the most sensitive, so the best policies under a MACs budget
    are not uniform and an agent has something to learn.
    """

    def make(space: CompressionSpace) -> Callable[[CompressionPolicy], dict[str, float]]:
        names = [p.name for p in space.decision_points]
        sens = np.linspace(1.0, 0.05, len(names))

        def fn(policy: CompressionPolicy) -> dict[str, float]:
            return {"acc": 1.0 - float(sum(s * policy.get(n).prune for s, n in zip(sens, names, strict=True)))}

        return fn

    return make
