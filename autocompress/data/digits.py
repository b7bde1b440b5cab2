"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the embedded, fully offline default."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from autocompress.data._registry import register_dataset
from autocompress.data._transforms import fit_images


@register_dataset("digits", description="scikit-learn load_digits, 1,797 8x8 images, 10 classes (bundled)")
def load_digits_dataset(root: str | None, input_shape: tuple[int, int, int]) -> tuple[TensorDataset, int]:
    """All digits as one in-memory TensorDataset, resized to ``input_shape``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return TensorDataset(fit_images(x, input_shape), y), 10
