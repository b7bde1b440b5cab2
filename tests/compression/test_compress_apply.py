"""compress(): identity exactness, really smaller models, the original left untouched, options."""

from __future__ import annotations

import pytest
import torch
from _compression_utils import accuracy
from torch import nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_macs,
    count_params,
)
from autocompress.errors import UserInputError
from autocompress.models import create_model, list_models

BUILT_IN = list_models()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", BUILT_IN)
def test_identity_policy_gives_identical_outputs(name: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(2, *model.input_shape)
    space = CompressionSpace.from_model(model, x[:1], verify=False)
    out = compress(model, space.identity(), space=space)
    assert out is not model
    with torch.no_grad():
        assert torch.equal(out(x), model(x))
    assert count_params(out) == count_params(model)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name",
    ["test_convnet", "test_resnet", "test_mobilenetv2", "test_lstm", "test_mlp", "vgg11_bn"],
)
def test_prune_only_really_shrinks_parameters_and_tensors(name: str) -> None:
    model = create_model(name).eval()
    space = CompressionSpace.from_model(model)
    policy = space.uniform(prune=0.5)
    small = compress(model, policy, space=space)
    assert count_params(small) < count_params(model)
    assert count_params(small) == space.params(policy)
    big_sd, small_sd = model.state_dict(), small.state_dict()
    assert set(big_sd) == set(small_sd)  # same module tree, same names: only shapes change
    shrunk = [k for k in big_sd if small_sd[k].shape != big_sd[k].shape]
    assert shrunk and all(small_sd[k].numel() < big_sd[k].numel() for k in shrunk)
    assert all(small_sd[k].shape == big_sd[k].shape for k in big_sd if k not in shrunk)
    x = space.example_input
    assert count_macs(small, x) == space.macs(policy) < space.base_macs
    assert small(x).shape == model(x).shape


