"""Least-squares reconstruction in compress(): it really recovers accuracy, matches the plain
sequential refit it replaces, is deterministic and leaves the compressed model's costs alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _compression_utils import accuracy, one_thread
from torch import Tensor, nn

from autocompress.compression import CompressionSpace, apply, compress, count_macs, count_params
from autocompress.compression.apply import _input_rows, _reconstruction_targets
from autocompress.models import create_model


@pytest.fixture(scope="module")
def trained_convnet(digits: tuple[Tensor, ...]) -> nn.Module:
    """test_convnet (conv, residual add, concatenation, depthwise, two Linear) trained on digits."""
    x_tr, y_tr, _, _ = digits
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("test_convnet", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with one_thread():
        for _ in range(4):
            model.train()
            order = torch.randperm(len(x_tr), generator=g)
            for i in range(0, len(order), 64):
                b = order[i : i + 64]
                loss = F.cross_entropy(model(x_tr[b]), y_tr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


def _sequential_full_refit(
    original: nn.Module, pruned: nn.Module, out_removed: dict[str, list[int]], x: Tensor
) -> None:
    """Reference: layer by layer, full forward passes, every patch row, float64 throughout."""
    for name in _reconstruction_targets(original, pruned):
        pm, om = pruned.get_submodule(name), original.get_submodule(name)
        got = {"x": _capture(pruned, pm, x, "in"), "y": _capture(original, om, x, "out")}
        if isinstance(pm, nn.Conv2d):
            cols = F.unfold(got["x"], pm.kernel_size, pm.dilation, pm.padding, pm.stride)
            X = cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
            Y = got["y"].flatten(2).transpose(1, 2).reshape(-1, got["y"].shape[1]).double()
        else:
            X, Y = got["x"].double(), got["y"].double()
        keep = [c for c in range(om.weight.shape[0]) if c not in set(out_removed.get(name, []))]
        Y = Y[:, keep] - (om.bias.double()[keep] if om.bias is not None else 0.0)
        gram = X.T @ X
        lam = 1e-3 * gram.diagonal().mean()
        W = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), X.T @ Y).T
        with torch.no_grad():
            pm.weight.copy_(W.reshape(pm.weight.shape).float())


def _capture(model: nn.Module, module: nn.Module, x: Tensor, take: str) -> Tensor:
    got: list[Tensor] = []
    h = module.register_forward_hook(lambda m, a, o: got.append(a[0] if take == "in" else o))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("weight")}


@pytest.mark.timeout(300)
def test_reconstruction_recovers_a_heavily_pruned_resnet(trained_resnet20, digits) -> None:
    model = trained_resnet20
    x_tr, _, x_te, y_te = digits
    space = CompressionSpace.from_model(model, x_tr[:1])
    policy = space.uniform(prune=0.7)
    calib = [x_tr[i : i + 64] for i in range(0, 1024, 64)]  # 16 batches; the refit reads 256
    plain = compress(model, policy, space=space, calib=calib)
    refit = compress(model, policy, space=space, calib=calib, reconstruct=True)
    base, acc_plain, acc_refit = (accuracy(m, x_te, y_te) for m in (model, plain, refit))
    assert acc_plain < base - 30.0  # the pruning really broke the model...
    assert acc_refit > acc_plain + 30.0  # ...and the refit recovers most of it
    assert acc_refit > base - 20.0
    # only weights change: the compressed model's structure and costs are those of plain pruning
    assert {k: v.shape for k, v in refit.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    assert count_macs(refit, x_tr[:1]) == count_macs(plain, x_tr[:1]) == space.macs(policy)
    assert count_params(refit) == count_params(plain) == space.params(policy)
    # deterministic: the same call gives the same weights
    again = compress(model, policy, space=space, calib=calib, reconstruct=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in refit.state_dict().items())


@pytest.mark.timeout(300)
def test_conv_concat_and_linear_layers_are_refit(trained_convnet, digits) -> None:
    model = trained_convnet
    x_tr, _, x_te, y_te = digits
    space = CompressionSpace.from_model(model, x_tr[:1])
    policy = space.uniform(prune=0.6)
    calib = [x_tr[i : i + 64] for i in range(0, 512, 64)]
    plain = compress(model, policy, space=space, calib=calib)
    refit = compress(model, policy, space=space, calib=calib, reconstruct=True)
    targets = _reconstruction_targets(model, plain)
    # convs after the residual add and after the concatenation, the 1x1 after the depthwise, and
    # both Linear layers lost input channels
    assert {"res.0", "branch_a.0", "branch_b.0", "pw.0", "fc1", "fc2"} <= set(targets)
    w_plain, w_refit = _weights(plain), _weights(refit)
    changed = {k.rpartition(".")[0] for k in w_plain if not torch.equal(w_plain[k], w_refit[k])}
    assert changed == set(targets)  # every target refit, nothing else touched
    with torch.no_grad():
        ref = model(x_te)
        err_plain = (plain(x_te) - ref).pow(2).mean()
        err_refit = (refit(x_te) - ref).pow(2).mean()
    assert err_refit < 0.5 * err_plain
    assert accuracy(refit, x_te, y_te) > accuracy(plain, x_te, y_te)
    assert count_macs(refit, x_tr[:1]) == space.macs(policy)
    assert count_params(refit) == space.params(policy)


@pytest.mark.timeout(300)
def test_matches_the_sequential_full_data_refit(trained_convnet, digits, monkeypatch) -> None:
    """With every row kept (no sampling), the two-pass refit equals the layer-by-layer one."""
    model = trained_convnet
    x_tr = digits[0]
    space = CompressionSpace.from_model(model, x_tr[:1])
    policy = space.uniform(prune=0.5)
    x = x_tr[:96]  # 96 images x 8x8 positions = 6144 rows per layer: all kept (< max_rows)
    seen: dict[str, Any] = {}

    def spy(original, pruned, out_removed, inputs, **kw):  # type: ignore[no-untyped-def]
        seen.update(before=copy.deepcopy(pruned), out_removed=out_removed, inputs=inputs)
        seen["done"] = apply._reconstruct_.__wrapped__(original, pruned, out_removed, inputs, **kw)
        return seen["done"]

    spy.__wrapped__ = apply._reconstruct_  # type: ignore[attr-defined]
    monkeypatch.setattr(apply, "_reconstruct_", spy)
    calib = [x[:32], x[32:64], x[64:]]  # the refit pools the batches
    fast = compress(model, policy, space=space, calib=calib, reconstruct=True)
    reference = seen["before"]
    _sequential_full_refit(model, reference, seen["out_removed"], x)
    assert seen["done"] == _reconstruction_targets(model, reference)
    assert len(seen["done"]) >= 6
    w_fast = _weights(fast)
    for k, w in _weights(reference).items():  # float32 Gram matrices vs float64 throughout
        assert torch.allclose(w_fast[k], w, rtol=1e-3, atol=1e-3), k


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (3, 5), "dilation": 2, "padding": (2, 1)},
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": "same"},
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
        {"kernel_size": 4, "stride": 3},
    ],
)
def test_gathered_patches_reproduce_the_conv(kw: dict[str, Any]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, **kw)
    x = torch.randn(3, 5, 11, 13)
    with torch.no_grad():
        out = conv(x)
        n, c, h, w = out.shape
        idx = torch.randperm(n * h * w)[:40]
        rows = _input_rows(conv, x, idx, (h, w))
        pred = rows @ conv.weight.reshape(c, -1).T + conv.bias
    assert rows.shape == (len(idx), conv.weight[0].numel())
    assert torch.allclose(pred, out.permute(0, 2, 3, 1).reshape(-1, c)[idx], atol=1e-5)
