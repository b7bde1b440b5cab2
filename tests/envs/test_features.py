"""Pure helpers of the env: budgets, action encoding, clipping, budget state, rewards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autocompress.envs._features import (
    Budget,
    budget_state,
    check_reward_settings,
    clip_to_budgets,
    compute_reward,
    from_unit,
    resolve_budgets,
    reward_lagrangian,
    reward_r_flops,
    reward_weighted,
    sequence_or_none,
    to_unit,
    toward_most_compressed,
)
from autocompress.errors import UserInputError

pytestmark = pytest.mark.timeout(60)


def test_budget_resolves_fraction_and_absolute() -> None:
    base = {"macs": 1000.0, "params": 50.0}
    out = resolve_budgets({"macs": Budget(0.5), "params": 20}, base)
    assert out == {"macs": 500.0, "params": 20.0}


@pytest.mark.parametrize("bad", [{"latency": 1.0}, {"macs": -1.0}, {"macs": float("nan")}, {"macs": True}])
def test_bad_budgets_raise(bad: dict) -> None:
    with pytest.raises(UserInputError):
        resolve_budgets(bad, {"macs": 1.0})


def test_budget_fraction_must_be_positive() -> None:
    with pytest.raises(UserInputError, match="Budget fraction"):
        Budget(0.0)


def test_unit_mapping_round_trips() -> None:
    u = np.array([0.0, 0.25, 1.0])
    a = from_unit(u)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, [-1.0, -0.5, 1.0])
    np.testing.assert_allclose(to_unit(a), u)
    np.testing.assert_allclose(to_unit(np.array([-5.0, 5.0])), [0.0, 1.0])


def test_toward_most_compressed_path() -> None:
    u = np.array([0.2, 0.6])
    np.testing.assert_allclose(toward_most_compressed(u, 0.0), u)
    np.testing.assert_allclose(toward_most_compressed(u, 0.5), [0.6, 0.8])
    np.testing.assert_array_equal(toward_most_compressed(u, 1.0), [1.0, 1.0])


def _bilinear_cost(u: np.ndarray) -> float:
    # Two coupled knobs: the cost is a product (as for in/out channels of one layer).
    return (1.0 - 0.8 * u[0]) * (1.0 - 0.5 * u[1])


@pytest.mark.parametrize("budget", [0.9, 0.5, 0.3, 0.1])
def test_clip_is_minimal_and_feasible(budget: float) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        u = rng.uniform(0, 1, size=2)

        def feasible(x: np.ndarray, b: float = budget) -> bool:
            return _bilinear_cost(x) <= b

        clipped, lam = clip_to_budgets(u, feasible, tol=1e-6)
        assert feasible(clipped)
        if lam == 0.0:
            np.testing.assert_allclose(clipped, u)
        else:
            # Just short of lam the candidate breaks the budget: the clip is as small as it can be.
            assert not feasible(toward_most_compressed(u, max(0.0, lam - 2e-6)))


def test_clip_with_two_budgets_satisfies_both() -> None:
    def cost_a(u: np.ndarray) -> float:
        return 1.0 - 0.9 * u[0]

    def cost_b(u: np.ndarray) -> float:
        return 1.0 - 0.9 * u[1]

    u = np.array([0.1, 0.5])
    clipped, lam = clip_to_budgets(u, lambda x: cost_a(x) <= 0.4 and cost_b(x) <= 0.7, tol=1e-7)
    assert cost_a(clipped) <= 0.4 and cost_b(clipped) <= 0.7
    # The binding budget is a (needs u0 >= 2/3): lam = (2/3 - 0.1) / 0.9.
    assert lam == pytest.approx((2 / 3 - 0.1) / 0.9, abs=1e-6)


def test_clip_keeps_feasibility_for_non_monotone_cost() -> None:
    # A noisy (non-monotone) predictor: bisection still returns a feasible point because hi stays feasible.
    def feasible(u: np.ndarray) -> bool:
        return (math.sin(40 * u[0]) + 2 * (1 - u[0])) <= 0.5 or u[0] >= 1.0

    clipped, _ = clip_to_budgets(np.array([0.0]), feasible)
    assert feasible(clipped)


def test_budget_state_fractions() -> None:
    removed, rest, target = budget_state(base=100.0, current=80.0, floor=30.0, target=50.0)
    assert (removed, rest, target) == pytest.approx((0.2, 0.5, 0.5))
    assert budget_state(100.0, 100.0, 100.0, None) == (0.0, 0.0, 1.0)
    assert budget_state(100.0, 100.0, 50.0, 400.0)[2] == 1.0  # clipped into the box


def test_rewards() -> None:
    m = {"acc": 0.9, "flops": math.e**10, "macs": 60.0, "params": 10.0}
    assert compute_reward("acc", m) == pytest.approx(0.9)
    assert reward_r_flops(m) == pytest.approx(-0.1 * 10)
    # Lagrangian: 20% over the macs soft budget with multiplier 2 costs 0.4.
    assert reward_lagrangian(m, {"macs": 50.0}, {"macs": 2.0}) == pytest.approx(0.9 - 0.4)
    assert reward_lagrangian(m, {"macs": 100.0}) == pytest.approx(0.9)
    # Weighted: acc plus 0.5 x fraction of MACs removed (40%).
    assert reward_weighted(m, {"acc": 1.0, "macs": 0.5}, {"macs": 100.0}) == pytest.approx(0.9 + 0.2)


def test_r_flops_prefers_fewer_flops_at_equal_accuracy() -> None:
    assert reward_r_flops({"acc": 0.8, "flops": 1e6}) > reward_r_flops({"acc": 0.8, "flops": 1e8})


def test_reward_settings_validation() -> None:
    with pytest.raises(UserInputError, match="reward="):
        check_reward_settings("nope", None, {})
    with pytest.raises(UserInputError, match="soft_budgets"):
        check_reward_settings("lagrangian", None, {})
    with pytest.raises(UserInputError, match="reward_weights metric"):
        check_reward_settings("weighted", {"speed": 1.0}, {})
    assert check_reward_settings("lagrangian", None, {"macs": 5.0}) == {"macs": 1.0}
    assert check_reward_settings("weighted", None, {})["acc"] == 1.0


def test_budget_range_validation() -> None:
    assert sequence_or_none((0.2, 0.6)) == (0.2, 0.6)
    assert sequence_or_none(None) is None
    for bad in [(0.6, 0.2), (0.0, 0.5), (0.5,), "ab"]:
        with pytest.raises(UserInputError, match="budget_range"):
            sequence_or_none(bad)  # type: ignore[arg-type]
