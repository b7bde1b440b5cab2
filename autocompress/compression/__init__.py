"""Compression core: per-layer policies, the compression space and cost model, and ``compress``.

Example:
    >>> import torch
    >>> from autocompress.models import create_model
    >>> from autocompress.compression import CompressionSpace, compress, count_macs
    >>> model = create_model("test_resnet")
    >>> space = CompressionSpace.from_model(model, torch.randn(1, 3, 16, 16))
    >>> policy = space.uniform(prune=0.5, w_bits=8, a_bits=8)
    >>> small = compress(model, policy, space=space)
    >>> count_macs(small, torch.randn(1, 3, 16, 16)) == space.macs(policy)
    True
"""

from __future__ import annotations

from autocompress.compression.apply import compress
from autocompress.compression.counting import count_macs, count_params, count_size_bytes
from autocompress.compression.lowrank import LowRank
from autocompress.compression.policy import ALLOWED_BITS, CompressionPolicy, LayerAction
from autocompress.compression.quantize import ActQuant
from autocompress.compression.rnn import LowRankRNN
from autocompress.compression.space import (
    FEATURE_NAMES,
    KNOB_NAMES,
    CompressionSpace,
    DecisionPoint,
    Knob,
)

__all__ = [
    "ALLOWED_BITS",
    "FEATURE_NAMES",
    "KNOB_NAMES",
    "ActQuant",
    "CompressionPolicy",
    "CompressionSpace",
    "DecisionPoint",
    "Knob",
    "LayerAction",
    "LowRank",
    "LowRankRNN",
    "compress",
    "count_macs",
    "count_params",
    "count_size_bytes",
]
