"""Tiny instances of every torchvision classification family (real torchvision classes, small widths)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
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
    model = VGG(make_layers([8, "M", 16, "M", 32, 32, "M"], batch_norm=True), num_classes=NUM_CLASSES)
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
    params = BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return RegNet(params, num_classes=NUM_CLASSES, stem_width=8)


# name -> (factory, input shape (C, H, W))
TINY_FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "resnet": (partial(ResNet, BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES, width_per_group=64), (3, 32, 32)),
    "resnext": (
        partial(ResNet, Bottleneck, [1, 1, 1, 1], num_classes=NUM_CLASSES, groups=4, width_per_group=4),
        (3, 32, 32),
    ),
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
        partial(DenseNet, growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=NUM_CLASSES),
        (3, 32, 32),
    ),
    "efficientnet": (_efficientnet, (3, 32, 32)),
    "regnet": (_regnet, (3, 32, 32)),
    "squeezenet": (partial(SqueezeNet, "1_1", num_classes=NUM_CLASSES), (3, 32, 32)),
    "googlenet": (
        partial(tvm.GoogLeNet, num_classes=NUM_CLASSES, aux_logits=False, init_weights=True),
        (3, 32, 32),
    ),
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
