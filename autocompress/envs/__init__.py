"""The AMC-style Gymnasium environment; importing this package registers ``autocompress/Compression-v0``."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from autocompress.envs._features import BUDGET_METRICS, REWARDS, Budget
from autocompress.envs.compression_env import CompressionEnv, EpisodeRecord, make_eval_result

ENV_ID = "autocompress/Compression-v0"

if ENV_ID not in registry:
    # No kwargs: ``gymnasium.make(ENV_ID)`` builds ``Problem.default()`` with a 50% MACs budget.
    register(id=ENV_ID, entry_point="autocompress.envs.compression_env:CompressionEnv")

__all__ = [
    "BUDGET_METRICS",
    "ENV_ID",
    "REWARDS",
    "Budget",
    "CompressionEnv",
    "EpisodeRecord",
    "make_eval_result",
]