@pytest.mark.timeout(120)
def test_model_is_left_untouched() -> None:
    model = create_model("test_convnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = CompressionSpace.from_model(model)
    small = compress(model, space.most_compressed(), space=space, calib=torch.randn(4, 3, 16, 16))
    assert model.training and small.training  # the result keeps the model's mode
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(
        type(m) in (nn.Conv2d, nn.Linear)
        for m in model.modules()
        if hasattr(m, "weight") and m.weight.dim() > 1
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_importance_removes_the_least_important_channels(importance: str, digits) -> None:
    x_tr, y_tr, _, _ = digits
    x_tr = x_tr[:, :1]  # test_mlp reads 1x8x8
    model = create_model("test_mlp").eval()
    dead = torch.arange(0, 64, 8)  # 8 hidden units that contribute nothing
    with torch.no_grad():
        model.net[1].weight[dead] = 0.0
        model.net[1].bias[dead] = 0.0
        model.net[3].weight[:, dead] = 0.0
    space = CompressionSpace.from_model(model, x_tr[:1], importance=importance)
    policy = CompressionPolicy({"net.1": LayerAction(prune=0.125)})
    calib = [(x_tr[i : i + 32], y_tr[i : i + 32]) for i in range(0, 96, 32)]
    small = compress(model, policy, space=space, calib=calib)
    assert small.net[1].out_features == 56
    if importance == "taylor":
        # first-order Taylor scores |w * dL/dw| on the calibration batches: the dead units score 0,
        # and so do units never active on those batches, so check what Taylor promises: the
        # calibration outputs do not move
        with torch.no_grad():
            assert torch.allclose(small(x_tr[:96]), model(x_tr[:96]), atol=1e-5)
    else:
        assert (small.net[1].weight.abs().sum(1) > 0).all()  # every dead unit went, nothing else
        with torch.no_grad():
            assert torch.allclose(small(x_tr[:64]), model(x_tr[:64]), atol=1e-5)
    assert count_macs(small, x_tr[:1]) == space.macs(policy)


def _kept(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Indices of ``before`` whose (distinct) values survive in ``after``, in order."""
    return [before.tolist().index(v) for v in after.tolist()]


@pytest.mark.timeout(120)
def test_bn_importance_keeps_the_channels_with_the_largest_gamma() -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    block = model.layer1[0]
    gamma = torch.tensor([0.9, -0.1, 0.5, 0.05, -0.7, 0.2, 0.3, 0.01])
    # the residual group (stem conv1 -> bn1, joined by the add to layer1.0.bn2) ranks by the
    # mean |gamma| of both: (|a| + |b|) / 2 = [.5, .45, .1, .4, .2, .35, .6, .05]
    a = torch.tensor([0.1, 0.8, -0.1, 0.7, 0.3, 0.6, 0.4, 0.05])
    b = torch.tensor([0.9, 0.1, 0.1, -0.1, 0.1, 0.1, 0.8, 0.05])
    with torch.no_grad():
        block.bn1.weight.copy_(gamma)
        model.bn1.weight.copy_(a)
        block.bn2.weight.copy_(b)
        # filter norms ranked against |gamma|: l1 importance would keep the other half
        norms = 1.0 / (gamma.abs() + 0.05)
        block.conv1.weight.mul_(norms.view(-1, 1, 1, 1) / block.conv1.weight.abs().sum((1, 2, 3)).view(-1, 1, 1, 1))
    policy = CompressionPolicy({"layer1.0.conv1": LayerAction(prune=0.5), "conv1": LayerAction(prune=0.5)})
    space = CompressionSpace.from_model(model, importance="bn")
    small = compress(model, policy, space=space)
    assert _kept(gamma, small.layer1[0].bn1.weight) == [0, 2, 4, 6]  # |gamma| .9 .5 .7 .3
    assert _kept(a, small.bn1.weight) == [0, 1, 3, 6]  # mean |gamma| .5 .45 .4 .6
    assert _kept(b, small.layer1[0].bn2.weight) == [0, 1, 3, 6]
    assert count_macs(small, space.example_input) == space.macs(policy)
    by_l1 = compress(model, policy, space=space, importance="l1")
    assert _kept(gamma, by_l1.layer1[0].bn1.weight) == [1, 3, 5, 7]
    # l1 stays what it was: the explicit choice is the default space's, bit for bit
    plain = compress(model, policy, space=CompressionSpace.from_model(model))
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(),
                                                  by_l1.state_dict().values(), strict=True))


@pytest.mark.timeout(120)
def test_bn_importance_falls_back_to_l1_without_batchnorm_and_refuses_a_model_with_none() -> None:
    torch.manual_seed(0)
    model = create_model("test_convnet").eval()
    with torch.no_grad():  # pw's BatchNorm ranks against its filters' l1 norms
        model.pw[1].weight.copy_(torch.linspace(1.0, 0.1, 32))
    space = CompressionSpace.from_model(model, importance="bn")
    fc = CompressionPolicy({"fc1": LayerAction(prune=0.5)})
    bn, l1 = compress(model, fc, space=space), compress(model, fc, space=space, importance="l1")
    # a Linear without BatchNorm is ranked by l1
    assert all(torch.equal(p, q) for p, q in zip(bn.state_dict().values(), l1.state_dict().values(), strict=True))
    pw = CompressionPolicy({"pw.0": LayerAction(prune=0.5)})
    bn, l1 = compress(model, pw, space=space), compress(model, pw, space=space, importance="l1")
    assert _kept(model.pw[1].weight, bn.pw[1].weight) == list(range(16))
    assert not torch.equal(bn.pw[1].weight, l1.pw[1].weight)
    mlp = create_model("test_mlp").eval()
    with pytest.raises(UserInputError, match=r"importance 'bn' .* TinyMLP .* allowed here: l1, l2, taylor"):
        CompressionSpace.from_model(mlp, importance="bn")
    with pytest.raises(UserInputError, match="importance 'bn'"):
        compress(mlp, CompressionPolicy({"net.1": LayerAction(prune=0.5)}), importance="bn")
    with pytest.raises(UserInputError, match="unknown importance 'gamma'; allowed: l1, l2, taylor, bn"):
        CompressionSpace.from_model(model, importance="gamma")


@pytest.mark.timeout(300)
def test_reconstruction_reduces_the_pruning_error(trained_resnet20, digits) -> None:
    model = trained_resnet20
    x_tr, y_tr, x_te, y_te = digits
    space = CompressionSpace.from_model(model, x_tr[:1])
    policy = space.uniform(prune=0.6)
    calib = [x_tr[i : i + 128] for i in range(0, 512, 128)]
    plain = compress(model, policy, space=space, calib=calib)
    refit = compress(model, policy, space=space, calib=calib, reconstruct=True)
    with torch.no_grad():
        ref = model(x_te)
        err_plain = (plain(x_te) - ref).pow(2).mean()
        err_refit = (refit(x_te) - ref).pow(2).mean()
    assert err_refit < err_plain
    assert accuracy(refit, x_te, y_te) >= accuracy(plain, x_te, y_te)
    assert count_macs(refit, x_tr[:1]) == space.macs(policy)


@pytest.mark.timeout(120)
def test_compress_errors_are_clear() -> None:
    model = create_model("test_mlp").eval()
    space = CompressionSpace.from_model(model)
    with pytest.raises(UserInputError, match=r"unknown layer 'net\.9'"):
        compress(model, CompressionPolicy({"net.9": LayerAction(w_bits=8)}), space=space)
    with pytest.raises(UserInputError, match=r"layer 'net\.1': prune=0\.85"):
        compress(model, CompressionPolicy({"net.1": LayerAction(prune=0.85)}), space=space)
    with pytest.raises(UserInputError, match="unknown importance"):
        compress(model, space.identity(), space=space, importance="l3")
    with pytest.raises(UserInputError, match="calib is empty"):
        compress(model, space.uniform(a_bits=8), space=space, calib=[])
    # without a space, one is built from the model (and its input_shape)
    small = compress(model, CompressionPolicy({"net.1": LayerAction(prune=0.5)}))
    assert small.net[1].out_features == 32


@pytest.mark.timeout(120)
def test_quantized_and_factorised_layers_keep_their_names_and_export_to_onnx(tmp_path) -> None:
    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model)
    policy = CompressionPolicy(
        {
            "stem.0": LayerAction(prune=0.25, w_bits=8, a_bits=8),
            "branch_b.0": LayerAction(rank=0.3, w_bits=4, a_bits=4),
            "fc2": LayerAction(w_bits=2, a_bits=8),
        }
    )
    small = compress(model, policy, space=space, calib=torch.randn(8, 3, 16, 16))
    names = dict(small.named_modules())
    assert isinstance(names["stem.0"], nn.Conv2d) and names["stem.0"].w_bits == 8
    assert isinstance(names["branch_b.0"], nn.Sequential) and names["branch_b.0"].rank < 12
    assert names["fc2"].act_quant.mode == "quant"
    path = tmp_path / "small.onnx"
    torch.onnx.export(small, (space.example_input,), str(path), dynamo=False)
    assert path.stat().st_size > 1000
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: space.example_input.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), small(space.example_input), atol=1e-4)


class _NoShape(nn.Module):
    """A conv net without an ``input_shape`` attribute (a user's own model)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["tensor", "list", "pairs", "generator"])
def test_without_space_the_example_input_comes_from_the_calibration_data(kind: str) -> None:
    """``compress(model, policy, calib=batches)`` needs neither ``space`` nor ``example_input``."""
    torch.manual_seed(0)
    model = _NoShape().eval()
    xs = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    calib = {
        "tensor": xs[0],
        "list": xs,
        "pairs": [(x, torch.zeros(4, dtype=torch.long)) for x in xs],
        "generator": (x for x in xs),
    }[kind]
    policy = CompressionPolicy({"conv": LayerAction(prune=0.5, w_bits=8, a_bits=8)})
    small = compress(model, policy, calib=calib)
    assert small.conv.out_channels == 4 and small.fc.in_features == 4
    with torch.no_grad():
        assert small(xs[0]).shape == (4, 4)
    assert count_macs(small, xs[0][:1]) < count_macs(model, xs[0][:1])
    # the conv's input range was observed on every batch (a generator is read once, not lost)
    seen = xs[:1] if kind == "tensor" else xs
    aq = small.conv.act_quant
    assert aq.mode == "quant"
    assert float(aq.lo) == min(float(x.min()) for x in seen)
    assert float(aq.hi) == max(float(x.max()) for x in seen)


@pytest.mark.timeout(120)
def test_without_space_and_without_any_input_the_error_says_what_is_needed() -> None:
    with pytest.raises(UserInputError, match="example_input is required"):
        compress(_NoShape().eval(), CompressionPolicy({"conv": LayerAction(prune=0.5)}))
