"""Suite-wide settings: a private cache directory and a fixed thread count for reproducible timing.

``make test`` runs the suite on two pytest-xdist workers (``-n 2``). The workers then share one
cache directory (a base model is trained once, under the cache's file lock), and each worker and
every process it starts uses one thread: two single-threaded workers keep two cores busy, where
two-threaded processes on the same cores spin against each other. Slow end-to-end tests are handed
out first so that neither worker is left with one of them at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep trained base models, LUTs and evaluation caches of the suite out of the user's cache."""
    if _WORKER:  # the workers' base temp dirs share a parent: one cache for the whole run
        path = tmp_path_factory.getbasetemp().parent / "autocompress-cache"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("autocompress-cache")
    os.environ["AUTOCOMPRESS_CACHE"] = str(path)
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the test, the previous count restored after.

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads spin
    against each other (10x slower measured). The test directories of tiny models
    (``ONE_THREAD_DIRS``) use it for every test, ``test_problem.py`` and others ask for it.
    """
    from autocompress.evaluators.latency import torch_threads

    with torch_threads(1):
        yield


#: Test directories of tiny models: every test in them runs on one torch thread.
ONE_THREAD_DIRS = ("compression", "envs", "evaluators", "policies", "search")


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest) -> None:
    """``one_torch_thread`` for every test under ``ONE_THREAD_DIRS`` (other tests ask for it)."""
    rel = Path(str(request.node.path)).resolve().relative_to(Path(__file__).resolve().parent)
    if rel.parts[0] in ONE_THREAD_DIRS:
        request.getfixturevalue("one_torch_thread")


def suite_threads() -> int:
    """The torch thread count of every test that does not ask for another."""
    return 1 if _WORKER else max(1, min(2, os.cpu_count() or 1))


@pytest.fixture
def suite_thread_count() -> int:
    """``suite_threads()`` for tests (a test module cannot import this conftest by name: every
    test directory has its own ``conftest``)."""
    return suite_threads()


def pytest_configure(config: pytest.Config) -> None:
    if _WORKER:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
    torch.set_num_threads(suite_threads())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow end-to-end tests first (stable order otherwise), so parallel workers end together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
