"""Budget projection for the Optuna samplers: sample a policy's *shape*, place it on the budget.

Sampling every knob of every layer independently piles candidates far below a budget: with a 50%
MACs budget and prune ratios uniform in [0, 0.8], a typical draw keeps about a quarter of the MACs,
so a short search never looks where accuracy is highest (just under the budget). With projection
each trial also samples ``budget_fill`` in [``fill_low``, 1]; the per-knob values are read as
*relative* compression (0 = untouched, 1 = most compressed) and scaled by one common factor λ so the
policy's predicted cost on the primary hard budget is ``budget_fill`` × the budget's limit (largest
cost not above it). The sampler still learns the per-layer allocation; ``budget_fill`` gives it a
direct handle on the cost axis, so the front spans costs from ``fill_low`` × the limit up to it.
The same parameters always map to the same policy (a pure function of parameters and space).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.search.base import SearchContext

#: Budgets the projection can aim at: costs the space (or the latency table) predicts.
PROJECTABLE = ("macs", "flops", "params", "size_bytes", "bops", "latency_ms")
BUDGET_FILL = "budget_fill"


def _unit(knob: object, value: float) -> float:
    """Relative compression of ``value`` on ``knob``: 0 = least, 1 = most compressed."""
    choices = getattr(knob, "choices", None)
    least, most = knob.least_compressed, knob.most_compressed  # type: ignore[attr-defined]
    if choices:
        order = sorted(choices, reverse=float(most) < float(least))  # least -> most compressed
        return order.index(value) / max(1, len(order) - 1) if value in order else 0.0
    span = float(most) - float(least)
    return 0.0 if span == 0 else min(1.0, max(0.0, (float(value) - float(least)) / span))


def _value(knob: object, u: float) -> float:
    choices = getattr(knob, "choices", None)
    least, most = knob.least_compressed, knob.most_compressed  # type: ignore[attr-defined]
    if choices:
        order = sorted(choices, reverse=float(most) < float(least))
        return order[min(len(order) - 1, int(round(u * (len(order) - 1))))]
    return float(least) + u * (float(most) - float(least))


class BudgetProjector:
    """Scale a policy's relative compression so its predicted ``metric`` lands at a target."""

    def __init__(self, space: CompressionSpace, metric: str, limit: float,
                 cost: Callable[[CompressionPolicy], float], fill_low: float = 0.25) -> None:
        if not 0.0 < fill_low <= 1.0:
            raise ValueError(f"fill_low={fill_low!r} must be in (0, 1]")
        self.space, self.metric, self.limit, self.cost, self.fill_low = space, metric, limit, cost, fill_low

    def _scaled(self, units: Mapping[tuple[str, str], float], lam: float) -> CompressionPolicy:
        from autocompress.compression import CompressionPolicy, LayerAction

        layers: dict[str, dict[str, float]] = {}
        for (point, knob_name), u in units.items():
            knob = self.space_points[point].knobs[knob_name]
            layers.setdefault(point, {})[knob_name] = _value(knob, min(1.0, lam * u))
        return CompressionPolicy({p: LayerAction(**kw) for p, kw in layers.items()})

    @property
    def space_points(self) -> dict[str, object]:
        return {p.name: p for p in self.space.decision_points}

    def __call__(self, policy: CompressionPolicy, fill: float, iters: int = 40) -> CompressionPolicy:
        """The policy's shape scaled to cost ``fill`` × limit (the cheapest reachable if lower)."""
        points = self.space_points
        units = {}
        for name, action in policy.layers.items():
            point = points.get(name)
            if point is None:
                continue
            for knob_name, knob in point.knobs.items():
                units[(name, knob_name)] = _unit(knob, getattr(action, knob_name))
        positive = [u for u in units.values() if u > 0]
        if not positive:
            return policy
        target = fill * self.limit
        lam_hi = 1.0 / min(positive)  # every knob saturated at its most compressed value
        if self.cost(self._scaled(units, lam_hi)) > target:
            return self._scaled(units, lam_hi)  # unreachable with this shape: most compressed
        lo, hi = 0.0, lam_hi  # cost(lo) may exceed target, cost(hi) <= target; cost falls with λ
        if self.cost(self._scaled(units, lo)) <= target:
            return self._scaled(units, lo)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if self.cost(self._scaled(units, mid)) <= target:
                hi = mid
            else:
                lo = mid
        return self._scaled(units, hi)


def make_projector(context: SearchContext, fill_low: float = 0.25) -> BudgetProjector | None:
    """A projector onto the first hard budget the space can predict; None without one."""
    for budget in context.budgets:
        metric = budget.metric
        if metric not in PROJECTABLE or budget.name not in context.limits:
            continue
        if metric == "latency_ms" and context.predict_latency is None:
            continue
        limit = float(context.limits[budget.name])

        def cost(policy: CompressionPolicy, _m: str = metric) -> float:
            return float(context.predicted_metrics(policy)[_m])

        return BudgetProjector(context.space, metric, limit, cost, fill_low)
    return None
