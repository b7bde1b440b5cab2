"""CIFAR-variant VGG with BatchNorm (Simonyan & Zisserman 2015; 32x32 inputs, 512-wide classifier)."""

from __future__ import annotations

from torch import Tensor, nn

from autocompress.models._registry import register_model

_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG features (conv-BN-ReLU, max-pool) then a 512-512-classes MLP."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg11_bn", input_shape=(3, 32, 32), description="CIFAR VGG-11 with BatchNorm")
def vgg11_bn(num_classes: int = 10, **kw: int) -> CifarVGG:
    """CIFAR VGG-11-BN."""
    return CifarVGG(_CFGS["vgg11"], num_classes, **kw)


@register_model("vgg16_bn", input_shape=(3, 32, 32), description="CIFAR VGG-16 with BatchNorm")
def vgg16_bn(num_classes: int = 10, **kw: int) -> CifarVGG:
    """CIFAR VGG-16-BN."""
    return CifarVGG(_CFGS["vgg16"], num_classes, **kw)
