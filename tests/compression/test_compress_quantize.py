"""Fake quantization: accuracy at 8 / 2 bits on a trained resnet20, ternary/binary/per-channel grids."""

from __future__ import annotations

import pytest
import torch
from _compression_utils import TINY_FAMILIES, accuracy
from torch import nn

from autocompress.compression import (
    ActQuant,
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_size_bytes,
)
from autocompress.compression.quantize import quantize_weight
from autocompress.models import create_model


def _quantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach()
        for n, m in model.named_modules()
        if hasattr(m, "w_bits") and hasattr(m, "weight")
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_8_bits_keeps_top1_within_a_point_and_2_bits_degrades(trained_resnet20, digits) -> None:
    model = trained_resnet20
    x_tr, _, x_te, y_te = digits
    base = accuracy(model, x_te, y_te)
    assert base > 90.0  # the fixture really trained
    space = CompressionSpace.from_model(model, x_tr[:1])
    calib = [x_tr[i : i + 128] for i in range(0, 512, 128)]
    q8 = compress(model, space.uniform(w_bits=8, a_bits=8), space=space, calib=calib)
    q2 = compress(model, space.uniform(w_bits=2, a_bits=2), space=space, calib=calib)
    acc8, acc2 = accuracy(q8, x_te, y_te), accuracy(q2, x_te, y_te)
    assert abs(acc8 - base) < 1.0, (base, acc8)
    assert acc2 < base - 10.0, (base, acc2)
    assert len(_quantized_weights(q8)) == len(space.decision_points)
    # 8-bit weights really are on a per-channel grid of at most 255 levels
    w = q8.layer2.get_submodule("1").conv1.weight.detach()
    assert max(len(torch.unique(row)) for row in w.flatten(1)) <= 255
    # storage at the real bit-widths, as predicted
    assert count_size_bytes(q8) == space.size_bytes(space.uniform(w_bits=8, a_bits=8))
    assert count_size_bytes(q8) < 0.3 * count_size_bytes(model)


@pytest.mark.timeout(120)
def test_ternary_has_exactly_three_values_per_layer_and_binary_two() -> None:
    """2-bit weights are TWN ternary per layer: exactly {-a, 0, +a}; 1-bit: exactly {-a, +a}."""
    model = create_model("test_resnet").eval()
    space = CompressionSpace.from_model(model, verify=False)
    for bits, n_values in ((2, 3), (1, 2)):
        small = compress(model, space.uniform(w_bits=bits), space=space)
        weights = _quantized_weights(small)
        assert len(weights) == len(space.decision_points)
        for name, w in weights.items():
            values = torch.unique(w)
            assert len(values) == n_values, (name, values)
            assert torch.equal(values, -values.flip(0)), (name, values)  # symmetric around 0
            if bits == 2:
                assert values[1] == 0
                original = model.get_submodule(name).weight.detach()
                delta = 0.7 * original.abs().mean()
                assert torch.equal(w != 0, original.abs() > delta)  # TWN threshold
                assert torch.allclose(values[2], original.abs()[original.abs() > delta].mean())


@pytest.mark.timeout(60)
def test_per_channel_symmetric_grid() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    for bits in (3, 4, 8):
        q = quantize_weight(w, bits)
        qmax = 2 ** (bits - 1) - 1
        for row, qrow in zip(w.flatten(1), q.flatten(1), strict=True):
            scale = row.abs().max() / qmax
            levels = qrow / scale
            assert torch.allclose(levels, levels.round(), atol=1e-4)
            assert levels.abs().max() <= qmax + 1e-4
            assert len(torch.unique(qrow)) <= 2**bits - 1
            assert (qrow - row).abs().max() <= scale / 2 + 1e-6  # round to nearest
    assert torch.equal(quantize_weight(w, 32), w)


@pytest.mark.timeout(60)
def test_activation_quantizer_calibrates_and_passes_gradients() -> None:
    q = ActQuant(4)
    calib = torch.randn(64, 8) * 3
    q(calib)
    q.freeze()
    assert (
        q.mode == "quant"
        and float(q.lo) <= float(calib.min())
        and float(q.hi) >= float(calib.max())
    )
    x = torch.linspace(-10, 10, 1000, requires_grad=True)
    y = q(x)
    assert len(torch.unique(y.detach())) <= 16
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through
    never = ActQuant(8)
    never.freeze()  # never reached by calibration data: passes through
    assert never.mode == "off" and torch.equal(never(x), x)


