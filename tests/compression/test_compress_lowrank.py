"""Low-rank factorisation: exact at full rank, MAC savings exactly as predicted, knob only where it pays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    LowRank,
    compress,
    count_macs,
)
from autocompress.compression.lowrank import can_factorise, factorise, factorised_rank
from autocompress.models import create_model


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(40, 24),
        nn.Linear(24, 40),
        nn.Conv2d(6, 10, 3, padding=1),
        nn.Conv2d(10, 6, 3, stride=2),
        nn.Conv1d(4, 8, 5),
    ],
    ids=["linear-wide", "linear-tall", "conv3x3", "conv3x3-s2", "conv1d"],
)
def test_full_rank_svd_reproduces_the_layer(layer: nn.Module) -> None:
    torch.manual_seed(0)
    m, n = layer.weight.shape[0], layer.weight[0].numel()
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, layer.in_features)
    elif isinstance(layer, nn.Conv1d):
        x = torch.randn(3, layer.in_channels, 20)
    else:
        x = torch.randn(3, layer.in_channels, 9, 9)
    lr = factorise(layer, min(m, n))
    assert isinstance(lr, LowRank) and lr.rank == min(m, n)
    with torch.no_grad():
        assert (lr(x) - layer(x)).abs().max() < 1e-4
    assert lr[0].bias is None and (lr[1].bias is not None) == (layer.bias is not None)


@pytest.mark.timeout(60)
def test_truncation_is_the_best_rank_r_approximation() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(30, 20, bias=False)
    lr = factorise(layer, 5)
    approx = lr[1].weight @ lr[0].weight
    u, s, vh = torch.linalg.svd(layer.weight.detach().double())
    best = (u[:, :5] * s[:5]) @ vh[:5]
    assert torch.allclose(approx.double(), best, atol=1e-5)


@pytest.mark.timeout(60)
def test_factorised_rank_rule() -> None:
    # r = max(1, round(rank * min(m, n))), only if r (m + n) < m n  (survey Eq. 14)
    assert factorised_rank(64, 144, 0.25) == 16
    assert factorised_rank(64, 144, 1.0) is None
    assert factorised_rank(64, 144, 0.7) is None  # 45 * 208 > 64 * 144
    assert factorised_rank(10, 64, 0.01) == 1
    assert can_factorise(nn.Linear(3, 3)) and not can_factorise(nn.Linear(2, 2))
    assert not can_factorise(nn.Conv2d(8, 8, 3, groups=8))


@pytest.mark.timeout(120)
def test_rank_one_is_identity_and_lower_rank_saves_the_predicted_macs() -> None:
    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model, verify=False)
    x = space.example_input
    same = compress(model, CompressionPolicy({"branch_b.0": LayerAction(rank=1.0)}), space=space)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    policy = CompressionPolicy({"branch_b.0": LayerAction(rank=0.25)})
    small = compress(model, policy, space=space)
    # branch_b.0: 16 -> 12 channels, 3x3, 16x16 output: m=12, n=144, r=3
    layer = small.get_submodule("branch_b.0")
    assert isinstance(layer, LowRank) and layer.rank == 3
    saved = 16 * 16 * (12 * 144 - 3 * (12 + 144))
    assert space.base_macs - count_macs(small, x) == saved
    assert space.base_macs - space.macs(policy) == saved
    with torch.no_grad():
        rel = (small(x) - model(x)).norm() / model(x).norm()
    assert 0 < rel < 1  # an approximation, not garbage


@pytest.mark.timeout(60)
def test_rank_knob_only_where_it_can_save_macs() -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 2)
    )
    space = CompressionSpace.from_model(model, torch.randn(1, 1, 4, 4), verify=False)
    assert "rank" in space["1"].knobs and "rank" in space["3"].knobs  # 8*2 > 8+2
    assert "rank" not in space["5"].knobs  # 2*2 == 2+2: no rank can save
    assert any("no rank saves MACs" in n for n in space["5"].notes)
