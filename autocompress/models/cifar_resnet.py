"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2) with option-B (1x1 conv projection) shortcuts.

Option B is used rather than option A's zero-padded identity because a projection keeps every
residual addition a plain tensor add, which structured pruning can follow exactly.
"""

from __future__ import annotations

from torch import Tensor, nn

from autocompress.models._registry import register_model


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 conv + BN projection where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: three stages of n blocks at widths w, 2w, 4w."""

    def __init__(
        self, depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet20", input_shape=(3, 32, 32), description="CIFAR ResNet-20, option-B shortcuts")
def resnet20(num_classes: int = 10, **kw: int) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M params, 41M MACs at 32x32)."""
    return CifarResNet(20, num_classes, **kw)


@register_model("resnet56", input_shape=(3, 32, 32), description="CIFAR ResNet-56, option-B shortcuts")
def resnet56(num_classes: int = 10, **kw: int) -> CifarResNet:
    """CIFAR ResNet-56 (0.86M params, 127M MACs at 32x32)."""
    return CifarResNet(56, num_classes, **kw)
