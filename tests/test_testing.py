"""``autocompress.testing``: every registered strategy, knob and evaluator passes its contract
check, and each check fails on a plug-in that breaks its contract."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from autocompress.compression import CompressionPolicy
from autocompress.compression.knobs import KNOB_TYPES
from autocompress.evaluators import BaseEvaluator, EvalResult, list_evaluators
from autocompress.evaluators.latency import torch_threads
from autocompress.metrics import Direction
from autocompress.problem import Problem
from autocompress.search import list_searchers
from autocompress.search.base import BaseSearcher
from autocompress.testing import (
    TINY_STRATEGY_SETTINGS,
    check_evaluator,
    check_knob,
    check_searcher,
    tiny_context,
    tiny_data,
    tiny_model,
    tiny_problem,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

#: How the suite builds each registered evaluator on the tiny problem; a new evaluator adds itself.
EVALUATORS = {"compression": lambda problem: problem.evaluator}


@pytest.fixture(scope="session")
def problem(_isolated_cache: object) -> Problem:
    with torch_threads(1):
        return tiny_problem()


@pytest.mark.parametrize("strategy", list_searchers())
def test_every_strategy_passes_the_searcher_contract(strategy: str, problem: Problem) -> None:
    proposals = check_searcher(strategy, lambda: tiny_context(problem.space),
                               settings=TINY_STRATEGY_SETTINGS.get(strategy, {}))
    assert len(proposals) == 4


@pytest.mark.parametrize("knob", list(KNOB_TYPES))
def test_every_knob_passes_the_knob_contract(knob: str) -> None:
    space = check_knob(knob)
    assert any(knob in p.knobs for p in space.decision_points)


def test_every_evaluator_passes_the_evaluator_contract(problem: Problem) -> None:
    assert sorted(EVALUATORS) == list_evaluators(), "give a new evaluator a factory in EVALUATORS"
    for name, build in EVALUATORS.items():
        results = check_evaluator(build(problem), problem.space)
        assert results["compressed"].metrics["macs"] < results["identity"].metrics["macs"], name


def test_tiny_helpers_are_seeded() -> None:
    (m1, x1), (m2, x2) = tiny_model(), tiny_model()
    assert (m1(x1) == m2(x2)).all()
    (a, y), (b, z) = tiny_data(), tiny_data()
    assert a.equal(b) and y.equal(z) and a.shape == (64, 3, 16, 16) and int(y.max()) < 10
    assert not tiny_data(seed=1)[0].equal(a)


# -- each check fails on a plug-in that breaks its contract -----------------------------------------
class _UnseededSearcher(BaseSearcher):
    """Draws from the global random state: the same seed does not give the same proposals."""

    name: ClassVar[str] = "unseeded"

    def ask(self) -> CompressionPolicy:
        return self.context.space.sample(random.randrange(1 << 30))

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        pass


class _InvalidSearcher(_UnseededSearcher):
    """Proposes a layer the space does not have."""

    def ask(self) -> CompressionPolicy:
        return CompressionPolicy.from_dict({"_type": "autocompress.CompressionPolicy", "_version": 1,
                                            "_data": {"layers": {"no.such.layer": {"prune": 0.5}}}})


def test_the_searcher_check_catches_unseeded_and_invalid_proposals() -> None:
    with pytest.raises(AssertionError, match="same seed"):
        check_searcher(_UnseededSearcher)
    with pytest.raises(AssertionError, match="not valid in the space"):
        check_searcher(_InvalidSearcher)


def test_the_knob_check_catches_a_broken_unit_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    kt = KNOB_TYPES["rank"]
    monkeypatch.setattr(kt, "from_unit", lambda knob, u: knob.least_compressed)
    with pytest.raises(AssertionError, match="from_unit\\(1\\)"):
        check_knob("rank")


class _WrongMacs(BaseEvaluator):
    """Reports half the MACs the cost model predicts."""

    metrics: ClassVar[dict[str, Direction]] = {"acc": Direction.MAXIMIZE, "macs": Direction.MINIMIZE}

    def __init__(self, problem: Problem) -> None:
        self.space = problem.space

    def evaluate(self, policy: CompressionPolicy, fidelity: str = "full") -> EvalResult:
        return EvalResult(metrics={"acc": 0.5, "macs": self.space.macs(policy) / 2}, fidelity=fidelity)


def test_the_evaluator_check_catches_costs_off_the_cost_model(problem: Problem) -> None:
    with pytest.raises(AssertionError, match="the cost model says"):
        check_evaluator(_WrongMacs(problem), problem.space)
