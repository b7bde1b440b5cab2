"""The CIFAR AlexNet of the compression survey's experiments (Choudhary et al. 2020, Tables 5-7).

Five convolutions (64-192-384-256-256 filters; kernels 11, 5, 3, 3, 3; the first with stride 4),
three max-pools that take a 32x32 input down to 1x1, then three fully connected layers
(256-512-512-classes). With 10 classes that is 2,869,066 parameters, the survey's 2.87M, and
15.35M MACs per 32x32 image (30.7M FLOPs at 2 FLOPs per MAC; the survey reports 92.21M FLOPs
without saying how it counts them). ``alexnet_cifar_bnd`` adds a BatchNorm after every
convolution and dropout before the two hidden fully connected layers (the survey's "BND" model,
also the network-slimming model: its BatchNorm scales are what ``importance="bn"`` ranks).
"""

from __future__ import annotations

from torch import Tensor, nn

from autocompress.models._registry import register_model

#: (filters, kernel, stride, padding, max-pool after) of the five convolutions.
_CONVS: tuple[tuple[int, int, int, int, bool], ...] = (
    (64, 11, 4, 5, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)
_HIDDEN = 512


class CifarAlexNet(nn.Module):
    """AlexNet for 32x32 inputs: five convs, three max-pools to 1x1, a 256-512-512-classes MLP."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, bn: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for filters, k, s, p, pool in _CONVS:
            layers.append(nn.Conv2d(c, filters, k, stride=s, padding=p, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(filters))
            layers.append(nn.ReLU(inplace=True))
            if pool:
                layers.append(nn.MaxPool2d(2))
            c = filters
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        for width in (_HIDDEN, _HIDDEN):
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(c, width), nn.ReLU(inplace=True)]
            c = width
        head.append(nn.Linear(c, num_classes))
        self.classifier = nn.Sequential(*head)
        self.he_init = not bn
        self.reset_weights_()

    def reset_weights_(self) -> None:
        """Fresh weights (training from scratch restarts here). Without BatchNorm, He
        initialisation: PyTorch's default scale shrinks the signal through eight ReLU layers so
        far that the model does not start to learn; with BatchNorm, PyTorch's default (He
        initialisation makes its unnormalised MLP diverge at the learning rate that trains it)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if self.he_init and isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("alexnet_cifar", input_shape=(3, 32, 32),
                description="CIFAR AlexNet of the survey's Tables 5-7 (5 conv + 3 FC, 2.87M params)")
def alexnet_cifar(num_classes: int = 10, **kw: int) -> CifarAlexNet:
    """CIFAR AlexNet without BatchNorm or dropout."""
    return CifarAlexNet(num_classes, **kw)


@register_model("alexnet_cifar_bnd", input_shape=(3, 32, 32),
                description="CIFAR AlexNet with BatchNorm after each conv and dropout 0.5 in the MLP")
def alexnet_cifar_bnd(num_classes: int = 10, **kw: int) -> CifarAlexNet:
    """CIFAR AlexNet with BatchNorm and dropout (the survey's "BND" model)."""
    return CifarAlexNet(num_classes, bn=True, dropout=0.5, **kw)
