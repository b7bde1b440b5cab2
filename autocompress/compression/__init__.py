"""Compression core: per-layer policies, the compression space and cost model, and ``compress``."""

from __future__ import annotations

from autocompress.compression.policy import ALLOWED_BITS, CompressionPolicy, LayerAction

__all__ = ["ALLOWED_BITS", "CompressionPolicy", "LayerAction"]
