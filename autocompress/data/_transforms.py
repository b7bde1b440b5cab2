"""Fit image tensors to a model's (C, H, W) input: resize, repeat or average channels, normalise."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def fit_images(x: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """Resize a (N, C, H, W) float batch in [0, 1] to ``input_shape`` and standardise per channel."""
    c, h, w = input_shape
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).repeat(1, c, 1, 1) if c != 1 else x.mean(1, keepdim=True)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).contiguous()


