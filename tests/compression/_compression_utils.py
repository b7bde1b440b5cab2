"""Helpers for the compression tests: tiny torchvision families, digits data, one-thread runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.models.squeezenet import SqueezeNet
from torchvision.models.vgg import VGG, make_layers
from torchvision.models.vision_transformer import VisionTransformer

NUM_CLASSES = 10


def _vgg() -> nn.Module:
    model = VGG(
        make_layers([8, "M", 16, "M", 32, 32, "M"], batch_norm=True), num_classes=NUM_CLASSES
    )
    # torchvision's classifier is 25088 -> 4096 -> 4096; keep its shape (flatten of a 7x7 map) smaller
    model.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, NUM_CLASSES)
    )
    return model


def _mobilenet_v3() -> nn.Module:
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return MobileNetV3(setting, last, num_classes=NUM_CLASSES)


def _efficientnet() -> nn.Module:
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, last_channel=last, num_classes=NUM_CLASSES)


def _regnet() -> nn.Module:
    params = BlockParams.from_init_params(
        depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
    )
    return RegNet(params, num_classes=NUM_CLASSES, stem_width=8)


def _scaled_conv(in_channels: int, out_channels: int, **kw: object) -> nn.Module:
    """GoogLeNet's conv block at 1/8 width (the RGB input keeps its 3 channels)."""
    return BasicConv2d(
        in_channels if in_channels == 3 else in_channels // 8, out_channels // 8, **kw
    )


class _SmallInception(Inception):
    """GoogLeNet's Inception block at 1/8 width (every branch width is a multiple of 8)."""

    def __init__(self, in_channels: int, *widths: int, conv_block: object = None) -> None:
        nn.Module.__init__(self)
        small = Inception(in_channels // 8, *(w // 8 for w in widths))
        self.branch1, self.branch2 = small.branch1, small.branch2
        self.branch3, self.branch4 = small.branch3, small.branch4


class _NarrowResNet(ResNet):
    """torchvision's ResNet with every stage at 1/8 width (its stage widths are hard-coded)."""

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # type: ignore[no-untyped-def]
        return super()._make_layer(block, planes // 8, blocks, stride, dilate)


def _resnet(block: type[nn.Module], **kw: int) -> nn.Module:
    model = _NarrowResNet(block, [1, 1, 1, 1], num_classes=NUM_CLASSES, **kw)
    model.fc = nn.Linear(512 // 8 * block.expansion, NUM_CLASSES)  # torchvision hard-codes 512
    return model


def _googlenet() -> nn.Module:
    model = GoogLeNet(
        num_classes=NUM_CLASSES,
        aux_logits=False,
        init_weights=True,
        blocks=[_scaled_conv, _SmallInception, None],
    )
    model.fc = nn.Linear(1024 // 8, NUM_CLASSES)  # torchvision hard-codes 1024 inputs
    return model


# name -> (factory, input shape (C, H, W))
TINY_FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "resnet": (partial(_resnet, BasicBlock), (3, 32, 32)),
    "resnext": (partial(_resnet, Bottleneck, groups=4, width_per_group=16), (3, 32, 32)),
    "vgg": (_vgg, (3, 32, 32)),
    "mobilenet_v2": (
        partial(
            MobileNetV2,
            num_classes=NUM_CLASSES,
            width_mult=0.25,
            inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 1, 2]],
        ),
        (3, 32, 32),
    ),
    "mobilenet_v3": (_mobilenet_v3, (3, 32, 32)),
    "shufflenet_v2": (
        partial(ShuffleNetV2, [1, 1, 1], [8, 16, 32, 64, 128], num_classes=NUM_CLASSES),
        (3, 32, 32),
    ),
    "densenet": (
        partial(
            DenseNet,
            growth_rate=8,
            block_config=(2, 2),
            num_init_features=16,
            bn_size=2,
            num_classes=NUM_CLASSES,
        ),
        (3, 32, 32),
    ),
    "efficientnet": (_efficientnet, (3, 32, 32)),
    "regnet": (_regnet, (3, 32, 32)),
    "squeezenet": (partial(SqueezeNet, "1_1", num_classes=NUM_CLASSES), (3, 32, 32)),
    "googlenet": (_googlenet, (3, 32, 32)),
    "convnext": (
        partial(
            ConvNeXt,
            [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)],
            num_classes=NUM_CLASSES,
        ),
        (3, 32, 32),
    ),
    "vit": (
        partial(
            VisionTransformer,
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=NUM_CLASSES,
        ),
        (3, 32, 32),
    ),
}


def one_thread() -> contextlib.AbstractContextManager[None]:
    """One torch thread for a block (session fixtures; tests get ``one_torch_thread``)."""
    from autocompress.evaluators.latency import torch_threads

    return torch_threads(1)


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


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def tiny_resnet_space(knobs: tuple[str, ...]) -> tuple[nn.Module, torch.Tensor, Any]:
    """(model, example input, space over ``knobs``): the seeded ``test_resnet`` at 16x16 that the
    storage-knob tests (sparsity, sharing) count costs on."""
    from autocompress.compression import CompressionSpace
    from autocompress.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, CompressionSpace.from_model(model, x, knobs=knobs)
