"""Discovery and the compiled cost model on their own: the space's costs are the cost model's."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.compression import (
    CompressionSpace,
    compress,
    count_bops,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.costmodel import CostModel
from autocompress.compression.discovery import _discover_groups, _record_layers, _shapes
from autocompress.models import create_model


@pytest.mark.timeout(60)
def test_space_costs_are_the_cost_models_compiled_from_discovery() -> None:
    model = create_model("test_convnet").eval()
    x = torch.randn(1, 3, 16, 16)
    space = CompressionSpace.from_model(
        model, x, knobs=("prune", "w_bits", "a_bits", "rank", "sparsity"), verify=False
    )
    work = copy.deepcopy(model)
    layers = _record_layers(work, x)
    groups, coef, notes = _discover_groups(work, x, layers)
    assert not notes and any(g.prunable for g in groups)
    cost = CostModel(layers, groups, coef, _shapes(work), count_macs(work, x), round_to=1)
    layer_of = {name: i for i, name in enumerate(layers)}

    def predicted(policy):  # the policy as the cost model's rows, without the space
        names, vals = policy._vectors()
        extras = {layer_of[n]: items for n, items in policy._extras().items()}
        entry = cost.positions(names, layer_of)
        return cost.evaluate(entry, vals, True, extras), cost.structure(entry, vals, extras)

    policies = [space.identity(), space.most_compressed(), space.uniform(prune=0.5, rank=0.5, sparsity=0.7)]
    policies += [space.sample(seed) for seed in range(20)]
    for policy in policies:
        costs, structure = predicted(policy)
        assert costs == space.costs(policy) and structure == space.structure(policy)
    assert predicted(space.identity())[0]["macs"] == count_macs(model, x)
    # the compiled model alone predicts the compressed model that is really built
    policy = space.uniform(prune=0.5, w_bits=4, a_bits=8, rank=0.5, sparsity=0.5)
    small = compress(model, policy, space=space)
    costs, _ = predicted(policy)
    assert costs["macs"] == count_macs(small, x) < count_macs(model, x)
    assert costs["params"] == count_params(small)
    assert costs["size_bytes"] == pytest.approx(count_size_bytes(small), rel=1e-12)
    assert costs["bops"] == pytest.approx(count_bops(small, x), rel=1e-12)
    assert costs["bops"] < predicted(space.identity())[0]["bops"]
