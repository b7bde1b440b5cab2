"""Heuristic proposers behind the agent interface: uniform, random and sensitivity-greedy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autocompress.compression import CompressionPolicy
from autocompress.envs import CompressionEnv
from autocompress.errors import UserInputError
from autocompress.policies.base import BaseAgent, EpisodeCallback, register_agent


def bisect_scale(feasible: Callable[[float], bool], tol: float = 1e-4) -> float:
    """Smallest ``s`` in [0, 1] with ``feasible(s)``, assuming ``feasible(1)``; monotone in ``s``."""
    if feasible(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _targets(env: CompressionEnv, n: int) -> list[float | None]:
    """Targets of ``n`` candidates: ``None`` in fixed-budget mode, an even sweep when conditioned."""
    if env.budget_range is None:
        return [None] * n
    lo, hi = env.budget_range
    if n == 1:
        return [0.5 * (lo + hi)]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


@register_agent("uniform")
class UniformAgent(BaseAgent):
    """The same normalised setting at every point, bisected to just meet the hard budgets.

    ``u`` (0 = untouched, 1 = most compressed; the env's action encoding) is the same at every
    point, so with one ``max_prune`` the same prune ratio is used everywhere -- the survey's
    Table 5 baseline. The smallest ``s`` with ``u = s * d`` meeting every budget is found by
    bisection on the predicted costs. With several knobs, episode ``i`` uses the mix direction
    ``d_i`` (first all knobs equally, then seeded random mixes); with one knob and fixed budgets
    there is exactly one candidate, so ``learn`` stops after it. Without hard budgets, ``learn``
    sweeps ``s`` over an even grid. In conditioned mode the targets are swept over the range.
    """

    def __init__(self, env: Any, seed: int = 0) -> None:
        super().__init__(env, seed=seed)
        self._rng = np.random.default_rng(seed)

    def _direction(self, i: int) -> np.ndarray:
        k = len(self.cenv.knobs)
        if i == 0 or k == 1:
            return np.ones(k)
        d = self._rng.uniform(0.0, 1.0, size=k)
        return d / d.max()

    def _candidate(self, d: np.ndarray, target: float | None) -> CompressionPolicy | None:
        env = self.cenv
        budgets = env.hard_budgets(target)
        if not env.meets(env.policy_from_units(d), budgets):
            return None
        s = bisect_scale(lambda s: env.meets(env.policy_from_units(s * d), budgets), env.clip_tol)
        return env.policy_from_units(s * d)

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> UniformAgent:
        """Evaluate up to ``total_episodes`` distinct uniform candidates."""
        n = self._check_episodes(total_episodes)
        env = self.cenv
        seen: set[str] = {r.policy.key() for r in self.history}
        free = not env.hard_budgets(_targets(env, 1)[0]) and env.budget_range is None
        k = len(env.knobs)
        tries = 0
        for i, target in enumerate(_targets(env, n)):
            if free:
                policy: CompressionPolicy | None = env.policy_from_units(np.full(k, (i + 1) / n))
            else:
                policy = None
                while policy is None and tries < 20 * n:
                    policy = self._candidate(self._direction(tries), target)
                    tries += 1
            if policy is None or policy.key() in seen:
                if env.budget_range is None and k == 1:
                    break
                continue
            seen.add(policy.key())
            reward, info = env.evaluate_policy(policy, target)
            if not self._record(info, reward, callback):
                break
        return self

    def propose(self, target: float | None = None) -> CompressionPolicy:
        """The uniform policy (all knobs equally) that just meets the budgets / ``target``."""
        env = self.cenv
        target = env.check_target(target)
        if env.budget_range is not None and target is None:
            raise UserInputError("this env is budget-conditioned: propose(target=...) needs a MACs fraction")
        if not env.hard_budgets(target):
            best = self.best()
            if best is None:
                raise UserInputError("no hard budget to meet and nothing evaluated yet: call learn() first")
            return best.policy
        policy = self._candidate(np.ones(len(env.knobs)), target)
        assert policy is not None  # all-ones is the most compressed policy, feasible by construction
        return policy


@register_agent("random")
class RandomAgent(BaseAgent):
    """Uniformly random actions played through the env (clipped there, so budgets hold).

    This is the distribution of AMC's warm-up episodes. ``propose`` returns the best candidate
    found (for ``target`` in conditioned mode, a fresh random rollout when none was evaluated).
    """

    def __init__(self, env: Any, seed: int = 0) -> None:
        super().__init__(env, seed=seed)
        self._rng = np.random.default_rng(seed)
        self._reset_seed: int | None = seed

    def _rollout(self, options: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        env = self.cenv
        _, _ = env.reset(seed=self._reset_seed, options=options)
        self._reset_seed = None  # seed the env's own RNG (targets) once, then let it run on
        k = env.action_space.shape[0]
        while True:
            a = self._rng.uniform(-1.0, 1.0, size=k).astype(np.float32)
            _, reward, terminated, truncated, info = env.step(a)
            if terminated or truncated:
                return float(reward), info

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> RandomAgent:
        """Evaluate ``total_episodes`` random episodes."""
        n = self._check_episodes(total_episodes)
        for _ in range(n):
            reward, info = self._rollout()
            if not self._record(info, reward, callback):
                break
        return self

    def propose(self, target: float | None = None) -> CompressionPolicy:
        """Best evaluated policy (for ``target`` when conditioned), else a random feasible one."""
        env = self.cenv
        target = env.check_target(target)
        if env.budget_range is not None and target is None:
            raise UserInputError("this env is budget-conditioned: propose(target=...) needs a MACs fraction")
        best = self.best(target) if target is not None else self.best()
        if best is not None:
            return best.policy
        _, info = self._rollout({"target": target, "evaluate": False})
        return info["policy"]


def greedy_allocate(
    present: np.ndarray,
    grids: Sequence[Sequence[float]],
    drop_at: Callable[[int, int, float], float],
    policy_of: Callable[[np.ndarray], CompressionPolicy],
    load: Callable[[CompressionPolicy], np.ndarray],
    tol: float = 1e-4,
) -> np.ndarray:
    """Greedy budget allocation from per-point sensitivities; returns unit actions ``(P, K)``.

    Starting from no compression, repeatedly move one (point, knob) one step up its grid,
    choosing the move with the least estimated accuracy drop per unit of budget excess removed,
    until every ``load(policy) <= 1``; the last move is then bisected back so the budget is met with
    as little compression as possible. Costs come from the real cost model on the whole policy,
    so coupled layers and interacting knobs are accounted; only the accuracy drops are assumed
    additive (the usual sensitivity-analysis approximation).

    Args:
        present: ``(P, K)`` bool, which knobs each point has.
        grids: per knob, the increasing unit steps to move through (ending at 1).
        drop_at: ``(point, knob, u) -> estimated accuracy drop`` with only that knob at ``u``.
        policy_of: unit actions -> policy.
        load: ``cost / budget`` per hard budget; a move's gain is the drop of the loads of the
            budgets still broken.
    """
    n_points, n_knobs = present.shape
    units = np.zeros((n_points, n_knobs))
    step = np.zeros((n_points, n_knobs), dtype=int)
    current = np.asarray(load(policy_of(units)), dtype=np.float64)
    last: tuple[int, int, float, float] | None = None
    while (current > 1.0).any():
        broken = current > 1.0
        best: tuple[float, int, int, float] | None = None
        for i in range(n_points):
            for j in range(n_knobs):
                if not present[i, j] or step[i, j] >= len(grids[j]):
                    continue
                new_u = grids[j][step[i, j]]
                trial = units.copy()
                trial[i, j] = new_u
                after = np.asarray(load(policy_of(trial)), dtype=np.float64)
                gain = float((current - after)[broken].sum())
                if gain <= 0:
                    continue
                cost = max(0.0, drop_at(i, j, new_u) - drop_at(i, j, units[i, j]))
                score = (cost + 1e-9) / gain
                if best is None or score < best[0]:
                    best = (score, i, j, new_u)
        if best is None:
            # No single step helps: skip steps that change nothing (bit bins), else give up.
            movable = [(i, j) for i in range(n_points) for j in range(n_knobs)
                       if present[i, j] and step[i, j] < len(grids[j])]
            if not movable:
                return np.where(present, 1.0, 0.0)
            for i, j in movable:
                step[i, j] += 1
            continue
        _, i, j, new_u = best
        last = (i, j, units[i, j], new_u)
        units[i, j] = new_u
        step[i, j] += 1
        current = np.asarray(load(policy_of(units)), dtype=np.float64)
    if last is not None:
        i, j, old, new = last

        def ok(s: float) -> bool:
            trial = units.copy()
            trial[i, j] = old + s * (new - old)
            return bool((np.asarray(load(policy_of(trial))) <= 1.0).all())

        units[i, j] = old + bisect_scale(ok, tol) * (new - old)
    return units


@register_agent("greedy")
class GreedyAgent(BaseAgent):
    """Sensitivity analysis per point, greedy allocation of the budget, then a greedy local search.

    ``learn`` first measures the base model and, for every point and knob, the accuracy with only
    that point compressed to each of ``levels`` (unit levels; these probes go through
    ``env.evaluate_fn`` like any evaluation and count against ``total_episodes``, but they are not
    candidates and may break the budgets). ``greedy_allocate`` then spends the budget where
    accuracy suffers least (drops interpolated linearly between the probed levels, ``steps`` grid
    steps per continuous knob, one per choice for bit-widths), and the resulting policy is
    evaluated as a candidate (one per target in conditioned mode, up to the episodes left).

    Single-point drops add up badly when many points are compressed at once (on CIFAR-10 the
    allocation alone scored 19 points below a uniform ratio at the same budget), so with fixed
    budgets the episodes left are spent on real evaluations: the uniform policy that just meets
    the budgets is evaluated too, and from the better of the two a first-improvement local search
    moves ``delta`` units of compression off one point (most sensitive first) or onto one (least
    sensitive first), re-meeting the budgets by scaling every other point (bisection on the
    predicted costs) and spending what channel steps leave of the budget on the most sensitive
    points; a move is kept when its reward beats the incumbent's, and ``delta`` halves after a
    pass without improvement, down to ``min_delta`` (then starts again at ``delta`` if the
    incumbent moved meanwhile, else the search ends). The result is never worse than the
    uniform baseline at the budget. If ``total_episodes`` cannot pay for all levels, fewer levels
    are probed; ``propose(target)`` returns the best evaluated policy with fixed budgets and
    re-allocates without new evaluations for a target in conditioned mode.
    """

    def __init__(
        self, env: Any, seed: int = 0, *, levels: Sequence[float] = (1 / 3, 2 / 3, 1.0), steps: int = 20,
        delta: float = 0.2, min_delta: float = 0.025,
    ) -> None:
        super().__init__(env, seed=seed)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserInputError(f"steps={steps!r} is not allowed; allowed: an integer >= 1")
        for name, value in (("delta", delta), ("min_delta", min_delta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) <= 1.0:
                raise UserInputError(f"{name}={value!r} is not allowed; allowed: a unit step 0 < {name} <= 1")
        if min_delta > delta:
            raise UserInputError(f"min_delta={min_delta!r} is not allowed; allowed: at most delta={delta!r}")
        self.steps = steps
        self.delta, self.min_delta = float(delta), float(min_delta)
        lv = sorted(float(x) for x in levels)
        if not lv or lv[0] <= 0 or lv[-1] > 1:
            raise UserInputError(f"levels={levels!r} is not allowed; allowed: unit levels in (0, 1]")
        self.levels = lv
        self._used_levels: list[float] | None = None
        self.drops: np.ndarray | None = None
        self.n_probes = 0

    def config(self) -> dict[str, Any]:
        """Constructor settings (JSON)."""
        return {"levels": list(self.levels), "steps": self.steps, "delta": self.delta, "min_delta": self.min_delta}

    def state_dict(self) -> dict[str, Any]:
        """Measured sensitivities."""
        return {
            "levels": self._used_levels, "n_probes": self.n_probes,
            "drops": None if self.drops is None else self.drops.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output."""
        self._used_levels = state.get("levels")
        self.n_probes = int(state.get("n_probes", 0))
        d = state.get("drops")
        self.drops = None if d is None else np.asarray(d, dtype=np.float64)

    def _present(self) -> np.ndarray:
        env = self.cenv
        return np.array([[k in p.knobs for k in env.knobs] for p in env.points], dtype=bool)

    def _grids(self) -> list[list[float]]:
        """Per knob, the unit steps of the allocation: 20 for a range, one per choice for bits."""
        env = self.cenv
        out = []
        for k in env.knobs:
            knob = next(p.knobs[k] for p in env.points if k in p.knobs)
            choices = getattr(knob, "choices", None)
            if choices:
                n = len(choices)
                out.append([(i + 0.5) / n for i in range(1, n - 1)] + [1.0])
            else:
                out.append([float(x) for x in np.linspace(0.05, 1.0, self.steps)])
        return out

    def _acc(self, policy: CompressionPolicy) -> float:
        metrics, status = self.cenv.probe(policy)
        self.n_probes += 1
        acc = float(metrics.get("acc", float("nan")))
        return acc if status == "ok" and np.isfinite(acc) else 0.0

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> GreedyAgent:
        """Probe sensitivities, allocate, evaluate the allocation."""
        n = self._check_episodes(total_episodes)
        env = self.cenv
        if env.budget_range is None and not env.budgets:
            raise UserInputError("greedy allocates a hard budget; this env has none (give budgets or budget_range)")
        present = self._present()
        n_pairs = int(present.sum())
        levels = list(self.levels)
        if 1 + n_pairs * len(levels) + 1 > n:
            levels = levels[-1:]  # not enough episodes for every level: probe the strongest only
        if 1 + n_pairs * len(levels) + 1 > n:
            raise UserInputError(
                f"greedy needs at least {n_pairs + 2} episodes here (1 base + {n_pairs} probes + 1 candidate); got {n}"
            )
        base_acc = self._acc(CompressionPolicy({}))
        drops = np.zeros((env.n_points, len(env.knobs), len(levels)))
        for i in range(env.n_points):
            for j in range(len(env.knobs)):
                if not present[i, j]:
                    continue
                for li, level in enumerate(levels):
                    u = np.zeros(len(env.knobs))
                    u[j] = level
                    policy = CompressionPolicy({env.points[i].name: env.decode(i, u)})
                    drops[i, j, li] = base_acc - self._acc(policy)
        self.drops, self._used_levels = drops, levels
        left = n - (1 + n_pairs * len(levels))
        if env.budget_range is not None:
            for target in _targets(env, min(left, 5)):
                reward, info = env.evaluate_policy(self.propose(target), target)
                if not self._record(info, reward, callback):
                    break
            return self
        self._local_search(left, callback)
        return self

    def _local_search(self, left: int, callback: EpisodeCallback | None) -> None:
        """Evaluate the allocation and the uniform policy, then improve the better one move by move."""
        env = self.cenv
        budgets = env.hard_budgets(None)
        present = self._present()
        seen: set[str] = set()
        best: tuple[float, np.ndarray] | None = None

        def try_units(units: np.ndarray) -> bool:
            """Evaluate ``units`` unless already seen or over budget; True when it beats the incumbent."""
            nonlocal best, left
            policy = env.policy_from_units(units)
            key = policy.key()
            if left <= 0 or key in seen or not env.meets(policy, budgets):
                return False
            seen.add(key)
            left -= 1
            reward, info = env.evaluate_policy(policy)
            if not self._record(info, reward, callback):
                left = 0
            if info.get("status", "ok") == "ok" and np.isfinite(reward) and (best is None or reward > best[0]):
                best = (float(reward), units)
                return True
            return False

        try_units(self._allocate(None))
        ones = np.where(present, 1.0, 0.0)
        s = bisect_scale(lambda s: env.meets(env.policy_from_units(s * ones), budgets), env.clip_tol)
        try_units(s * ones)
        if best is None:
            return
        sens = self.drops[:, :, -1].sum(axis=1) if self.drops is not None else np.zeros(env.n_points)
        relieve = [int(i) for i in np.argsort(-sens, kind="stable")]
        delta, moved_since_reset = self.delta, False
        while left > 0:
            improved = False
            for sign, order in ((-1.0, relieve), (1.0, relieve[::-1])):
                for i in order:
                    if left <= 0:
                        break
                    moved = self._move(best[1], i, sign * delta, present, budgets, relieve)
                    if moved is not None and try_units(moved):
                        improved = moved_since_reset = True
            if not improved:
                delta *= 0.5
            if delta < self.min_delta - 1e-12:
                if not moved_since_reset:
                    break  # every step size tried from this incumbent: nothing new to propose
                delta, moved_since_reset = self.delta, False  # larger steps from the new incumbent

    def _move(self, units: np.ndarray, i: int, delta: float, present: np.ndarray,
              budgets: dict[str, float], fill_order: list[int]) -> np.ndarray | None:
        """``units`` with point ``i`` moved by ``delta`` and the other points scaled to just meet ``budgets``.

        Relieving point ``i`` (``delta < 0``) compresses the others by the smallest fraction of
        their way to 1 that meets the budgets; compressing it relieves them by the most. Channel
        counts move in steps, so that can land well under the budget: the slack then relieves
        points one by one in ``fill_order`` (most sensitive first), each as far as the budgets allow.
        """
        env = self.cenv
        moved = units.copy()
        moved[i] = np.where(present[i], np.clip(units[i] + delta, 0.0, 1.0), 0.0)
        if np.allclose(moved[i], units[i]):
            return None
        others = present.copy()
        others[i] = False
        if delta < 0:
            def at(s: float) -> np.ndarray:
                return np.where(others, moved + s * (1.0 - moved), moved)
        else:
            def at(s: float) -> np.ndarray:
                return np.where(others, moved * s, moved)

        def ok(s: float) -> bool:
            return env.meets(env.policy_from_units(at(s)), budgets)

        if not ok(1.0):
            return None
        out = at(bisect_scale(ok, env.clip_tol))
        for j in fill_order:
            if not out[j].any():
                continue
            row = out[j].copy()

            def relieved(t: float, j: int = j, row: np.ndarray = row) -> bool:
                trial = out.copy()
                trial[j] = row * t
                return env.meets(env.policy_from_units(trial), budgets)

            out[j] = row * bisect_scale(relieved, env.clip_tol)
        return out

    def propose(self, target: float | None = None) -> CompressionPolicy:
        """Best evaluated policy for fixed budgets, else the greedy allocation for ``target``."""
        env = self.cenv
        if self.drops is None or self._used_levels is None:
            raise UserInputError("greedy has no sensitivities yet: call learn() first")
        target = env.check_target(target)
        if env.budget_range is not None and target is None:
            raise UserInputError("this env is budget-conditioned: propose(target=...) needs a MACs fraction")
        best = self.best() if target is None else None
        if best is not None:
            return best.policy
        return env.policy_from_units(self._allocate(target))

    def _allocate(self, target: float | None) -> np.ndarray:
        """Unit actions ``(P, K)`` of the greedy allocation for the budgets of ``target``."""
        env = self.cenv
        assert self.drops is not None and self._used_levels is not None
        budgets = env.hard_budgets(target)
        if not budgets:
            raise UserInputError("greedy allocates a hard budget; this env has none")

        names = list(budgets)
        limits = np.array([budgets[m] for m in names])

        def load(policy: CompressionPolicy) -> np.ndarray:
            return np.array([env.cost(m, policy) for m in names]) / limits

        xs = np.array([0.0, *self._used_levels])
        drops = self.drops

        def drop_at(i: int, j: int, u: float) -> float:
            return float(np.interp(u, xs, np.concatenate([[0.0], drops[i, j]])))

        return greedy_allocate(
            self._present(), self._grids(), drop_at, env.policy_from_units, load, env.clip_tol,
        )
