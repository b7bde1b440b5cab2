"""Model registry: built-in CIFAR-style models, torchvision by ``tv:`` prefix, user factories."""

from __future__ import annotations

from autocompress.models import (  # noqa: F401
    cifar_alexnet,
    cifar_mobilenet,
    cifar_resnet,
    cifar_vgg,
    sequence,
    testing_models,
)
from autocompress.models._registry import (
    ModelEntry,
    create_model,
    default_input_shape,
    list_models,
    load_checkpoint,
    model_entry,
    register_model,
)

__all__ = [
    "ModelEntry",
    "create_model",
    "default_input_shape",
    "list_models",
    "load_checkpoint",
    "model_entry",
    "register_model",
]
