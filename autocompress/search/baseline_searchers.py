"""Baseline strategies: random policies, a sweep of uniform ratios, and sensitivity-greedy.

``random`` and ``uniform`` work on the compression space directly (they need no environment and
can propose many candidates at once, so several processes share them well); ``greedy`` runs the
sensitivity-greedy agent of ``autocompress.policies`` through the environment adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.compression.knobs import from_unit, to_unit
from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.search.base import BaseSearcher, SearchContext, register_searcher
from autocompress.search.rl_searcher import AgentSearcher

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.evaluators import EvalResult


def knob_value(knob: Any, u: float) -> float | int:
    """The value of ``knob`` a fraction ``u`` of the way from least (0) to most (1) compressed
    (the knob registry's unit mapping, ``compression.knobs.from_unit``)."""
    return from_unit(knob, u)


def uniform_policy(space: CompressionSpace, u: float) -> CompressionPolicy:
    """Every knob of every point ``u`` of the way to its most compressed value."""
    return CompressionPolicy({
        p.name: LayerAction(**{k: knob_value(knob, u) for k, knob in p.knobs.items()})
        for p in space.decision_points
    })


def blend_policy(space: CompressionSpace, policy: CompressionPolicy, lam: float) -> CompressionPolicy:
    """Move every knob of ``policy`` a share ``lam`` of the way to its most compressed value
    (in the knob registry's unit coordinates: ``u + lam * (1 - u)``)."""
    layers = {}
    for p in space.decision_points:
        action = policy.get(p.name)
        knobs: dict[str, Any] = {}
        for k, knob in p.knobs.items():
            u = to_unit(knob, getattr(action, k))
            knobs[k] = from_unit(knob, u + lam * (1.0 - u))
        layers[p.name] = LayerAction(**knobs)
    return CompressionPolicy(layers)


def smallest_feasible(feasible: Any, tol: float = 1e-4) -> float | None:
    """Smallest ``s`` in [0, 1] with ``feasible(s)`` (monotone), None when even 1 fails."""
    from autocompress.policies.heuristics import bisect_scale

    if not feasible(1.0):
        return None
    return bisect_scale(feasible, tol)


def van_der_corput(i: int, base: int = 2) -> float:
    """The ``i``-th element of the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, ...)."""
    out, denom = 0.0, 1.0
    while i:
        i, rem = divmod(i, base)
        denom *= base
        out += rem / denom
    return out


@register_searcher("random")
class RandomSearcher(BaseSearcher):
    """Random policies: every knob uniform over its range (``space.sample``).

    Under hard budgets a sample that breaks a predictable budget is redrawn up to ``max_tries``
    times; after that the last draw is moved towards the most compressed policy (every knob the
    same share of the way) just far enough to meet the budgets, so every proposal is feasible on
    the space's predicted costs.

    Args:
        max_tries: redraws before repairing a sample.
    """

    def __init__(self, context: SearchContext, seed: int = 0, *, max_tries: int = 50) -> None:
        super().__init__(context, seed)
        self.max_tries = int(max_tries)
        self._rng = np.random.default_rng(seed)
        self.n_asked = 0

    def ask(self) -> CompressionPolicy:
        """A random policy (feasible on the predicted costs when the budgets allow)."""
        ctx = self.context
        self.n_asked += 1
        policy = ctx.space.sample(self._rng)
        if not ctx.budgets:
            return policy
        for _ in range(self.max_tries - 1):
            if ctx.predicted_feasible(policy):
                return policy
            policy = ctx.space.sample(self._rng)
        if ctx.predicted_feasible(policy):
            return policy
        lam = smallest_feasible(lambda s: ctx.predicted_feasible(blend_policy(ctx.space, policy, s)))
        return blend_policy(ctx.space, policy, lam) if lam is not None else policy

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """Random search learns nothing."""

    def state_dict(self) -> dict[str, Any]:
        """How many policies were drawn (the draws are replayed from the seed)."""
        return {"n_asked": self.n_asked}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Skip the draws a previous run already made."""
        for _ in range(int(state.get("n_asked", 0)) - self.n_asked):
            self.ask()


@register_searcher("uniform")
class UniformSearcher(BaseSearcher):
    """A sweep of uniform ratios: the same setting at every point (the survey's Table 5 baseline).

    A point ``u`` in [0, 1] sets every knob of every point ``u`` of the way from untouched to most
    compressed (with only ``prune``: the same prune ratio ``u * max_prune`` everywhere). The sweep
    covers ``[u_min, 1]``, where ``u_min`` is the smallest ``u`` that meets the hard budgets
    (bisection on the predicted costs), in van der Corput order after ``u_min`` itself, so any
    prefix of the sweep spreads evenly over the feasible range.

    Args:
        points: length of the sweep (default: the trial count); ``ask`` returns None after it.
    """

    def __init__(self, context: SearchContext, seed: int = 0, *, points: int | None = None) -> None:
        super().__init__(context, seed)
        self.points = int(points) if points is not None else max(1, int(context.trials) or 20)
        space = context.space
        if context.budgets:
            lo = smallest_feasible(lambda u: context.predicted_feasible(uniform_policy(space, u)))
            self.u_min = 1.0 if lo is None else lo
        else:
            self.u_min = 0.0
        self.index = 0

    def grid_point(self, i: int) -> float:
        """The ``i``-th ratio of the sweep."""
        if i == 0:
            return self.u_min
        return self.u_min + (1.0 - self.u_min) * (1.0 - van_der_corput(i))

    def ask(self) -> CompressionPolicy | None:
        """The next uniform policy of the sweep, None when the sweep is done."""
        if self.index >= self.points:
            return None
        u = self.grid_point(self.index)
        self.index += 1
        return uniform_policy(self.context.space, u)

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """The sweep does not adapt."""

    def state_dict(self) -> dict[str, Any]:
        """Position in the sweep."""
        return {"index": self.index}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the sweep where it stopped."""
        self.index = int(state.get("index", 0))


@register_searcher("greedy")
class GreedySearcher(AgentSearcher):
    """Sensitivity-greedy (``autocompress.policies`` ``greedy`` agent) through the environment.

    It probes every point's accuracy at each of ``levels`` (these probes are evaluations and count
    as trials; they may exceed the budgets and are then never on the front), then allocates the
    hard budgets where accuracy suffers least and evaluates that policy and the uniform policy at
    the budget; the trials left go to a first-improvement local search from the better of the two
    (move ``delta`` units of compression off or onto one point, the others rescaled to the budget;
    ``delta`` halves after a pass without improvement, down to ``min_delta``). It needs a hard
    budget.

    Args:
        levels: unit compression levels probed per point and knob.
        delta, min_delta: first and smallest unit step of the local search.
    """

    agent_name = "greedy"

    def __init__(self, context: SearchContext, seed: int = 0, *,
                 levels: tuple[float, ...] | list[float] = (1 / 3, 2 / 3, 1.0),
                 delta: float = 0.2, min_delta: float = 0.025) -> None:
        super().__init__(context, seed, agent_settings={"levels": tuple(levels), "delta": delta,
                                                        "min_delta": min_delta},
                         total_episodes=max(1, int(context.trials)))
