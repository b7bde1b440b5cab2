"""Pure helpers of the compression environment: action encoding, budget clipping, state, rewards.

Everything here is a plain function of numbers, knobs and cost callables, so it is unit-tested
without a model, an evaluator or an agent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from autocompress.compression.knobs import from_unit as knob_from_unit
from autocompress.compression.knobs import knob_names
from autocompress.compression.knobs import to_unit as knob_to_unit
from autocompress.errors import UserInputError
from autocompress.metrics import COST_METRICS, EVAL_METRICS, MAXIMIZED, Budget

#: Metrics a hard or soft budget may bound (every cost of the vocabulary, all minimised).
#: ``latency_ms`` is the predicted latency.
BUDGET_METRICS: tuple[str, ...] = COST_METRICS

#: Reward functions of the environment.
REWARDS: tuple[str, ...] = ("acc", "r_flops", "lagrangian", "weighted")

#: Knobs in action order (the action has one component per enabled knob, in this order):
#: the knob registry's order.
KNOB_ORDER: tuple[str, ...] = knob_names()


def resolve_budgets(
    budgets: Mapping[str, float | Budget] | None, base: Mapping[str, float], what: str = "budgets"
) -> dict[str, float]:
    """Absolute budgets from absolute values or ``Budget`` objects (``Budget(0.5)``: half the base
    model's value of the key's metric; a named budget must bound the key's metric); bad keys raise."""
    out: dict[str, float] = {}
    for metric, value in (budgets or {}).items():
        if metric not in BUDGET_METRICS:
            raise UserInputError(
                f"{what} metric {metric!r} is not supported; allowed: {', '.join(BUDGET_METRICS)}"
            )
        if isinstance(value, Budget):
            out[metric] = value.bind(metric).resolve(base[metric])
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise UserInputError(
                f"{what}[{metric!r}]={value!r} is not allowed; allowed: a number > 0 or a Budget(fraction)"
            )
        out[metric] = float(value)
    return out


# --- knobs and the action encoding -------------------------------------------------------------
# The knob <-> [0, 1] mapping is the knob registry's (``compression/knobs.py``), shared with the
# searchers and the budget projection.
decode_knob = knob_from_unit
encode_knob = knob_to_unit


def to_unit(action: np.ndarray) -> np.ndarray:
    """Env action in [-1, 1] -> ``u`` in [0, 1] (1 = most compressed)."""
    return np.clip((np.asarray(action, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)


def from_unit(u: np.ndarray) -> np.ndarray:
    """``u`` in [0, 1] -> env action in [-1, 1]."""
    return (np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def toward_most_compressed(u: np.ndarray, lam: float) -> np.ndarray:
    """The clipping path: ``u + lam * (1 - u)`` moves every knob the same share of the way to max.

    ``lam = 0`` is the agent's action, ``lam = 1`` is the most compressed setting of the point.
    Every knob moves monotonically in ``lam``, so with monotone costs every budget is monotone too.
    """
    u = np.asarray(u, dtype=np.float64)
    if lam >= 1.0:
        return np.ones_like(u)
    return np.clip(u + lam * (1.0 - u), 0.0, 1.0)


def clip_to_budgets(
    u: np.ndarray,
    feasible: Callable[[np.ndarray], bool],
    *,
    tol: float = 1e-4,
    max_iter: int = 60,
) -> tuple[np.ndarray, float]:
    """Smallest move ``lam`` along ``toward_most_compressed`` that makes ``feasible`` true.

    ``feasible(u')`` must evaluate the *complete* candidate (prefix, this point at ``u'``, every
    later point at its most compressed value) against *all* hard budgets. ``feasible`` of the
    all-ones action is the caller's invariant (it is what the previous step guaranteed), so the
    returned action always satisfies ``feasible``: bisection keeps ``hi`` feasible and returns it.
    With several budgets the feasible set of ``lam`` is the intersection of one interval
    ``[lam_b, 1]`` per budget (monotone costs), so this finds ``max_b lam_b`` in one bisection.

    Returns:
        ``(u_clipped, lam)``; ``lam == 0`` when ``u`` was already feasible.
    """
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    if feasible(u):
        return u, 0.0
    lo, hi = 0.0, 1.0
    best = toward_most_compressed(u, 1.0)
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        mid = 0.5 * (lo + hi)
        cand = toward_most_compressed(u, mid)
        if feasible(cand):
            hi, best = mid, cand
        else:
            lo = mid
    return best, hi


# --- observation -------------------------------------------------------------------------------
def budget_state(
    base: float, current: float, floor: float, target: float | None
) -> tuple[float, float, float]:
    """AMC's running budget state for one metric, as fractions of the base model's value.

    Args:
        base: the uncompressed model's value.
        current: value with the decided prefix and every remaining point untouched.
        floor: value with the decided prefix and every remaining point at its most compressed.
        target: the budget (absolute) or ``None`` when the metric is unbounded.

    Returns:
        ``(removed so far, still removable in the rest, target)``, each clipped to [0, 1].
    """
    if base <= 0:
        return 0.0, 0.0, 1.0
    removed = (base - current) / base
    rest = (current - floor) / base
    tgt = 1.0 if target is None else target / base
    return tuple(float(min(1.0, max(0.0, v))) for v in (removed, rest, tgt))  # type: ignore[return-value]


# --- rewards -----------------------------------------------------------------------------------
def reward_acc(metrics: Mapping[str, float]) -> float:
    """AMC's reward under action clipping: the (proxy) accuracy itself."""
    return float(metrics["acc"])


def reward_r_flops(metrics: Mapping[str, float]) -> float:
    """AMC's R_FLOPs = -error * log(FLOPs): trades accuracy for fewer FLOPs without a hard budget."""
    flops = max(float(metrics["flops"]), 1.0)
    return -(1.0 - float(metrics["acc"])) * math.log(flops)


def reward_lagrangian(
    metrics: Mapping[str, float],
    soft_budgets: Mapping[str, float],
    multipliers: Mapping[str, float] | None = None,
) -> float:
    """Accuracy minus ``lambda_m * max(0, value_m / budget_m - 1)`` for each soft budget ``m``.

    The penalty is relative (a 10% overshoot costs ``0.1 * lambda``), so multipliers are
    comparable across metrics; the default multiplier is 1.
    """
    out = float(metrics["acc"])
    for m, budget in soft_budgets.items():
        lam = 1.0 if multipliers is None else float(multipliers.get(m, 1.0))
        out -= lam * max(0.0, float(metrics[m]) / float(budget) - 1.0)
    return out


def reward_weighted(
    metrics: Mapping[str, float], weights: Mapping[str, float], base: Mapping[str, float]
) -> float:
    """Weighted sum of "higher is better" scores: ``acc`` as is, each cost as the fraction removed.

    ``score_m = 1 - value_m / base_m`` for a cost metric, so every term lies roughly in [0, 1] and
    a weight says how much one unit of that objective is worth.
    """
    out = 0.0
    for m, w in weights.items():
        if m in MAXIMIZED:
            out += float(w) * float(metrics[m])
        else:
            out += float(w) * (1.0 - float(metrics[m]) / float(base[m]))
    return out


def compute_reward(
    kind: str,
    metrics: Mapping[str, float],
    *,
    soft_budgets: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    base: Mapping[str, float] | None = None,
) -> float:
    """Dispatch on the reward name (one of ``REWARDS``)."""
    if kind == "acc":
        return reward_acc(metrics)
    if kind == "r_flops":
        return reward_r_flops(metrics)
    if kind == "lagrangian":
        return reward_lagrangian(metrics, soft_budgets or {}, weights)
    if kind == "weighted":
        return reward_weighted(metrics, weights or {}, base or {})
    raise UserInputError(f"reward={kind!r} is not supported; allowed: {', '.join(REWARDS)}")


def check_reward_settings(
    kind: str, weights: Mapping[str, float] | None, soft_budgets: Mapping[str, float]
) -> dict[str, float]:
    """Validate ``reward`` / ``reward_weights`` and return the weights actually used."""
    if kind not in REWARDS:
        raise UserInputError(f"reward={kind!r} is not supported; allowed: {', '.join(REWARDS)}")
    allowed = EVAL_METRICS
    for m, w in (weights or {}).items():
        if m not in allowed:
            raise UserInputError(f"reward_weights metric {m!r} is not supported; allowed: {', '.join(allowed)}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise UserInputError(f"reward_weights[{m!r}]={w!r} is not a finite number")
    if kind == "weighted":
        return dict(weights) if weights else {"acc": 1.0, "macs": 0.25}
    if kind == "lagrangian":
        if not soft_budgets:
            raise UserInputError("reward='lagrangian' needs soft_budgets (e.g. {'macs': Budget(0.5)})")
        return {m: float((weights or {}).get(m, 1.0)) for m in soft_budgets}
    return dict(weights or {})


def sequence_or_none(value: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate a ``budget_range`` (two fractions ``0 < lo <= hi <= 1``)."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserInputError(f"budget_range={value!r} is not allowed; allowed: (low, high) fractions") from None
    if not (0.0 < lo <= hi <= 1.0):
        raise UserInputError(f"budget_range={value!r} is not allowed; allowed: 0 < low <= high <= 1")
    return lo, hi
