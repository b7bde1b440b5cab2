"""The ``sparsity`` knob: magnitude masks, bitmap storage, the cost model, fine-tuning with masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _compression_utils import tiny_resnet_space
from torch import nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.knobs import weight_storage_bytes
from autocompress.compression.sparsity import MAX_SPARSITY, magnitude_mask, sparse_bytes
from autocompress.distill import distill
from autocompress.errors import UserInputError
from autocompress.models import create_model

pytestmark = pytest.mark.timeout(240)

KNOBS = ("prune", "w_bits", "a_bits", "rank", "sparsity")


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor, CompressionSpace]:
    return tiny_resnet_space(KNOBS)


def test_sparse_formula() -> None:
    """Values at the weight's bits plus a one-bit-per-entry bitmap (whole bytes) and the scales."""
    # 10 nonzeros of a 4 x 72 float weight: 10 x 32 bits + 288 bits of bitmap
    assert sparse_bytes(10, 288, 32, 0) == 40 + 36
    # at 4 bits with 4 per-row scales; a 289-entry bitmap takes 37 bytes
    assert sparse_bytes(10, 289, 4, 4) == 5 + 37 + 16
    # 70 of 288 entries at 4 bits: 35 + 36 bytes (+ scales), less than dense (144)
    assert weight_storage_bytes(288, 70, 4, 4, 4) == 35 + 36 + 16
    # float at sparsity 1/32 and less: the bitmap does not pay
    assert weight_storage_bytes(320, 315, 4, 32, 0) == 4 * 320


def test_magnitude_mask_zeroes_the_smallest_fraction() -> None:
    w = torch.randn(16, 9, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(w, 0.75)
    assert int((~mask).sum()) == math.floor(0.75 * w.numel())
    assert w[~mask].abs().max() <= w[mask].abs().min()


@pytest.mark.parametrize(
    "knobs",
    [
        {"sparsity": 0.5},
        {"sparsity": MAX_SPARSITY},
        {"sparsity": 0.9, "w_bits": 4},
        {"sparsity": 0.8, "w_bits": 1},
        {"sparsity": 0.7, "prune": 0.5, "rank": 0.3},
        {"sparsity": 0.8, "prune": 0.3, "rank": 0.2, "w_bits": 8, "a_bits": 8},
        {"sparsity": 0.02},  # bitmap larger than dense: stored dense
    ],
)
def test_cost_model_equals_the_counted_model(resnet, knobs) -> None:  # type: ignore[no-untyped-def]
    model, x, space = resnet
    policy = space.uniform(**knobs)
    small = compress(model, policy, space=space)
    costs = space.costs(policy)
    assert costs["params"] == count_params(small)
    assert costs["size_bytes"] == count_size_bytes(small)
    assert space.macs(policy) == count_macs(small, x)
    zeroed = sum(int((~m.weight_mask).sum()) for m in small.modules() if hasattr(m, "weight_mask"))
    assert zeroed > 0
    for m in small.modules():
        if hasattr(m, "weight_mask"):
            assert bool((m.weight[~m.weight_mask] == 0).all())  # quantization kept the zeros


def test_mixed_per_layer_sparsity_on_an_mlp() -> None:
    model = create_model("test_mlp").eval()
    space = CompressionSpace.from_model(model, knobs=("prune", "sparsity", "w_bits"))
    names = space.names
    policy = CompressionPolicy({names[0]: LayerAction(sparsity=0.6, w_bits=8),
                                names[-1]: LayerAction(sparsity=0.3)})
    small = compress(model, policy, space=space)
    assert space.costs(policy)["params"] == count_params(small)
    assert space.costs(policy)["size_bytes"] == count_size_bytes(small)
    # sparsity lowers params and size, never MACs
    base = space.costs(space.identity())
    assert space.costs(policy)["size_bytes"] < base["size_bytes"]
    assert space.costs(policy)["macs"] == base["macs"]


def test_identity_reproduces_outputs_exactly(resnet) -> None:  # type: ignore[no-untyped-def]
    model, x, space = resnet
    policy = CompressionPolicy({n: LayerAction(sparsity=0.0) for n in space.names})
    small = compress(model, policy, space=space)
    assert torch.equal(small(x), model(x))
    assert not any(hasattr(m, "weight_mask") for m in small.modules())
    assert space.costs(policy) == space.costs(space.identity())


def test_cost_is_monotone_in_sparsity(resnet) -> None:  # type: ignore[no-untyped-def]
    _, _, space = resnet
    sizes = [space.size_bytes(space.uniform(sparsity=s)) for s in (0.0, 0.2, 0.4, 0.6, 0.8, MAX_SPARSITY)]
    assert all(b <= a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-1] < 0.25 * sizes[0]


def test_bad_values_are_refused(resnet) -> None:  # type: ignore[no-untyped-def]
    _, _, space = resnet
    with pytest.raises(UserInputError, match=r"sparsity=0\.99 is out of range; allowed: 0 <= sparsity <= 0\.95"):
        LayerAction(sparsity=0.99)
    with pytest.raises(UserInputError, match="not a number"):
        LayerAction(sparsity="half")  # type: ignore[arg-type]
    plain = CompressionSpace.from_model(create_model("test_mlp"))
    with pytest.raises(UserInputError, match="no 'sparsity' knob"):
        plain.costs(CompressionPolicy({plain.names[0]: LayerAction(sparsity=0.5)}))


@pytest.mark.parametrize("w_bits", [32, 4])
def test_masks_survive_fine_tuning(resnet, w_bits: int) -> None:  # type: ignore[no-untyped-def]
    """SGD with momentum and weight decay (the fine-tune's optimizer) keeps every masked weight 0."""
    from autocompress.report.finetune import snap_quantized_weights_

    model, x, space = resnet
    policy = space.uniform(sparsity=0.6, w_bits=w_bits)
    small = compress(model, policy, space=space)
    before = {n: m.weight.detach().clone() for n, m in small.named_modules() if hasattr(m, "weight_mask")}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    distill(small, model, batches, opt)
    snap_quantized_weights_(small)
    for name, m in small.named_modules():
        if name in before:
            assert bool((m.weight[~m.weight_mask] == 0).all()), name
            assert not torch.equal(m.weight, before[name]), name  # the kept weights did train
    assert count_size_bytes(small) == space.size_bytes(policy)
    assert F.cross_entropy(small(batches[0][0]), batches[0][1]).isfinite()
