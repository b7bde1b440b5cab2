"""The default strategy: the uniform ladder first, then cost-preserving evolution of its front.

One ratio everywhere (the uniform sweep) is a strong baseline: with reconstruction it spreads
candidates evenly along the cost axis a front is judged on, and adaptive searchers that start from
scratch spend most of a short budget finding that region again. ``ladder`` therefore starts with
a share of the sweep (``ladder_fraction`` of the trials, the same van der Corput order as
``uniform``, so that prefix already covers the feasible range) and spends the rest improving it:

* pick where to move: with probability ``best_share`` the most accurate front point (the one a
  user deploys at the budget) at its own cost; otherwise a gap of the front, drawn in proportion
  to the area a point there could add, with the mean shape of the gap's two ends at its middle
  cost (so the front fills in where the uniform sweep would have put its next rungs); the gaps
  include the one between the front's most expensive point and the budget, which a coarse ladder
  (channels in multiples of 8) can leave wide;
* move that per-layer *relative* compression (0 = untouched, 1 = most compressed, the budget
  projection's scale) by Gaussian noise of width ``sigma``: compression shifts between layers;
* scale the result onto the chosen cost (times a small random factor; never above the hard
  budget): the child competes with its neighbours at equal cost, so any accuracy gained by a
  better allocation lifts the front there;
* optionally (``polish_fraction`` > 0, off by default) the last share of the trials polish the
  point a user deploys: moves of the most accurate feasible point, ``polish_sigma`` wide, scaled
  onto the hard budget itself (its own cost without one), a local search where the budget is
  spent. Off by default because it has not beaten the moves above on CIFAR-10 (one seed,
  ``benchmarks/README.md``): the 20 polishing trials of a 100-trial search found no point above
  the best the evolution had found before them.

Knobs no objective or budget depends on are held uncompressed, as in the budget projection.
Everything random comes from ``seed`` and the results told, so a seeded search is reproducible and
a resumed one replays its proposals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.search._projection import (
    PROJECTABLE,
    BudgetProjector,
    _unit,
    _value,
    held_knobs,
    make_projector,
)
from autocompress.search.base import BaseSearcher, SearchContext, register_searcher
from autocompress.search.baseline_searchers import (
    smallest_feasible,
    uniform_policy,
    van_der_corput,
)

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult


def _cost_projector(context: SearchContext) -> BudgetProjector | None:
    """The budget projector, or (no projectable budget) one on the first predictable objective."""
    projector = make_projector(context)
    if projector is not None:
        return projector
    held = held_knobs(context)
    for objective in context.objectives:
        metric = objective.name
        if metric not in PROJECTABLE or objective.direction != "minimize":
            continue
        if metric == "latency_ms" and context.predict_latency is None:
            continue

        def cost(policy: CompressionPolicy, _m: str = metric) -> float:
            return float(context.predicted_metrics(policy)[_m])

        base = float(cost(context.space.identity()))
        return BudgetProjector(context.space, metric, base, cost, held=held)
    return None


@register_searcher("ladder")
class LadderSearcher(BaseSearcher):
    """Uniform ladder, then cost-preserving Gaussian moves of front points (the default strategy).

    Args:
        ladder_fraction: share of the trials spent on the uniform sweep first (at least 2 points).
        sigma: width of the Gaussian move of each knob's relative compression.
        best_share: probability that the parent is the front's most accurate point.
        cost_jitter: log-normal width of the child's cost target around its parent's cost.
        polish_fraction: share of the trials, at the end, spent moving the most accurate point at
            the budget (0, the default: none; only when the number of trials is known).
        polish_sigma: width of those moves.
    """

    def __init__(self, context: SearchContext, seed: int = 0, *, ladder_fraction: float = 0.4,
                 sigma: float = 0.15, best_share: float = 0.5, cost_jitter: float = 0.1,
                 polish_fraction: float = 0.0, polish_sigma: float = 0.08) -> None:
        super().__init__(context, seed)
        self.ladder_fraction, self.sigma = float(ladder_fraction), float(sigma)
        self.best_share, self.cost_jitter = float(best_share), float(cost_jitter)
        self.polish_fraction, self.polish_sigma = float(polish_fraction), float(polish_sigma)
        trials = max(1, int(context.trials) or 40)
        self.n_ladder = min(trials, max(2, round(self.ladder_fraction * trials)))
        #: Index of the first polishing trial (never, when the number of trials is open).
        known = int(context.trials) > 0
        self.polish_from = (max(self.n_ladder, trials - round(self.polish_fraction * trials))
                            if known and self.polish_fraction > 0 else math.inf)
        self.projector = _cost_projector(context)
        self.held = self.projector.held if self.projector is not None else ()
        space = context.space
        self._points = {p.name: p for p in space.decision_points}
        if context.budgets:
            lo = smallest_feasible(lambda u: context.predicted_feasible(self._ladder_policy(u)))
            self.u_min = 1.0 if lo is None else lo
        else:
            self.u_min = 0.0
        self._limit = self.projector.limit if self.projector is not None and context.budgets else math.inf
        self._rng = np.random.default_rng(self.seed)
        self.index = 0
        #: Feasible non-dominated (policy, minimised objective values, cost) told so far.
        self.front: list[tuple[CompressionPolicy, tuple[float, ...], float]] = []
        self._floor_cost: float | None = None
        self._best_axis = next((i for i, o in enumerate(context.objectives) if o.direction == "maximize"), 0)

    def _ladder_policy(self, u: float) -> CompressionPolicy:
        from dataclasses import replace

        policy = uniform_policy(self.context.space, u)
        if not self.held:
            return policy
        return CompressionPolicy({
            name: replace(action, **{k: self._points[name].knobs[k].least_compressed
                                     for k in self.held if k in self._points[name].knobs})
            for name, action in policy.layers.items()
        })

    def grid_point(self, i: int) -> float:
        """The ``i``-th ratio of the ladder (the uniform sweep's order)."""
        if i == 0:
            return self.u_min
        return self.u_min + (1.0 - self.u_min) * (1.0 - van_der_corput(i))

    def ask(self) -> CompressionPolicy:
        """The next ladder rung, or a cost-preserving move of a front point."""
        i = self.index
        self.index += 1
        if i < self.n_ladder or not self.front:
            return self._ladder_policy(self.grid_point(i))
        if i >= self.polish_from:
            return self._polish()
        return self._child()

    def _shape(self, policy: CompressionPolicy) -> dict[tuple[str, str], float]:
        """Relative compression (0..1) of every searched knob of ``policy``."""
        return {(name, k): _unit(knob, getattr(policy.get(name), k))
                for name, point in self._points.items()
                for k, knob in point.knobs.items()  # type: ignore[attr-defined]
                if k not in self.held}

    def _parent(self) -> tuple[dict[tuple[str, str], float], float]:
        """A shape to move and the cost to move it to.

        With probability ``best_share`` the front's most accurate point at its own cost;
        otherwise a gap of the front, drawn with probability proportional to the area a point
        there could add (cost width x accuracy step): the mean shape of its two ends at the
        middle cost. The gaps include the stretch below the cheapest point and the one between
        the most expensive point and a hard budget (where the user deploys; a coarse uniform
        ladder can end far below it). With more than one cost objective, any front point at its
        own cost.
        """
        rng = self._rng
        if rng.random() < self.best_share:
            parent, _, cost = self._best()
            return self._shape(parent), cost
        if len(self.context.objectives) != 2 or self.projector is None:
            parent, _, cost = self.front[int(rng.integers(len(self.front)))]
            return self._shape(parent), cost
        pts = sorted(self.front, key=lambda e: e[2])  # by cost; accuracy rises along it
        accs = [-e[1][self._best_axis] for e in pts]
        floor = self._floor()
        gaps: list[tuple[float, dict[tuple[str, str], float], float]] = []
        if pts[0][2] > floor:  # below the cheapest point, down to the most compressed model
            gaps.append(((pts[0][2] - floor) * 0.5 * max(accs[0], 1e-9), self._shape(pts[0][0]),
                         0.5 * (pts[0][2] + floor)))
        for (lo, hi), (a_lo, a_hi) in zip(zip(pts, pts[1:], strict=False), zip(accs, accs[1:], strict=False), strict=True):
            lo_shape, hi_shape = self._shape(lo[0]), self._shape(hi[0])
            mean = {k: 0.5 * (lo_shape[k] + hi_shape[k]) for k in lo_shape}
            gaps.append(((hi[2] - lo[2]) * max(a_hi - a_lo, 1e-9), mean, 0.5 * (lo[2] + hi[2])))
        top = pts[-1]
        if math.isfinite(self._limit) and top[2] < self._limit:
            # above the most expensive point, up to the budget a user deploys at
            width = self._limit - top[2]
            # the accuracy a point there could add: the front's last slope (from the floor at zero
            # accuracy when the front has one point), over half the gap: returns diminish
            below = (pts[-2][2], accs[-2]) if len(pts) > 1 else (floor, 0.0)
            slope = max(accs[-1] - below[1], 1e-9) / max(top[2] - below[0], 1e-12)
            gaps.append((0.5 * width * slope * width, self._shape(top[0]), 0.5 * (top[2] + self._limit)))
        weights = np.array([g[0] for g in gaps], dtype=float)
        if not len(gaps) or not np.isfinite(weights).all() or weights.sum() <= 0:
            parent, _, cost = self.front[int(rng.integers(len(self.front)))]
            return self._shape(parent), cost
        _, shape, cost = gaps[int(rng.choice(len(gaps), p=weights / weights.sum()))]
        return shape, cost

    def _floor(self) -> float:
        if self._floor_cost is None:
            assert self.projector is not None
            self._floor_cost = float(self.projector.cost(self._ladder_policy(1.0)))
        return self._floor_cost

    def _best(self) -> tuple[CompressionPolicy, tuple[float, ...], float]:
        """The front's most accurate point (the cheaper one on a tie)."""
        return min(self.front, key=lambda e: (e[1][self._best_axis], e[2]))

    def _polish(self) -> CompressionPolicy:
        """A narrow move of the most accurate point, scaled onto the budget a user deploys at."""
        parent, _, cost = self._best()
        child = self._move(self._shape(parent), self.polish_sigma)
        if self.projector is None:
            return child
        return self.projector.to_cost(child, self._limit if math.isfinite(self._limit) else cost)

    def _child(self) -> CompressionPolicy:
        rng = self._rng
        shape, cost = self._parent()
        child = self._move(shape, self.sigma)
        if self.projector is None:
            return child
        target = min(self._limit, cost * math.exp(self.cost_jitter * float(rng.normal())))
        return self.projector.to_cost(child, target)

    def _move(self, shape: dict[tuple[str, str], float], sigma: float) -> CompressionPolicy:
        """``shape`` with every searched knob moved by Gaussian noise of width ``sigma``."""
        rng = self._rng
        layers: dict[str, dict[str, Any]] = {}
        for name, point in self._points.items():
            knobs: dict[str, Any] = {}
            for k, knob in point.knobs.items():  # type: ignore[attr-defined]
                if k in self.held:
                    knobs[k] = knob.least_compressed
                    continue
                u = shape[(name, k)] + sigma * float(rng.normal())
                knobs[k] = _value(knob, min(1.0, max(0.0, u)))
            layers[name] = knobs
        return CompressionPolicy({n: LayerAction(**kw) for n, kw in layers.items()})

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """Keep the feasible, full-fidelity, non-dominated results as the front to move from."""
        if not result.ok or getattr(result, "fidelity", "full") == "low":
            return
        if any(v > 0 for v in self.context.violations(result.metrics, policy).values()):
            return
        values = tuple(-v if o.direction == "maximize" else v
                       for v, o in zip(self.context.objective_values(result.metrics),
                                       self.context.objectives, strict=True))
        if not all(math.isfinite(v) for v in values):
            return
        for _, other, _ in self.front:
            if all(a <= b for a, b in zip(other, values, strict=True)):
                return  # dominated by (or equal to) a front point
        cost = float(self.projector.cost(policy)) if self.projector is not None else 0.0
        self.front = [e for e in self.front if not all(a <= b for a, b in zip(values, e[1], strict=True))]
        self.front.append((policy, values, cost))

    def state_dict(self) -> dict[str, Any]:
        """Position in the ladder and front size (a resumed search replays its proposals)."""
        return {"index": self.index, "front": len(self.front)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: a resumed search replays the proposals and their recorded results."""
