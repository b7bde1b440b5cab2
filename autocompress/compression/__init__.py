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

import importlib
from typing import Any

# Names load on first use, so that a light module of the package (``metrics``, ``rundir``, a run
# directory's reader) does not pay for torch by importing this package's ``__init__``.
_EXPORTS: dict[str, str] = {
    "compress": "autocompress.compression.apply",
    "count_bops": "autocompress.compression.counting",
    "count_macs": "autocompress.compression.counting",
    "count_params": "autocompress.compression.counting",
    "count_size_bytes": "autocompress.compression.counting",
    "LowRank": "autocompress.compression.lowrank",
    "ALLOWED_BITS": "autocompress.compression.policy",
    "CompressionPolicy": "autocompress.compression.policy",
    "LayerAction": "autocompress.compression.policy",
    "ActQuant": "autocompress.compression.quantize",
    "LowRankRNN": "autocompress.compression.lowrank_rnn",
    "FEATURE_NAMES": "autocompress.compression.space",
    "KNOB_NAMES": "autocompress.compression.space",
    "CompressionSpace": "autocompress.compression.space",
    "DecisionPoint": "autocompress.compression.space",
    "Knob": "autocompress.compression.space",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress.compression' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
