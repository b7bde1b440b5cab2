"""autocompress: search per-layer compression policies and return a Pareto front of small models."""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import Any

# Loaded on first use: ``import autocompress.metrics`` (or ``rundir``) stays free of torch.
_EXPORTS: dict[str, str] = {
    "CompressionPolicy": "autocompress.compression",
    "CompressionSpace": "autocompress.compression",
    "LayerAction": "autocompress.compression",
    "compress": "autocompress.compression",
    "UserInputError": "autocompress.errors",
    "create_model": "autocompress.models",
    "list_models": "autocompress.models",
    "load_checkpoint": "autocompress.models",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
