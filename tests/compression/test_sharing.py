"""The ``share_bits`` knob: k-means weight sharing, its storage (Eq. 10), centroid fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
from _compression_utils import tiny_resnet_space
from torch import nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_bops,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.sharing import eq10_ratio, huffman_bits, kmeans_share, sharing_report
from autocompress.distill import distill
from autocompress.errors import UserInputError
from autocompress.models import create_model

pytestmark = pytest.mark.timeout(240)

KNOBS = ("prune", "a_bits", "rank", "sparsity", "share_bits")


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor, CompressionSpace]:
    return tiny_resnet_space(KNOBS)


def test_kmeans_linear_init_finds_the_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(50, generator=g) * 0.01 + c for c in (-1.0, 0.0, 2.0, 3.0)])
    book, idx = kmeans_share(w, 2)
    assert torch.allclose(book, torch.tensor([-1.0, 0.0, 2.0, 3.0]), atol=0.01)
    assert idx.shape == w.shape and set(idx.tolist()) == {0, 1, 2, 3}
    assert torch.equal(kmeans_share(w, 2)[0], book)  # deterministic


def test_eq10_and_huffman() -> None:
    assert eq10_ratio(1000, 16) == pytest.approx(32000 / (1000 * 4 + 16 * 32))
    assert huffman_bits(torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])) == 4 * 1 + 2 * 2 + 2 * 3
    assert huffman_bits(torch.tensor([5, 5, 5])) == 3


@pytest.mark.parametrize(
    "knobs",
    [
        {"share_bits": 4},
        {"share_bits": 1},
        {"share_bits": 8, "a_bits": 8},
        {"share_bits": 4, "sparsity": 0.9},
        {"share_bits": 2, "sparsity": 0.7, "prune": 0.5, "rank": 0.3},
    ],
)
def test_cost_model_equals_the_counted_model(resnet, knobs) -> None:  # type: ignore[no-untyped-def]
    model, x, space = resnet
    policy = space.uniform(**knobs)
    small = compress(model, policy, space=space)
    assert space.costs(policy)["size_bytes"] == count_size_bytes(small)
    assert space.costs(policy)["params"] == count_params(small)
    assert space.macs(policy) == count_macs(small, x)
    # a shared layer multiplies by float32 codebook values: 32-bit weights, whatever share_bits
    assert space.bops(policy) == pytest.approx(count_bops(small, x), rel=1e-12)
    assert space.bops(policy) == space.bops(space.uniform(a_bits=knobs.get("a_bits", 32),
                                                          prune=knobs.get("prune", 0.0),
                                                          rank=knobs.get("rank", 1.0)))
    k = 2 ** knobs["share_bits"]
    for m in small.modules():
        if hasattr(m, "weight_codebook"):
            kept = m.weight[m.weight_mask] if hasattr(m, "weight_mask") else m.weight
            assert len(torch.unique(kept)) <= k


def test_report_gives_eq10_next_to_the_bytes(resnet) -> None:  # type: ignore[no-untyped-def]
    model, _, space = resnet
    small = compress(model, space.uniform(share_bits=4), space=space)
    rows = sharing_report(small)
    assert len(rows) == len(space.names)
    for row in rows:
        n, k = int(row["n"]), int(row["k"])
        assert k == 16 and row["eq10"] == pytest.approx(32 * n / (n * 4 + 16 * 32))
        # dense, unsparsified: the measured bytes are exactly Eq. 10's denominator
        assert row["bytes"] == pytest.approx((n * 4 + 16 * 32) / 8)
        assert row["dense_bytes"] / row["bytes"] == pytest.approx(row["eq10"])
        assert row["huffman_bytes"] <= row["bytes"]
    assert sum(r["bytes"] for r in rows) <= count_size_bytes(small)


def test_identity_reproduces_outputs_exactly(resnet) -> None:  # type: ignore[no-untyped-def]
    model, x, space = resnet
    small = compress(model, CompressionPolicy({n: LayerAction(share_bits=32) for n in space.names}), space=space)
    assert torch.equal(small(x), model(x))


def test_share_and_weight_bits_are_exclusive() -> None:
    model = create_model("test_mlp")
    with pytest.raises(UserInputError, match="share_bits and w_bits"):
        CompressionSpace.from_model(model, knobs=("w_bits", "share_bits"))
    with pytest.raises(UserInputError, match=r"share_bits=7 is out of range"):
        LayerAction(share_bits=7)


def test_fine_tuning_sums_gradients_per_cluster(resnet) -> None:  # type: ignore[no-untyped-def]
    """Plain SGD: each centroid moves by -lr x the sum of its cluster's gradients; weights stay shared."""
    model, _, space = resnet
    small = compress(model, space.uniform(share_bits=3, sparsity=0.5), space=space)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    layer = small.get_submodule(space.names[1])
    book0 = layer.weight_codebook.clone()
    idx = layer.weight_index.long()
    # the gradient of this batch, taken as distill will (train mode, plain cross-entropy)
    probe = __import__("copy").deepcopy(small).train()
    torch.nn.functional.cross_entropy(probe(x), y).backward()
    grad = probe.get_submodule(space.names[1]).weight.grad * layer.weight_mask
    want = book0 - 0.1 * torch.zeros_like(book0).index_add_(0, idx.flatten(), grad.flatten())
    distill(small, None, [(x, y)], torch.optim.SGD(small.parameters(), lr=0.1), alpha=0.0)
    assert torch.allclose(layer.weight_codebook, want, atol=1e-6)
    assert not torch.allclose(layer.weight_codebook, book0)
    assert torch.equal(layer.weight, layer.weight_codebook[idx] * layer.weight_mask)
    assert math.isfinite(count_size_bytes(small))