@pytest.mark.timeout(120)
def test_weights_are_requantized_with_a_straight_through_estimator_when_training() -> None:
    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model, verify=False)
    small = compress(model, space.uniform(w_bits=4, a_bits=8), space=space).train()
    conv = small.get_submodule("pw.0")
    with torch.no_grad():
        conv.weight.add_(
            0.01 * torch.randn_like(conv.weight)
        )  # a fine-tuning step moved it off grid
    out = small(torch.randn(4, 3, 16, 16)).sum()
    out.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # what the forward pass used is the re-quantized weight: at most 15 levels per channel
    seen: dict[str, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["w"] = module._train_weight(module.weight).detach()

    conv.register_forward_hook(grab)
    small(torch.randn(4, 3, 16, 16))
    assert max(len(torch.unique(r)) for r in seen["w"].flatten(1)) <= 15
    assert max(len(torch.unique(r)) for r in conv.weight.detach().flatten(1)) > 15  # latent float


@pytest.mark.timeout(120)
def test_lstm_and_attention_weights_are_quantized() -> None:
    lstm_model = create_model("test_lstm").eval()
    space = CompressionSpace.from_model(lstm_model)
    policy = CompressionPolicy({"lstm": LayerAction(w_bits=4, a_bits=8)})
    small = compress(lstm_model, policy, space=space, calib=torch.randn(8, 1, 8, 8))
    for name in ("weight_ih_l0", "weight_hh_l0"):
        w = getattr(small.lstm, name).detach()
        assert max(len(torch.unique(r)) for r in w) <= 15
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert count_size_bytes(small) == space.size_bytes(policy)

    factory, shape = TINY_FAMILIES["vit"]
    vit = factory().eval()
    x = torch.randn(1, *shape)
    space = CompressionSpace.from_model(vit, x)
    att = next(p for p in space.decision_points if p.kind == "attention")
    policy = CompressionPolicy({att.name: LayerAction(w_bits=8, a_bits=8)})
    small = compress(vit, policy, space=space)
    w = small.get_submodule(att.name).in_proj_weight.detach()
    assert max(len(torch.unique(r)) for r in w) <= 255 and not torch.equal(
        w, vit.get_submodule(att.name).in_proj_weight
    )
    assert count_size_bytes(small) == space.size_bytes(policy)
    assert small(x).shape == (1, 10)


@pytest.mark.timeout(120)
def test_factorised_pair_folds_the_first_factors_scales_into_the_second() -> None:
    from autocompress.compression import LowRank
    from autocompress.compression.quantize import requantize

    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model, verify=False)
    x = torch.randn(4, 3, 16, 16)
    dense = compress(
        model, CompressionPolicy({"branch_b.0": LayerAction(rank=0.5)}), space=space, calib=x
    )
    for bits in (8, 4, 2):
        policy = CompressionPolicy({"branch_b.0": LayerAction(rank=0.5, w_bits=bits)})
        pair = compress(model, policy, space=space, calib=x).get_submodule("branch_b.0")
        assert isinstance(pair, LowRank) and pair[0].scale_folded
        first = pair[0].weight.detach()
        assert torch.equal(first, first.round())  # integer levels: no scales stored for it
        assert first.abs().max() <= max(1, 2 ** (bits - 1) - 1)
        assert torch.equal(
            requantize(pair[0], first), first
        )  # fine-tuning re-projection is stable
        with torch.no_grad():  # the pair still approximates the unquantized factorisation
            ref = dense.get_submodule("branch_b.0")(x[:, :16].new_ones(1, 16, 8, 8))
            got = pair(x[:, :16].new_ones(1, 16, 8, 8))
        if bits == 8:
            assert (got - ref).abs().max() < 0.05 * ref.abs().max()
        assert count_size_bytes(compress(model, policy, space=space, calib=x)) == space.size_bytes(
            policy
        )
