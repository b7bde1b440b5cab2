"""Fixtures for the compression tests: one thread per test, and a resnet20 trained on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _compression_utils import digits_tensors, one_thread
from torch import nn

from autocompress.models import create_model


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): sklearn digits, 8x8 x 3 channels."""
    return digits_tensors()


@pytest.fixture(scope="session")
def trained_resnet20(digits: tuple[torch.Tensor, ...]) -> nn.Module:
    """resnet20 trained 4 epochs on digits at their native 8x8 (x3 channels): ~97% test top-1."""
    x_tr, y_tr, _, _ = digits
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    epochs, batch = 4, 64
    steps = epochs * ((len(x_tr) + batch - 1) // batch)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    with one_thread():
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x_tr), generator=g)
            for i in range(0, len(order), batch):
                b = order[i : i + batch]
                loss = F.cross_entropy(model(x_tr[b]), y_tr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()
