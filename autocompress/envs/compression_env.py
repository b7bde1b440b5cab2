"""AMC-style Gymnasium environment: one step per decision point, hard budgets held by clipping."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autocompress.compression import CompressionPolicy, LayerAction
from autocompress.envs._features import (
    BUDGET_METRICS,
    KNOB_ORDER,
    Budget,
    budget_state,
    check_reward_settings,
    clip_to_budgets,
    compute_reward,
    decode_knob,
    encode_knob,
    from_unit,
    resolve_budgets,
    sequence_or_none,
    to_unit,
)
from autocompress.errors import UserInputError
from autocompress.metrics import MAXIMIZED, flops_from_macs

if TYPE_CHECKING:
    from autocompress.evaluators import EvalResult
    from autocompress.problem import Problem

#: What ``evaluate_fn`` may return: an ``EvalResult`` or, for cheap/synthetic scoring, a metrics dict.
EvalFn = Callable[[CompressionPolicy], Any]

@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated candidate: the policy, its reward and metrics, and the episode's target."""

    policy: CompressionPolicy
    reward: float
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the policy as its dict)."""
        return {
            "policy": self.policy.to_dict(), "reward": self.reward,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()},
            "status": self.status, "target": self.target,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeRecord:
        """Inverse of ``to_dict``."""
        return cls(
            policy=CompressionPolicy.from_dict(d["policy"]), reward=float(d["reward"]),
            metrics={k: (math.nan if v is None else float(v)) for k, v in d["metrics"].items()},
            status=str(d.get("status", "ok")), target=d.get("target"),
        )


class CompressionEnv(gym.Env[np.ndarray, np.ndarray]):
    """Decide, point by point, how to compress a model; hard budgets hold by construction.

    An episode walks ``space.decision_points`` in order, one step per point.

    **Action**: ``Box(-1, 1, (k,), float32)``, one component per enabled knob in the order
    ``prune, w_bits, a_bits, rank`` (those present in the space). A component ``a`` maps to
    ``u = (a + 1) / 2`` in [0, 1], where 0 is the knob's least and 1 its most compressed legal
    value: ``prune = u * max_prune``, ``rank = 1 - u * (1 - min_rank)``, and bit-widths take the
    ``i``-th choice (ordered 32 -> fewest bits) for ``u`` in the ``i``-th of equal bins. (The box is
    [-1, 1] rather than [0, 1] because SB3's checker asks for a symmetric action space.) A point
    without some knob ignores that component.

    **Observation**: ``Box(0, 1, float32)``: the point's static AMC features
    (``space.feature_matrix()`` row: index, type, channels, kernel, stride, feature map, MACs,
    params), the episode progress ``t / T``, then for every tracked metric (hard budgets, then soft
    budgets, else ``macs``) the fractions of the base value *removed so far* (decided points, rest
    untouched), *still removable* by the points from here on, and the *target*, then the previous
    step's action ``u`` (clipped, as taken).

    **Hard budgets by construction** (AMC's action clipping, generalised): at step ``t`` the
    candidate is the complete policy "decided prefix + this point's action + every later point at
    its most compressed value". If it breaks any hard budget, the action is moved along
    ``u + lam * (1 - u)`` (every knob the same share of the way to its most compressed value) and
    the smallest ``lam`` that satisfies *all* budgets at once is found by bisection. The test uses
    the space's own predicted costs (``space.macs/params/size_bytes/bops``, FLOPs from MACs,
    the latency predictor for ``latency_ms``) on the whole policy, so coupled groups (bilinear
    in/out channel costs) and interacting knobs (pruning and bit-width both shrink size) are
    accounted exactly. ``lam = 1`` is exactly the candidate the previous step accepted, so a
    feasible choice always exists, and the last step's accepted candidate *is* the final policy:
    every finished episode meets every hard budget, whatever the agent does. With monotone costs
    each budget is feasible on an interval ``[lam_b, 1]`` and bisection finds ``max_b lam_b``; a
    budget the most compressed policy cannot meet is rejected up front with the smallest
    reachable value.

    **Reward** at the end of an episode (0 before): ``acc`` (AMC's choice under clipping),
    ``r_flops`` (AMC's ``-error * log(FLOPs)``), ``lagrangian`` (accuracy minus a relative penalty per
    soft-budget overshoot, ``reward_weights`` are the multipliers), or ``weighted``
    (``sum_m w_m * score_m`` with ``score_acc = acc`` and ``score_cost = 1 - value / base``). A failed
    evaluation scores as accuracy 0. The final ``info`` holds ``policy``, ``policy_json``,
    ``metrics`` (evaluator metrics over predicted costs), ``predicted``, ``status``, ``error``,
    ``target`` and ``budgets``.

    **Budget-conditioned mode** (``budget_range=(lo, hi)``): each episode draws a target fraction
    of the base MACs from ``self.np_random``; it is a hard MACs budget and part of the
    observation, so one agent learns a whole front. ``reset(options={"target": f})`` fixes it.
    ``reset(options={"evaluate": False})`` skips the evaluation at the end (the policy is still in
    ``info``) -- agents use it to *propose* without spending an evaluation.

    Args:
        problem: a ``Problem`` (model, data, space, evaluator). If ``None`` and no ``space`` is
            given, ``Problem.build(**problem_kwargs)`` builds one (``Problem.default()`` when no
            kwargs at all).
        space: a ``CompressionSpace`` to use without a problem (then ``evaluate_fn`` is required):
            what a searcher holds, so the RL searchers build their env this way. The base costs,
            budgets' fractions and observations come from the space's predicted costs either way.
        budgets: hard budgets, metric -> absolute value or ``Budget(fraction of base)``, metrics in
            ``macs, flops, params, size_bytes, bops, latency_ms``. Default: ``{"macs": Budget(0.5)}``
            unless ``budget_range`` is given; pass ``{}`` for none.
        soft_budgets: budgets only the ``lagrangian`` reward penalises (same form).
        reward: ``"acc"``, ``"r_flops"``, ``"lagrangian"`` or ``"weighted"``.
        reward_weights: multipliers (``lagrangian``) or weights (``weighted``) per metric.
        fidelity: evaluator fidelity, ``"full"`` or ``"low"``.
        budget_range: ``(lo, hi)`` fractions of the base MACs for budget-conditioned episodes.
        evaluate_fn: scores a finished policy; returns an ``EvalResult`` or a metrics dict
            (default ``problem.evaluator.evaluate(policy, fidelity=fidelity)``). The search engine
            passes its cached/recording evaluation here.
        latency_fn: predicted latency (ms) of a policy, needed for a ``latency_ms`` budget
            (default: the problem's latency predictor when it has one).
        clip_tol: bisection tolerance on ``lam``.
        **problem_kwargs: forwarded to ``Problem.build`` (model, checkpoint, data, knobs, ...).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        problem: Problem | None = None,
        *,
        space: Any = None,
        budgets: Mapping[str, float | Budget] | None = None,
        soft_budgets: Mapping[str, float | Budget] | None = None,
        reward: str = "acc",
        reward_weights: Mapping[str, float] | None = None,
        fidelity: str = "full",
        budget_range: Sequence[float] | None = None,
        evaluate_fn: EvalFn | None = None,
        latency_fn: Callable[[CompressionPolicy], float] | None = None,
        clip_tol: float = 1e-4,
        **problem_kwargs: Any,
    ) -> None:
        super().__init__()
        if fidelity not in ("full", "low"):
            raise UserInputError(f"fidelity={fidelity!r} is not supported; allowed: full, low")
        if problem is None and space is None:
            from autocompress.problem import Problem

            problem = Problem.build(**problem_kwargs) if problem_kwargs else Problem.default()
        elif problem_kwargs:
            raise UserInputError(
                f"unexpected keyword(s) {sorted(problem_kwargs)} next to an explicit problem/space; "
                "pass Problem.build settings only when no problem is given"
            )
        self.problem = problem
        self.space = space if space is not None else problem.space  # type: ignore[union-attr]
        if evaluate_fn is None:
            if problem is None:
                raise UserInputError("CompressionEnv(space=...) needs evaluate_fn (there is no problem evaluator)")
            evaluator = problem.evaluator
            evaluate_fn = lambda policy: evaluator.evaluate(policy, fidelity=self.fidelity)  # noqa: E731
        self.evaluate_fn: EvalFn = evaluate_fn
        self.fidelity = fidelity
        self.clip_tol = float(clip_tol)

        self.points = list(self.space.decision_points)
        if not self.points:
            raise UserInputError("the compression space has no decision points; nothing to compress")
        self.n_points = len(self.points)
        self.knobs: tuple[str, ...] = tuple(
            k for k in KNOB_ORDER if any(k in p.knobs for p in self.points)
        )
        if not self.knobs:
            raise UserInputError("no decision point has an enabled knob; nothing to decide")

        # Cost functions: the space's fast predicted costs (exact for the clipping). The latency
        # predictor is only wired in when given or when some budget/weight needs it (building a
        # lookup table means profiling every layer once).
        needs_latency = any(
            "latency_ms" in (d or {}) for d in (budgets, soft_budgets, reward_weights)
        )
        if latency_fn is None and needs_latency:
            latency_fn = _find_latency_fn(problem)
        self._cost_fns: dict[str, Callable[[CompressionPolicy], float]] = {
            "macs": lambda p: float(self.space.macs(p)),
            "flops": lambda p: flops_from_macs(self.space.macs(p)),
            "params": lambda p: float(self.space.params(p)),
            "size_bytes": lambda p: float(self.space.size_bytes(p)),
            "bops": lambda p: float(self.space.bops(p)),
        }
        if latency_fn is not None:
            self._cost_fns["latency_ms"] = lambda p: float(latency_fn(p))

        self._most = [self._most_action(p) for p in self.points]
        identity = CompressionPolicy({})
        most = self._policy_from_actions(self._most)
        self.base_costs = {m: f(identity) for m, f in self._cost_fns.items()}
        self.floor_costs = {m: f(most) for m, f in self._cost_fns.items()}

        self.budget_range = sequence_or_none(budget_range)
        if budgets is None:
            budgets = {} if self.budget_range is not None else {"macs": Budget(0.5)}
        self._check_available(budgets, "budgets")
        self._check_available(soft_budgets or {}, "soft_budgets")
        self.budgets = resolve_budgets(budgets, self.base_costs, "budgets")
        self.soft_budgets = resolve_budgets(soft_budgets, self.base_costs, "soft_budgets")
        if self.budget_range is not None and "macs" in self.budgets:
            raise UserInputError("give either budgets['macs'] or budget_range (the per-episode MACs target), not both")
        for m, b in self.budgets.items():
            self._check_reachable(m, b)
        if self.budget_range is not None:
            self._check_reachable("macs", self.budget_range[0] * self.base_costs["macs"], "budget_range low")
        self.reward_kind = reward
        self.reward_weights = check_reward_settings(reward, reward_weights, self.soft_budgets)
        if reward == "weighted":
            self._check_available({m: 0 for m in self.reward_weights if m not in MAXIMIZED}, "reward_weights")

        tracked = [*self.budgets, *(m for m in self.soft_budgets if m not in self.budgets)]
        if self.budget_range is not None and "macs" not in tracked:
            tracked.insert(0, "macs")
        self.tracked: tuple[str, ...] = tuple(tracked or ["macs"])

        feat = np.asarray(self.space.feature_matrix(), dtype=np.float64)
        if feat.ndim != 2 or feat.shape[0] != self.n_points:
            raise ValueError(f"space.feature_matrix() has shape {feat.shape}; expected ({self.n_points}, F)")
        self._features = np.clip(np.nan_to_num(feat, nan=0.0), 0.0, 1.0)
        n_obs = self._features.shape[1] + 1 + 3 * len(self.tracked) + len(self.knobs)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_obs,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(len(self.knobs),), dtype=np.float32)

        self.n_evaluations = 0
        self._t = 0
        self._done = True
        self._target: float | None = None
        self._episode_budgets: dict[str, float] = dict(self.budgets)
        self._evaluate_episode = True
        self._actions: list[LayerAction] = []
        self._prev_u = np.zeros(len(self.knobs))

    # -- setup helpers --------------------------------------------------------------------------
    def _check_available(self, budgets: Mapping[str, Any], what: str) -> None:
        for m in budgets:
            if m == "latency_ms" and "latency_ms" not in self._cost_fns:
                raise UserInputError(
                    f"{what}['latency_ms'] needs a latency predictor; pass latency_fn= or use a problem with a latency LUT"
                )
            if m not in BUDGET_METRICS:
                raise UserInputError(f"{what} metric {m!r} is not supported; allowed: {', '.join(BUDGET_METRICS)}")

    def _check_reachable(self, metric: str, budget: float, what: str | None = None) -> None:
        floor = self.floor_costs[metric]
        if budget < floor:
            base = self.base_costs[metric]
            raise UserInputError(
                f"{what or 'budget'} {metric}={budget:.6g} is unreachable; the smallest reachable value is "
                f"{floor:.6g} ({floor / base:.1%} of the base model's {base:.6g})"
            )

    def _most_action(self, point: Any) -> LayerAction:
        return LayerAction(**{k: point.knobs[k].most_compressed for k in self.knobs if k in point.knobs})

    def _policy_from_actions(self, actions: Sequence[LayerAction]) -> CompressionPolicy:
        return CompressionPolicy({p.name: a for p, a in zip(self.points, actions, strict=False)})

    # -- public helpers (used by heuristic proposers and tests) ---------------------------------
    def decode(self, index: int, u: np.ndarray) -> LayerAction:
        """The ``LayerAction`` at point ``index`` for unit action ``u`` (one entry per knob)."""
        point = self.points[index]
        return LayerAction(**{
            k: decode_knob(point.knobs[k], float(u[j])) for j, k in enumerate(self.knobs) if k in point.knobs
        })

    def encode(self, index: int, action: LayerAction) -> np.ndarray:
        """Unit action ``u`` that decodes to ``action`` at point ``index`` (0 for absent knobs)."""
        point = self.points[index]
        return np.array([
            encode_knob(point.knobs[k], getattr(action, k)) if k in point.knobs else 0.0
            for k in self.knobs
        ])

    def policy_from_units(self, units: np.ndarray) -> CompressionPolicy:
        """Policy from a ``(n_points, n_knobs)`` array of unit actions (or one row for every point)."""
        units = np.asarray(units, dtype=np.float64)
        if units.ndim == 1:
            units = np.broadcast_to(units, (self.n_points, len(self.knobs)))
        return self._policy_from_actions([self.decode(i, units[i]) for i in range(self.n_points)])

    def cost(self, metric: str, policy: CompressionPolicy) -> float:
        """Predicted cost ``metric`` of ``policy`` (the numbers the clipping uses)."""
        if metric not in self._cost_fns:
            raise UserInputError(f"cost metric {metric!r} is not available; allowed: {', '.join(self._cost_fns)}")
        return self._cost_fns[metric](policy)

    def predicted_costs(self, policy: CompressionPolicy) -> dict[str, float]:
        """Every available predicted cost of ``policy``."""
        return {m: f(policy) for m, f in self._cost_fns.items()}

    def hard_budgets(self, target: float | None = None) -> dict[str, float]:
        """Absolute hard budgets of an episode with MACs ``target`` (fraction; conditioned mode)."""
        out = dict(self.budgets)
        if self.budget_range is not None:
            if target is None:
                raise UserInputError("this environment is budget-conditioned; give a target fraction of the base MACs")
            out["macs"] = float(target) * self.base_costs["macs"]
        return out

    def violations(self, policy: CompressionPolicy, budgets: Mapping[str, float]) -> dict[str, float]:
        """Budgets ``policy`` breaks: metric -> predicted value (empty when it meets all)."""
        out = {}
        for m, b in budgets.items():
            v = self._cost_fns[m](policy)
            if v > b:
                out[m] = v
        return out

    def meets(self, policy: CompressionPolicy, budgets: Mapping[str, float]) -> bool:
        """True when ``policy``'s predicted costs are within every budget."""
        return all(self._cost_fns[m](policy) <= b for m, b in budgets.items())

    def check_target(self, target: float | None) -> float | None:
        """Validate a per-episode MACs target (fraction of the base); only in conditioned mode."""
        if target is None:
            return None
        if self.budget_range is None:
            raise UserInputError(
                "target is only allowed in budget-conditioned mode (CompressionEnv(budget_range=(lo, hi)))"
            )
        t = target
        if isinstance(t, bool) or not isinstance(t, int | float) or not (0.0 < float(t) <= 1.0):
            raise UserInputError(f"target={target!r} is not allowed; allowed: a fraction 0 < target <= 1")
        self._check_reachable("macs", float(t) * self.base_costs["macs"], "target")
        return float(t)

    # -- Gymnasium API --------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``options``: ``target`` (conditioned mode), ``evaluate`` (bool)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"target", "evaluate"}
        if unknown:
            raise UserInputError(f"unknown reset option(s) {sorted(unknown)}; allowed: target, evaluate")
        target = self.check_target(options.get("target"))
        if self.budget_range is not None and target is None:
            lo, hi = self.budget_range
            target = float(self.np_random.uniform(lo, hi)) if hi > lo else lo
        self._target = target
        self._episode_budgets = self.hard_budgets(target)
        self._evaluate_episode = bool(options.get("evaluate", True))
        self._t = 0
        self._done = False
        self._actions = []
        self._prev_u = np.zeros(len(self.knobs))
        return self._observation(), {"target": target, "budgets": dict(self._episode_budgets)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current point's action (clipped to keep every hard budget reachable)."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (len(self.knobs),) or not np.all(np.isfinite(a)):
            raise UserInputError(
                f"action {action!r} is not allowed; allowed: {len(self.knobs)} finite numbers in [-1, 1] "
                f"(knobs {', '.join(self.knobs)})"
            )
        t = self._t
        prefix = self._actions
        rest = self._most[t + 1:]
        budgets = self._episode_budgets

        def feasible(u: np.ndarray) -> bool:
            return self.meets(self._policy_from_actions([*prefix, self.decode(t, u), *rest]), budgets)

        u_raw = to_unit(a)
        u, lam = clip_to_budgets(u_raw, feasible, tol=self.clip_tol) if budgets else (u_raw, 0.0)
        layer_action = self.decode(t, u)
        self._actions.append(layer_action)
        self._prev_u = np.where([k in self.points[t].knobs for k in self.knobs], u, 0.0)
        self._t += 1
        info: dict[str, Any] = {
            "point": self.points[t].name, "layer_action": layer_action, "clipped": lam > 0,
            "action_taken": from_unit(u),
        }
        if self._t < self.n_points:
            return self._observation(), 0.0, False, False, info
        self._done = True
        policy = self._policy_from_actions(self._actions)
        if self._evaluate_episode:
            reward, final = self._score(policy)
        else:
            reward, final = 0.0, {"policy": policy, "policy_json": policy.to_json(),
                                  "predicted": self.predicted_costs(policy), "evaluated": False}
        info.update(final)
        info["target"] = self._target
        info["budgets"] = dict(budgets)
        return self._observation(), reward, True, False, info

    # -- scoring --------------------------------------------------------------------------------
    def _score(self, policy: CompressionPolicy) -> tuple[float, dict[str, Any]]:
        result = self.evaluate_fn(policy)
        self.n_evaluations += 1
        if isinstance(result, Mapping):
            raw, status, error = dict(result), "ok", None
        else:
            raw = dict(result.metrics)
            status = str(getattr(result, "status", "ok"))
            error = getattr(result, "error", None)
        predicted = self.predicted_costs(policy)
        metrics = {**predicted, **{k: float(v) for k, v in raw.items()}}
        scoring = dict(metrics)
        acc = scoring.get("acc", math.nan)
        if status != "ok" or not math.isfinite(acc):
            scoring["acc"] = 0.0
            if status == "ok":
                status, error = "failed", f"evaluation returned acc={acc!r}"
        reward = float(compute_reward(
            self.reward_kind, scoring, soft_budgets=self.soft_budgets,
            weights=self.reward_weights, base=self.base_costs,
        ))
        info = {
            "policy": policy, "policy_json": policy.to_json(), "metrics": metrics,
            "predicted": predicted, "status": status, "error": error, "fidelity": self.fidelity,
            "evaluated": True, "eval_result": result, "reward": reward,
        }
        return reward, info

    def probe(self, policy: CompressionPolicy) -> tuple[dict[str, float], str]:
        """Evaluate any policy through ``evaluate_fn`` for measurement only (sensitivity analysis).

        Not a candidate: no budget check, no reward. It still counts in ``n_evaluations``.
        Returns ``(metrics, status)``.
        """
        result = self.evaluate_fn(policy)
        self.n_evaluations += 1
        if isinstance(result, Mapping):
            return {k: float(v) for k, v in result.items()}, "ok"
        return {k: float(v) for k, v in result.metrics.items()}, str(getattr(result, "status", "ok"))

    def evaluate_policy(
        self, policy: CompressionPolicy, target: float | None = None
    ) -> tuple[float, dict[str, Any]]:
        """Score a complete policy the way an episode end would (for heuristic proposers).

        The policy must meet the hard budgets (of ``target`` in conditioned mode); a policy that
        breaks one raises ``UserInputError`` naming the metric, so no path around the budgets exists.
        """
        target = self.check_target(target)
        budgets = self.hard_budgets(target)
        broken = self.violations(policy, budgets)
        if broken:
            m, v = next(iter(broken.items()))
            raise UserInputError(f"policy breaks the hard budget {m}: {v:.6g} > {budgets[m]:.6g}")
        reward, info = self._score(policy)
        info["target"] = target
        info["budgets"] = budgets
        return reward, info

    # -- observation ----------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        t = self._t
        idx = min(t, self.n_points - 1)
        decided = self._actions
        current = self._policy_from_actions(decided)  # later points untouched
        floor = self._policy_from_actions([*decided, *self._most[len(decided):]])
        state: list[float] = []
        for m in self.tracked:
            budget = self._episode_budgets.get(m, self.soft_budgets.get(m))
            f = self._cost_fns[m]
            state.extend(budget_state(self.base_costs[m], f(current), f(floor), budget))
        obs = np.concatenate([
            self._features[idx], [t / self.n_points], state, self._prev_u,
        ])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    @property
    def target(self) -> float | None:
        """This episode's MACs target (fraction of the base) in conditioned mode, else ``None``."""
        return self._target


def _find_latency_fn(problem: Any) -> Callable[[CompressionPolicy], float] | None:
    """The problem's per-layer latency lookup table (built on first use), if it has an evaluator."""
    evaluator = getattr(problem, "evaluator", None)
    get_lut = getattr(evaluator, "get_lut", None)
    if get_lut is None:
        return None
    return lambda policy: float(get_lut().predict(policy))


def make_eval_result(metrics: Mapping[str, float]) -> EvalResult:
    """Wrap a metrics dict in an ``EvalResult`` (handy for cheap ``evaluate_fn`` hooks)."""
    from autocompress.evaluators import EvalResult

    return EvalResult(metrics=dict(metrics))
