"""TorchScript and pickled-module files of a model (the ``torchscript`` and ``pt`` formats)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn


def torchscript_bytes(model: nn.Module, example_input: Tensor) -> bytes:
    """``torch.jit.trace`` of the model in eval mode, saved by ``torch.jit.save`` (loads without its code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model.eval(), (example_input,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def pt_bytes(model: nn.Module) -> bytes:
    """The whole module in eval mode pickled by ``torch.save`` (loads with its classes importable)."""
    buf = io.BytesIO()
    torch.save(model.eval(), buf)
    return buf.getvalue()
