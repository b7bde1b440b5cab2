"""The broad sweep: random policies on every built-in model and every torchvision family.

20 policies on the tiny models and families; 8 on the full-size built-ins, whose layers are the same
kinds at larger widths (each of their policies costs ~10x a tiny one's, and the suite must stay short).

The identity policy must reproduce the model's outputs exactly. Each random policy is compressed
for real; the compressed model must run with the right output shape, and the MACs / parameters /
storage counted on it must equal the space's prediction (the issue asks for MACs within 1%; the
cost model is exact, so parameters and bytes are checked exactly).
"""

from __future__ import annotations

import pytest
import torch
from _compression_utils import TINY_FAMILIES
from torch import nn

from autocompress.compression import (
    CompressionSpace,
    compress,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.models import create_model, list_models

N_POLICIES = 20
N_POLICIES_FULL_SIZE = 8


def _check(model: nn.Module, x: torch.Tensor, n_policies: int, seed0: int = 0) -> CompressionSpace:
    model.eval()
    space = CompressionSpace.from_model(model, x)
    with torch.no_grad():
        reference = model(x)
        want_shape = tuple(reference.shape)
        assert torch.equal(compress(model, space.identity(), space=space).eval()(x), reference)
    for seed in range(seed0, seed0 + n_policies):
        policy = space.sample(seed)
        small = compress(model, policy, space=space)
        small.eval()
        with torch.no_grad():
            assert tuple(small(x).shape) == want_shape, seed
        counted, predicted = count_macs(small, x), space.macs(policy)
        assert abs(counted - predicted) <= 0.01 * counted, (seed, counted, predicted)
        assert count_params(small) == space.params(policy), seed
        assert count_size_bytes(small) == pytest.approx(space.size_bytes(policy), rel=1e-9), seed
        assert space.macs(policy) < space.base_macs
    return space


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list_models())
def test_random_policies_on_built_in_models(name: str) -> None:
    model = create_model(name)
    n = N_POLICIES if name.startswith("test_") else N_POLICIES_FULL_SIZE
    space = _check(model, torch.randn(1, *model.input_shape), n)
    assert any("prune" in p.knobs for p in space.decision_points)  # RNN hidden sizes too


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_random_policies_on_torchvision_families(family: str) -> None:
    torch.manual_seed(0)
    factory, shape = TINY_FAMILIES[family]
    space = _check(factory(), torch.randn(1, *shape), N_POLICIES)
    prunable = sum(g.prunable for g in space.groups)
    assert prunable >= 1, space.describe()
    if family == "vit":  # attention embedding dims are left out, and say so
        assert any("attention" in (g.reason or "") for g in space.groups)
    if family == "shufflenet_v2":  # torch-pruning cannot follow the channel shuffle everywhere
        assert any("torch-pruning failed" in (g.reason or "") for g in space.groups)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "name",
    [
        "tv:resnet18",
        "tv:mobilenet_v3_small",
        "tv:squeezenet1_1",
        "tv:shufflenet_v2_x0_5",
        "tv:efficientnet_b0",
    ],
)
def test_random_policies_on_registry_torchvision_models(name: str) -> None:
    """Real torchvision models through the registry (random init, 32x32), fewer policies."""
    model = create_model(name)
    space = _check(model, torch.randn(1, 3, 32, 32), 3)
    if name == "tv:shufflenet_v2_x0_5":  # its graph cannot be traced by torch-pruning at all
        assert space.notes and "no layer has a prune knob" in space.notes[0]
        assert "prune" not in "".join(",".join(p.knobs) for p in space.decision_points)
