"""Budget projection for the Optuna samplers: sample a policy's *shape*, place it on the budget.

Sampling every knob of every layer independently piles candidates far below a budget: with a 50%
MACs budget and prune ratios uniform in [0, 0.8], a typical draw keeps about a quarter of the MACs,
so a short search never looks where accuracy is highest (just under the budget). With projection
each trial also samples ``budget_fill`` in [``fill_low``, 1]; the values of the knobs the budget's
metric depends on are read as *relative* compression (0 = untouched, 1 = most compressed) and
scaled by one common factor λ so the policy's predicted cost on the hard budget is the
target (largest cost not above it); with several budgets the cost is the largest share of its
limit any of them uses, so the most binding one sets λ and their order does not matter
(:func:`make_projector`). The sampler still learns the per-layer allocation;
``budget_fill`` gives it a direct handle on the cost axis.

* **Only the knobs the metric depends on are projected.** A knob counts when setting it to its
  most compressed value everywhere lowers the predicted cost (so ``a_bits`` is left alone under a
  size or MACs budget, and a latency table decides for a latency budget). The other knobs keep the
  sampled value: scaling activation bits down to meet a size budget only destroyed accuracy.
* **Knobs nothing rewards are not searched.** A knob that neither the budget nor any objective
  or other budget depends on (``a_bits`` when only accuracy, size and MACs count) can only cost
  accuracy; it is held at its least compressed value (``held``) and gets no sampler parameter.
  Add ``bops`` or a predicted latency to the objectives to search it.
* **The target stays in the reachable range.** ``target = fill × limit`` while the shape's most
  compressed cost (every projected knob saturated) lies below ``fill_low × limit``; when that floor
  is higher (latency budgets: a table's floor is often close to the limit), ``fill`` spreads the
  target over ``[floor, limit]`` instead, so proposals do not pile up saturated at the floor.

The same parameters always map to the same policy (a pure function of parameters and space).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from autocompress.compression.knobs import from_unit, to_unit
from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.metrics import COST_METRICS

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.search.base import SearchContext

#: Budgets the projection can aim at: costs the space (or the latency table) predicts.
PROJECTABLE = COST_METRICS
BUDGET_FILL = "budget_fill"


def _unit(knob: object, value: float) -> float:
    """Relative compression of ``value`` on ``knob``: 0 = least, 1 = most compressed (the knob
    registry's unit mapping, shared with the environment and the baseline searchers)."""
    return to_unit(knob, value)


def _value(knob: object, u: float) -> float:
    return from_unit(knob, u)


def cost_knobs(space: CompressionSpace, cost: Callable[[CompressionPolicy], float]) -> tuple[str, ...]:
    """Knob names whose most compressed value (at every point) lowers ``cost`` below the base's."""
    base = float(cost(space.identity()))
    names: list[str] = []
    for p in space.decision_points:
        names.extend(k for k in p.knobs if k not in names)
    out = []
    for k in names:
        squeezed = CompressionPolicy({
            p.name: LayerAction(**{k: p.knobs[k].most_compressed})
            for p in space.decision_points if k in p.knobs
        })
        if float(cost(squeezed)) < base * (1.0 - 1e-9):
            out.append(k)
    return tuple(out)


class BudgetProjector:
    """Scale a policy's relative compression so its predicted ``metric`` lands at a target.

    Args:
        space: the compression space.
        metric: the budget's metric (for messages).
        limit: the budget's absolute limit.
        cost: predicted ``metric`` of a policy.
        fill_low: lowest ``budget_fill`` sampled (targets start at ``fill_low × limit``).
        knobs: knob names to project (default: those ``cost`` depends on, see :func:`cost_knobs`).
        held: knob names held at their least compressed value (nothing rewards them).
    """

    def __init__(self, space: CompressionSpace, metric: str, limit: float,
                 cost: Callable[[CompressionPolicy], float], fill_low: float = 0.25,
                 knobs: tuple[str, ...] | None = None, held: tuple[str, ...] = ()) -> None:
        if not 0.0 < fill_low <= 1.0:
            raise ValueError(f"fill_low={fill_low!r} must be in (0, 1]")
        self.space, self.metric, self.limit, self.cost, self.fill_low = space, metric, limit, cost, fill_low
        self.knobs = cost_knobs(space, cost) if knobs is None else tuple(knobs)
        self.held = tuple(k for k in held if k not in self.knobs)

    def _scaled(self, units: Mapping[tuple[str, str], float], lam: float,
                fixed: Mapping[str, Mapping[str, float]]) -> CompressionPolicy:
        layers: dict[str, dict[str, float]] = {p: dict(kw) for p, kw in fixed.items()}
        for (point, knob_name), u in units.items():
            knob = self.space_points[point].knobs[knob_name]
            layers.setdefault(point, {})[knob_name] = _value(knob, min(1.0, lam * u))
        return CompressionPolicy({p: LayerAction(**kw) for p, kw in layers.items()})

    @property
    def space_points(self) -> dict[str, object]:
        return {p.name: p for p in self.space.decision_points}

    def target(self, floor: float, fill: float) -> float:
        """The cost aimed at for ``fill`` given the shape's lowest reachable cost ``floor``."""
        low = self.fill_low * self.limit
        if floor <= low:
            return fill * self.limit
        t = 1.0 if self.fill_low >= 1.0 else (fill - self.fill_low) / (1.0 - self.fill_low)
        return floor + min(1.0, max(0.0, t)) * (self.limit - floor)

    def saturate(self, policy: CompressionPolicy) -> CompressionPolicy:
        """The policy's shape with every projected knob at its most compressed (its floor)."""
        units, fixed = self._split(policy)
        positive = [u for u in units.values() if u > 0]
        return self._scaled(units, 1.0 / min(positive), fixed) if positive else policy

    def _split(self, policy: CompressionPolicy
               ) -> tuple[dict[tuple[str, str], float], dict[str, dict[str, float]]]:
        points = self.space_points
        units: dict[tuple[str, str], float] = {}
        fixed: dict[str, dict[str, float]] = {}
        for name, action in policy.layers.items():
            point = points.get(name)
            if point is None:
                continue
            for knob_name, knob in point.knobs.items():  # type: ignore[attr-defined]
                if knob_name in self.knobs:
                    units[(name, knob_name)] = _unit(knob, getattr(action, knob_name))
                elif knob_name in self.held:
                    fixed.setdefault(name, {})[knob_name] = knob.least_compressed
                else:
                    fixed.setdefault(name, {})[knob_name] = getattr(action, knob_name)
        return units, fixed

    def __call__(self, policy: CompressionPolicy, fill: float, iters: int = 40) -> CompressionPolicy:
        """The policy's shape scaled to the target of ``fill`` (the cheapest reachable if higher)."""
        return self.to_cost(policy, lambda floor: self.target(floor, fill), iters)

    def to_cost(self, policy: CompressionPolicy, target: float | Callable[[float], float],
                iters: int = 40) -> CompressionPolicy:
        """The policy's shape scaled so its cost is the largest not above ``target`` (a number, or
        a function of the shape's floor, its most compressed cost); the floor if unreachable."""
        units, fixed = self._split(policy)
        positive = [u for u in units.values() if u > 0]
        if not positive:
            return policy
        lam_hi = 1.0 / min(positive)  # every projected knob saturated at its most compressed value
        saturated = self._scaled(units, lam_hi, fixed)
        floor = float(self.cost(saturated))
        target = float(target(floor)) if callable(target) else float(target)
        if floor > target:
            return saturated  # unreachable with this shape: most compressed
        lo, hi = 0.0, lam_hi  # cost(lo) may exceed target, cost(hi) <= target; cost falls with λ
        if self.cost(self._scaled(units, lo, fixed)) <= target:
            return self._scaled(units, lo, fixed)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if self.cost(self._scaled(units, mid, fixed)) <= target:
                hi = mid
            else:
                lo = mid
        return self._scaled(units, hi, fixed)


def rewarded_knobs(context: SearchContext) -> tuple[str, ...] | None:
    """Knobs some objective or budget depends on; None when one of them cannot be predicted
    (a measured latency: then every knob may matter)."""
    metrics = [o.name for o in context.objectives if o.name not in ("acc", "acc_top5")]
    metrics += [b.metric for b in (*context.budgets, *context.soft_budgets) if b.name != "acc-drop"]
    out: list[str] = []
    for metric in dict.fromkeys(metrics):
        if metric not in PROJECTABLE or (metric == "latency_ms" and context.predict_latency is None):
            return None

        def cost(policy: CompressionPolicy, _m: str = metric) -> float:
            return float(context.predicted_metrics(policy)[_m])

        out.extend(k for k in cost_knobs(context.space, cost) if k not in out)
    return tuple(out)


def held_knobs(context: SearchContext) -> tuple[str, ...]:
    """Knobs no objective or budget depends on: held at their least compressed value."""
    rewarded = rewarded_knobs(context)
    names = list(dict.fromkeys(k for p in context.space.decision_points for k in p.knobs))
    return () if rewarded is None else tuple(k for k in names if k not in rewarded)


def make_projector(context: SearchContext, fill_low: float = 0.25) -> BudgetProjector | None:
    """A projector onto the hard budgets the space can predict; None without one.

    One such budget: its metric, in its own units. Several (``macs=50% latency=58%``): every one
    at once, whatever their order: the cost is the largest share of its limit any of them uses
    (``max(predicted / limit)``), the limit 1, so a projected policy meets them all and the most
    binding one sets its scale (the bisection finds the largest scale at which none is broken).
    """
    held = held_knobs(context)
    budgets: list[tuple[str, float]] = []
    for budget in context.budgets:
        metric = budget.metric
        if metric not in PROJECTABLE or budget.name not in context.limits:
            continue
        if metric == "latency_ms" and context.predict_latency is None:
            continue
        limit = float(context.limits[budget.name])
        if limit > 0 and (metric, limit) not in budgets:
            budgets.append((metric, limit))
    if not budgets:
        return None
    if len(budgets) == 1:
        metric, limit = budgets[0]

        def cost(policy: CompressionPolicy, _m: str = metric) -> float:
            return float(context.predicted_metrics(policy)[_m])

        return BudgetProjector(context.space, metric, limit, cost, fill_low, held=held)

    def usage(policy: CompressionPolicy) -> float:
        predicted = context.predicted_metrics(policy)
        return max(float(predicted[m]) / limit for m, limit in budgets)

    return BudgetProjector(context.space, "+".join(m for m, _ in budgets), 1.0, usage, fill_low, held=held)
