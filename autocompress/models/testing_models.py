"""Tiny ``test_*`` models, registered in the real registry so tests run production code paths."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from autocompress.models._registry import register_model
from autocompress.models.cifar_mobilenet import CifarMobileNetV2
from autocompress.models.cifar_resnet import CifarResNet
from autocompress.models.sequence import LSTMClassifier, RowSequenceClassifier


class TinyConvNet(nn.Module):
    """Conv stem, a residual add, a concatenation of two branches, a depthwise conv and an MLP head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.branch_a = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pw(self.dw(x))
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


class TinyMLP(nn.Module):
    """Flatten then three Linear layers."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        n = input_shape[0] * input_shape[1] * input_shape[2]
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("test_convnet", input_shape=(3, 16, 16), description="tiny conv net (residual, concat, depthwise)")
def test_convnet(num_classes: int = 10, **kw: int) -> TinyConvNet:
    """Tiny conv net for tests."""
    return TinyConvNet(num_classes, **kw)


@register_model("test_mlp", input_shape=(1, 8, 8), description="tiny 3-layer MLP")
def test_mlp(num_classes: int = 10, **kw: object) -> TinyMLP:
    """Tiny MLP for tests."""
    return TinyMLP(num_classes, **kw)  # type: ignore[arg-type]


@register_model("test_resnet", input_shape=(3, 16, 16), description="ResNet-8 at width 8")
def test_resnet(num_classes: int = 10, **kw: int) -> CifarResNet:
    """ResNet-8, width 8, for tests."""
    return CifarResNet(8, num_classes, width=8, **kw)


@register_model("test_mobilenetv2", input_shape=(3, 16, 16), description="MobileNetV2 at width 0.25")
def test_mobilenetv2(num_classes: int = 10, **kw: int) -> CifarMobileNetV2:
    """MobileNetV2 at width 0.25 for tests."""
    return CifarMobileNetV2(num_classes, width_mult=0.25, **kw)


@register_model("test_lstm", input_shape=(1, 8, 8), description="LSTM(16) over image rows")
def test_lstm(num_classes: int = 10, **kw: object) -> LSTMClassifier:
    """LSTM(16) classifier for tests."""
    return LSTMClassifier(num_classes, hidden=16, **kw)  # type: ignore[arg-type]


@register_model("test_gru", input_shape=(1, 8, 8), description="2-layer GRU(16) over image rows")
def test_gru(num_classes: int = 10, **kw: object) -> RowSequenceClassifier:
    """2-layer GRU(16) classifier (no embedding) for tests."""
    kw = {"hidden": 16, "num_layers": 2, "embed": False, **kw}
    return RowSequenceClassifier(num_classes, cell="gru", **kw)  # type: ignore[arg-type]
