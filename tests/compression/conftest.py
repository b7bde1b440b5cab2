"""Fixtures for the compression tests: one thread per test, and a resnet20 trained on digits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.models import create_model


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run much faster on one thread, and far faster when other jobs load the CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as (N, 3, 8, 8) float tensors: 1397 train / 400 test, fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 16.0
    x = (x - 0.3) / 0.35
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1397], perm[1397:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test)."""
    return digits_tensors()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="session")
def trained_resnet20(digits: tuple[torch.Tensor, ...]) -> nn.Module:
    """resnet20 trained 4 epochs on digits at their native 8x8 (x3 channels): ~97% test top-1."""
    x_tr, y_tr, _, _ = digits
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    epochs, batch = 4, 64
    steps = epochs * ((len(x_tr) + batch - 1) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
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
