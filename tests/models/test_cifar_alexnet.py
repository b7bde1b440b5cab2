"""The survey's CIFAR AlexNet: its size, its FLOPs, and every knob the survey's tables use on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_macs,
    count_params,
)
from autocompress.compression.prune import global_bn_ratios
from autocompress.errors import UserInputError
from autocompress.metrics import flops_from_macs
from autocompress.models import create_model

pytestmark = pytest.mark.timeout(120)
CONVS = ("features.0", "features.3", "features.6", "features.8", "features.10")


@pytest.mark.parametrize("name", ["alexnet_cifar", "alexnet_cifar_bnd"])
def test_size_flops_and_output_shape(name: str) -> None:
    model = create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 2.87e6) / 2.87e6 < 0.01  # the survey's Table 5: 2.87M
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (3, 10)
    macs = count_macs(model, x[:1])
    assert macs == 15_352_832 and flops_from_macs(macs) == 30_705_664
    assert model.input_shape == (3, 32, 32)


def test_bnd_has_batchnorm_after_every_conv_and_dropout_in_the_mlp() -> None:
    model = create_model("alexnet_cifar_bnd")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_model("alexnet_cifar").modules())


def test_space_prunes_across_the_flatten_into_the_mlp_and_counts_match() -> None:
    """The last conv's channels are the first FC layer's inputs (1x1 after the last pool): pruning
    it shrinks both; the output layer has no prune knob (its channels are the classes)."""
    torch.manual_seed(0)
    model = create_model("alexnet_cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    space = CompressionSpace.from_model(model, x, knobs=("prune", "w_bits", "sparsity"))
    assert space.names == [*CONVS, "classifier.0", "classifier.2", "classifier.4"]
    assert "prune" not in space["classifier.4"].knobs
    policy = CompressionPolicy({**{c: LayerAction(prune=0.5) for c in CONVS},
                                "features.0": LayerAction(prune=0.3)})
    small = compress(model, policy, space=space)
    assert small.features[10].out_channels == 128 and small.classifier[0].in_features == 128
    assert small.features[0].out_channels == 45  # 64 - floor(0.3 * 64)
    assert count_macs(small, x) == space.macs(policy) < count_macs(model, x) / 2
    assert count_params(small) == space.params(policy)
    assert abs(count_params(small) - 0.99e6) / 0.99e6 < 0.02  # the survey's 0.99M for this recipe


def test_sparsity_and_bits_and_onnx_export_match() -> None:
    import onnxruntime as ort

    from autocompress.report.export import onnx_bytes

    torch.manual_seed(0)
    model = create_model("alexnet_cifar_bnd").eval()
    x = torch.randn(2, 3, 32, 32)
    space = CompressionSpace.from_model(model, x[:1], knobs=("prune", "w_bits", "sparsity"))
    policy = CompressionPolicy({
        **{c: LayerAction(prune=0.5, w_bits=8) for c in ("features.0", "features.4", "features.8")},
        "features.11": LayerAction(sparsity=0.6, w_bits=5),
        "classifier.1": LayerAction(sparsity=0.7),
    })
    small = compress(model, policy, space=space).eval()
    assert count_params(small) == space.params(policy) < count_params(model)
    w = small.get_submodule("features.11").weight
    assert int((w == 0).sum()) == int(0.6 * w.numel())
    blob, _ = onnx_bytes(small, x[:1])  # the engine's export (dynamic batch)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), small(x), atol=1e-4)


def test_global_bn_ratios_remove_the_smallest_gammas_of_the_whole_network() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet_cifar_bnd").eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for i, bn in enumerate(bns):  # layer i's gammas all lie in (i, i + 1): global order = layer order
            bn.weight.copy_(i + torch.rand(bn.num_features) * 0.9 + 0.05)
    space = CompressionSpace.from_model(model, importance="bn")
    total = sum(bn.num_features for bn in bns)  # 1152 channels
    ratios = global_bn_ratios(model, space.groups, 0.2, max_prune=0.8)
    # 20% = 230 channels: layer 0 stops at 80% (51 of 64), layer 1 too (153 of 192), and the
    # remaining 26 come from layer 2, the next smallest scales
    assert int(0.2 * total) == 51 + 153 + 26
    assert ratios == {"features.0": 51 / 64, "features.4": 153 / 192, "features.8": 26 / 384,
                      "features.11": 0.0, "features.14": 0.0}
    policy = CompressionPolicy({p: LayerAction(prune=r) for p, r in ratios.items()})
    small = compress(model, policy, space=space)
    kept = small.get_submodule("features.9").weight.detach()
    assert len(kept) == 384 - 26
    assert sorted(kept.tolist()) == sorted(bns[2].weight.detach().sort().values[26:].tolist())
    with pytest.raises(UserInputError, match="fraction=1.0; allowed: 0 <= fraction < 1"):
        global_bn_ratios(model, space.groups, 1.0)
    plain = create_model("alexnet_cifar")
    with pytest.raises(UserInputError, match="needs a prunable layer followed by an affine BatchNorm"):
        global_bn_ratios(plain, CompressionSpace.from_model(plain).groups, 0.3)


def test_reset_weights_restarts_from_the_models_own_initialisation() -> None:
    """He initialisation without BatchNorm (the default scale does not train through 8 ReLU
    layers), PyTorch's default with it; training from scratch (Table 6) restarts there."""
    torch.manual_seed(0)
    plain = create_model("alexnet_cifar")
    before = plain.features[3].weight.detach().clone()
    plain.reset_weights_()
    w = plain.features[3].weight.detach()
    assert not torch.equal(before, w)
    he = (2 / (64 * 25)) ** 0.5
    assert abs(float(w.std()) - he) < 0.05 * he and float(plain.features[3].bias.abs().max()) == 0.0
    bnd = create_model("alexnet_cifar_bnd")
    bound = 1 / (64 * 25) ** 0.5  # PyTorch's default: uniform within 1 / sqrt(fan_in)
    assert float(bnd.features[4].weight.abs().max()) <= bound
