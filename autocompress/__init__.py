"""autocompress: search per-layer compression policies and return a Pareto front of small models."""

from __future__ import annotations

__version__ = "0.1.0"

from autocompress.compression import CompressionPolicy, CompressionSpace, LayerAction, compress
from autocompress.errors import UserInputError
from autocompress.models import create_model, list_models, load_checkpoint

__all__ = [
    "CompressionPolicy",
    "CompressionSpace",
    "LayerAction",
    "UserInputError",
    "__version__",
    "compress",
    "create_model",
    "list_models",
    "load_checkpoint",
]
