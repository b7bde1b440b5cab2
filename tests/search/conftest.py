"""Shared fixtures: one really trained tiny problem (test_convnet on digits) and specs matching it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autocompress.evaluators.latency import torch_threads
from autocompress.problem import Problem
from autocompress.search import SearchSpec
from autocompress.search.runner import build_problem

#: Settings every search test shares: a 3-point pruning space, a short training, small subsets;
#: exact channel ratios (``round_to`` 1), so these tests do not depend on the machine's SIMD width.
TINY: dict[str, Any] = {
    "model": "test_convnet",
    "data": "digits",
    "knobs": ["prune"],
    "round_to": 1,
    "train_epochs": 4,
    "evaluator": {"val_samples": 96, "low_fidelity_val_samples": 48, "recalib_batches": 2},
    "trials": 3,
}


def make_tiny_spec(out: Path | str, **overrides: Any) -> SearchSpec:
    """A spec over the tiny problem, written to ``out``."""
    return SearchSpec.from_dict({**TINY, "out": str(out), **overrides})


@pytest.fixture()
def tiny_spec() -> Callable[..., SearchSpec]:
    """``tiny_spec(out, **overrides)`` (a fixture: test directories are not packages)."""
    return make_tiny_spec


@pytest.fixture(scope="session")
def search_problem(_isolated_cache: object) -> Problem:
    """The problem every in-process search test runs on (trained once per session)."""
    with torch_threads(1):
        return build_problem(make_tiny_spec("unused"), progress=False)


@pytest.fixture(params=["optuna", "file"])
def ledger_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per ledger a new run can record into: the Optuna study
    (``AUTOCOMPRESS_LEDGER=optuna``), then ``ledger.jsonl``, the default of strategies that do not
    sample from Optuna (the variable unset)."""
    if request.param == "optuna":
        monkeypatch.setenv("AUTOCOMPRESS_LEDGER", "optuna")
    else:
        monkeypatch.delenv("AUTOCOMPRESS_LEDGER", raising=False)
    return str(request.param)
