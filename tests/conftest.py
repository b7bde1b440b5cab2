"""Suite-wide settings: a private cache directory and a fixed thread count for reproducible timing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep trained base models, LUTs and evaluation caches of the suite out of the user's cache."""
    path = tmp_path_factory.mktemp("autocompress-cache")
    os.environ["AUTOCOMPRESS_CACHE"] = str(path)
    return path


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
