"""The ``pow2_bits`` knob: INQ's powers-of-two grid, its storage, straight-through fine-tuning."""

from __future__ import annotations

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
    count_bops,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.quantize import pow2_levels, pow2_weight, requantize
from autocompress.errors import UserInputError
from autocompress.models import create_model

pytestmark = pytest.mark.timeout(240)

KNOBS = ("prune", "a_bits", "rank", "sparsity", "pow2_bits")


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor, CompressionSpace]:
    return tiny_resnet_space(KNOBS)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_values_lie_on_inqs_grid(bits: int) -> None:
    """Every value is 0 or +-2^n with n2 <= n <= n1, n1 = floor(log2(4 max|w| / 3)),
    n2 = n1 + 1 - 2^(b-2); each weight takes the nearest level (ties to the larger)."""
    w = torch.randn(64, 3, 3, 3, generator=torch.Generator().manual_seed(bits)) * 0.05
    q = pow2_weight(w, bits)
    n1 = int(torch.floor(torch.log2(4 * w.abs().max().double() / 3)))
    n2 = n1 + 1 - 2 ** (bits - 2)
    grid = torch.tensor([0.0] + [2.0**n for n in range(n2, n1 + 1)], dtype=torch.float64)
    assert torch.equal(pow2_levels(w, bits), grid)
    assert len(torch.unique(q)) <= 2 ** (bits - 1) + 1
    mag = q.abs().double()
    assert bool(torch.isin(mag, grid).all()) and bool((torch.sign(q) * torch.sign(w) >= 0).all())
    assert float(q.abs().max()) == 2.0**n1  # the largest weight is the top level
    rev = grid.flip(0)  # argmin takes the first minimum: over the reversed grid, ties go up
    nearest = rev[(w.abs().double().flatten()[:, None] - rev[None, :]).abs().argmin(1)]
    assert torch.equal(mag.flatten(), nearest)


def test_identity_like_cases() -> None:
    """Idempotent; powers of two inside the range stay; zeros stay; the 32-bit value is no-op."""
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    q = pow2_weight(w, 5)
    assert torch.equal(pow2_weight(q, 5), q)
    exact = torch.tensor([[0.5, -0.25, 0.0, 2.0**-8], [-0.5, 0.125, 2.0**-5, -(2.0**-7)]])
    assert torch.equal(pow2_weight(exact, 5), exact)  # n1 = -1, n2 = -8
    # 2 bits: {0, +-2^-1}; 0.25 is the midpoint, which rounds up
    assert torch.equal(pow2_weight(exact, 2), torch.tensor([[0.5, -0.5, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]]))
    assert torch.equal(pow2_weight(torch.zeros(3, 3), 4), torch.zeros(3, 3))
    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model, knobs=KNOBS)
    x = torch.randn(2, *space.example_input.shape[1:])
    small = compress(model, space.uniform(pow2_bits=32), space=space)
    assert torch.equal(small(x), model(x))


@pytest.mark.parametrize(
    "knobs",
    [
        {"pow2_bits": 5},
        {"pow2_bits": 2},
        {"pow2_bits": 4, "a_bits": 8},
        {"pow2_bits": 3, "sparsity": 0.9},
        {"pow2_bits": 6, "sparsity": 0.6, "prune": 0.5, "rank": 0.3, "a_bits": 8},
    ],
)
def test_cost_model_equals_the_counted_model(resnet, knobs) -> None:  # type: ignore[no-untyped-def]
    model, x, space = resnet
    policy = space.uniform(**knobs)
    small = compress(model, policy, space=space, calib=x)
    costs = space.costs(policy)
    assert costs["size_bytes"] == count_size_bytes(small)
    assert costs["params"] == count_params(small)
    assert space.macs(policy) == count_macs(small, x)
    assert costs["bops"] == pytest.approx(count_bops(small, x), rel=1e-12)
    pow2 = [m for m in small.modules() if getattr(m, "w_grid", "") == "pow2"]
    assert pow2 and all(m.w_bits == knobs["pow2_bits"] for m in pow2)
    for m in pow2:
        assert torch.equal(m.weight, pow2_weight(m.weight, m.w_bits))
        if hasattr(m, "weight_mask"):
            assert bool((m.weight[~m.weight_mask] == 0).all())
    # b bits per weight and a table of 2^(b-1) + 1 float32 values, smaller than float32
    assert costs["size_bytes"] < space.size_bytes(space.identity())


def test_a_pow2_layer_multiplies_at_its_bits(resnet) -> None:  # type: ignore[no-untyped-def]
    """BOPs count a b-bit powers-of-two weight as a b-bit operand (a sign and an exponent index:
    a shift), not as float32: one layer at pow2_bits = 4 and a_bits = 8 lowers the model's BOPs
    by exactly its MACs x (32 x 8 - 4 x 8), in the cost model and counted on the module."""
    model, x, space = resnet
    point = next(p for p in space.decision_points if "pow2_bits" in p.knobs)
    a8 = CompressionPolicy({point.name: LayerAction(a_bits=8)})
    p4 = CompressionPolicy({point.name: LayerAction(a_bits=8, pow2_bits=4)})
    module = model.get_submodule(point.name)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    layer_macs = count_macs(module, seen[0])  # per sample, as the model's
    counted = {}
    for policy in (a8, p4):
        small = compress(model, policy, space=space, calib=x)
        counted[policy] = count_bops(small, x)
        assert space.bops(policy) == pytest.approx(counted[policy], rel=1e-12)
    assert space.bops(p4) < space.bops(a8) < space.bops(space.identity())
    assert counted[a8] - counted[p4] == pytest.approx(layer_macs * (32 * 8 - 4 * 8), rel=1e-9)


def test_pow2_excludes_the_other_weight_grids() -> None:
    model = create_model("test_mlp")
    for other in ("w_bits", "share_bits"):
        with pytest.raises(UserInputError, match=f"pow2_bits and {other}"):
            CompressionSpace.from_model(model, knobs=("prune", other, "pow2_bits"))
    space = CompressionSpace.from_model(model, knobs=("prune", "pow2_bits"))
    with pytest.raises(UserInputError, match="pow2_bits=7"):
        space.uniform(pow2_bits=7)


def test_training_stays_on_the_grid_straight_through() -> None:
    """In training mode the forward pass uses the projected weight and gradients reach the
    latent one; re-projection after a step keeps the layer on its grid."""
    model = create_model("test_mlp").eval()
    space = CompressionSpace.from_model(model, knobs=("prune", "pow2_bits"))
    small = compress(model, space.uniform(pow2_bits=4), space=space).train()
    layer = next(m for m in small.modules() if getattr(m, "w_grid", "") == "pow2")
    x = torch.randn(4, layer.in_features)
    with torch.no_grad():
        layer.weight.add_(0.003 * torch.randn_like(layer.weight))  # off the grid, as after a step
    out = layer(x)
    assert torch.allclose(out, F.linear(x, pow2_weight(layer.weight, 4), layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and bool(layer.weight.grad.abs().sum() > 0)
    q = requantize(layer, layer.weight)
    assert torch.equal(q, pow2_weight(layer.weight, 4))
