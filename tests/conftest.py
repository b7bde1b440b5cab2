"""Suite-wide settings: a private cache directory and a fixed thread count for reproducible timing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep trained base models, LUTs and evaluation caches of the suite out of the user's cache."""
    path = tmp_path_factory.mktemp("autocompress-cache")
    os.environ["AUTOCOMPRESS_CACHE"] = str(path)
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the test, the previous count restored after.

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads spin
    against each other (10x slower measured). The test directories of tiny models (compression,
    envs, evaluators, policies, search, ``test_problem.py``) use it for every test.
    """
    from autocompress.evaluators.latency import torch_threads

    with torch_threads(1):
        yield


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
