"""Accuracy-proxy building blocks: adaptive BN, batched top-k, distillation loss and fine-tune."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.evaluators import kd_finetune, kd_loss, recalibrate_bn, topk_correct


def test_recalibrate_bn_is_the_exact_average_over_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    bn = model[1]
    bn.running_mean.fill_(123.0)
    bn.running_var.fill_(456.0)
    batches = [torch.randn(8, 2, 5, 5) * (i + 1) + i for i in range(3)]
    assert recalibrate_bn(model, batches) == 1
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    # momentum=None: the cumulative (equal-weight) average of the per-batch statistics
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training and not bn.training


def test_recalibrate_bn_without_batchnorm_is_a_no_op() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    before = [p.clone() for p in model.parameters()]
    assert recalibrate_bn(model, [torch.randn(4, 3)]) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_topk_by_hand() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    y = torch.tensor([0, 1, 1, 0])
    acc = topk_correct(Fixed(), logits, y, ks=(1, 2), batch_size=3)
    assert acc[1] == pytest.approx(1 / 4) and acc[2] == pytest.approx(3 / 4)
    bad = logits.clone()
    bad[3, 0] = math.nan
    assert math.isnan(topk_correct(Fixed(), bad, y, ks=(1,))[1])


def test_kd_loss_formula() -> None:
    torch.manual_seed(0)
    zs, zt, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    t, a = 4.0, 0.9
    ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    expected = a * t * t * kl + (1 - a) * F.cross_entropy(zs, y)
    torch.testing.assert_close(kd_loss(zs, zt, y, alpha=a, temperature=t), expected)
    # a student equal to its teacher pays only the hard-label term
    same = kd_loss(zt, zt, y, alpha=a, temperature=t)
    torch.testing.assert_close(same, (1 - a) * F.cross_entropy(zt, y), atol=1e-6, rtol=1e-5)


def test_kd_finetune_learns_and_is_seeded() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    teacher = nn.Linear(10, 2)
    with torch.no_grad():
        teacher.weight.zero_()
        teacher.weight[1, 0], teacher.weight[0, 0] = 5.0, -5.0

    def run() -> tuple[float, nn.Module]:
        torch.manual_seed(1)
        student = nn.Linear(10, 2)
        return kd_finetune(student, teacher, x, y, steps=60, batch_size=32, lr=0.1, seed=3), student

    first, s1 = run()
    second, s2 = run()
    assert first == second and torch.equal(s1.weight, s2.weight)
    acc = topk_correct(s1, x, y)[1]
    assert acc > 0.9
