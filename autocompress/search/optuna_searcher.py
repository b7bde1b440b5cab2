"""Optuna multi-objective samplers (NSGA-II, TPE) behind the ask/tell searcher interface.

One Optuna parameter per (decision point, knob): ``"<point name>:<knob>"``, a float range for
``prune``/``rank`` and a categorical choice for ``w_bits``/``a_bits``. Hard budgets become Optuna
constraints (``<= 0`` feasible): one constraint per budget, set on the trial with
``Trial.set_constraint`` before it is told
(Optuna 5 reads constraints from the trial; its ``constraints_func`` argument is deprecated). The
values are the normalised violations of the space's predicted costs (MACs, FLOPs, params, size,
BOPs) and of measured metrics (latency, accuracy drop). A candidate rejected before evaluation on
its predicted costs is told with those costs and a positive constraint, so samplers rank it behind
every feasible trial. Each searcher builds its own sampler; no sampler object is ever shared
between studies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.search._projection import BUDGET_FILL, BudgetProjector, make_projector
from autocompress.search.base import BaseSearcher, SearchContext, register_searcher

if TYPE_CHECKING:
    import optuna

    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.evaluators import EvalResult

PARAM_SEP = ":"


def param_name(point: str, knob: str) -> str:
    """The Optuna parameter name of one knob at one decision point."""
    return f"{point}{PARAM_SEP}{knob}"


def space_distributions(space: CompressionSpace, projector: BudgetProjector | None = None
                        ) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions for every (decision point, knob) of ``space``, in space order.

    With a budget ``projector``, one more parameter, ``budget_fill``, sets where on the budget
    the policy is placed, and knobs it holds get no parameter (see ``_projection``).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    held = projector.held if projector is not None else ()
    out: dict[str, Any] = {}
    for point in space.decision_points:
        for knob_name, knob in point.knobs.items():
            if knob_name in held:
                continue  # nothing rewards it: held at its least compressed value
            choices = getattr(knob, "choices", None)
            if choices:
                out[param_name(point.name, knob_name)] = CategoricalDistribution(tuple(choices))
            else:
                ends = (float(knob.most_compressed), float(knob.least_compressed))
                lo, hi = min(ends), max(ends)
                if hi <= lo:
                    continue  # a knob with a single legal value is no decision
                out[param_name(point.name, knob_name)] = FloatDistribution(lo, hi)
    if projector is not None:
        out[BUDGET_FILL] = FloatDistribution(projector.fill_low, 1.0)
    return out


def policy_from_params(space: CompressionSpace, params: Mapping[str, Any],
                       projector: BudgetProjector | None = None) -> CompressionPolicy:
    """The policy an Optuna parameter dict describes (missing knobs stay at identity).

    With a ``projector`` and a ``budget_fill`` parameter, the sampled values are read as relative
    compression and scaled onto the budget (a pure function of the parameters).
    """
    layers = {}
    for point in space.decision_points:
        knobs = {}
        for knob_name in point.knobs:
            key = param_name(point.name, knob_name)
            if key in params:
                knobs[knob_name] = params[key]
        if knobs:
            layers[point.name] = LayerAction(**knobs)
    policy = CompressionPolicy(layers)
    if projector is not None and BUDGET_FILL in params:
        policy = projector(policy, float(params[BUDGET_FILL]))
    return policy


def suggest_policy(trial: Any, space: CompressionSpace,
                   distributions: Mapping[str, Any] | None = None,
                   projector: BudgetProjector | None = None) -> CompressionPolicy:
    """Sample a policy through ``trial.suggest_*`` (define-by-run; used locally and under Ray)."""
    from optuna.distributions import CategoricalDistribution

    dists = space_distributions(space, projector) if distributions is None else distributions
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high)
    return policy_from_params(space, params, projector)


def constraint_values(context: SearchContext, policy: CompressionPolicy,
                      metrics: Mapping[str, float]) -> dict[str, float]:
    """One Optuna constraint per hard budget (``<= 0`` feasible): its normalised violation.

    Costs the space predicts (MACs, FLOPs, params, size, BOPs) come from the evaluated metrics,
    which are the space's predictions, or from the space itself when a metric is missing;
    measured ones (latency, the accuracy drop) from the evaluation.
    """
    return {name: float(v) for name, v in context.violations(metrics, policy).items()}


def set_constraints(trial: Any, values: Mapping[str, float]) -> None:
    """Store constraint values on an open trial (``Trial.set_constraint``, read by the samplers)."""
    import math

    for name, v in values.items():
        trial.set_constraint(name, float(v) if math.isfinite(v) else 1.0)


def study_directions(context: SearchContext) -> list[str]:
    """Optuna directions of the objectives, in order."""
    return [o.direction for o in context.objectives]


class _OptunaSearcher(BaseSearcher):
    """Common ask/tell over an Optuna study on the run's storage."""

    uses_optuna_study = True

    def __init__(self, context: SearchContext, seed: int = 0, **settings: Any) -> None:
        import optuna

        super().__init__(context, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.settings = dict(settings)
        self.projector = make_projector(context) if settings.get("budget_projection", True) else None
        self.distributions = space_distributions(context.space, self.projector)
        self.sampler = self.build_sampler(context, self.seed, **self.settings)
        self.study = optuna.create_study(
            storage=context.storage, study_name=context.study_name, sampler=self.sampler,
            directions=study_directions(context), load_if_exists=True,
        )
        self._pending: dict[str, list[Any]] = {}
        self._asking: list[Any] = []

    @classmethod
    def build_sampler(cls, context: SearchContext, seed: int, **settings: Any
                      ) -> optuna.samplers.BaseSampler:
        """A fresh sampler (never shared between studies); constraints come from the trials."""
        raise NotImplementedError

    def ask(self) -> CompressionPolicy:
        """Ask the study for a trial and turn its parameters into a policy."""
        trial = self.study.ask()
        self._asking = [trial]
        if self.context.owner is not None:
            trial.set_user_attr("worker", self.context.owner)
        policy = suggest_policy(trial, self.context.space, self.distributions, self.projector)
        self._pending.setdefault(policy.key(), []).append(trial)
        self._asking = []
        return policy

    def discard(self, policy: CompressionPolicy) -> None:
        """Forget the oldest open trial of ``policy`` (the runner finished it itself)."""
        trials = self._pending.get(policy.key())
        if trials:
            trials.pop(0)
            if not trials:
                self._pending.pop(policy.key(), None)

    def open_trials(self) -> list[Any]:
        """Every asked, untold trial (including one interrupted before it proposed a policy)."""
        return [t for ts in self._pending.values() for t in ts] + list(self._asking)

    def optuna_trial(self, policy: CompressionPolicy) -> Any:
        """The open trial that proposed ``policy``."""
        trials = self._pending.get(policy.key())
        return trials[0] if trials else None

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """Complete the policy's trial with its objective values (``FAIL`` when it failed)."""
        import math

        from optuna.trial import TrialState

        trials = self._pending.get(policy.key())
        if not trials:
            return
        trial = trials.pop(0)
        if not trials:
            self._pending.pop(policy.key(), None)
        values = self.context.objective_values(result.metrics)
        if result.ok and all(math.isfinite(v) for v in values):
            if self.context.budgets:
                set_constraints(trial, constraint_values(self.context, policy, result.metrics))
            self.study.tell(trial, values)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def state_dict(self) -> dict[str, Any]:
        """Optuna keeps its state in the study; only the open trial numbers are noted."""
        return {"pending": sorted(t.number for ts in self._pending.values() for t in ts)}


@register_searcher("nsga2")
class NSGA2Searcher(_OptunaSearcher):
    """NSGA-II (Optuna ``NSGAIISampler``) with hard budgets as constraints.

    Args:
        population_size: individuals per generation (default: ``trials // 4`` clipped to 4..50).
        mutation_prob: per-parameter mutation probability (default ``1 / n_params``).
        crossover_prob: probability of crossover for a child.
        budget_projection: place each sampled policy on the hard budgets (see
            ``_projection``); off samples every knob independently.
    """

    def __init__(self, context: SearchContext, seed: int = 0, *,
                 population_size: int | None = None, mutation_prob: float | None = None,
                 crossover_prob: float = 0.9, budget_projection: bool = True) -> None:
        super().__init__(context, seed, population_size=population_size,
                         mutation_prob=mutation_prob, crossover_prob=crossover_prob,
                         budget_projection=budget_projection)

    @classmethod
    def build_sampler(cls, context: SearchContext, seed: int, *, population_size: int | None = None,
                      mutation_prob: float | None = None, crossover_prob: float = 0.9,
                      budget_projection: bool = True) -> optuna.samplers.BaseSampler:
        import optuna

        if population_size is None:
            population_size = max(4, min(50, context.trials // 4 if context.trials else 20))
        return optuna.samplers.NSGAIISampler(
            population_size=int(population_size), mutation_prob=mutation_prob,
            crossover_prob=float(crossover_prob), seed=seed,
        )


@register_searcher("tpe")
class TPESearcher(_OptunaSearcher):
    """Multi-objective TPE (Optuna ``TPESampler``, multivariate) with hard budgets as constraints.

    Args:
        n_startup_trials: random trials before the model kicks in (default ``trials // 4``,
            clipped to 5..10).
        multivariate: model the knobs jointly.
        constant_liar: avoid proposing the same region to concurrent workers.
        budget_projection: place each sampled policy on the hard budgets (see
            ``_projection``); off samples every knob independently.
    """

    def __init__(self, context: SearchContext, seed: int = 0, *,
                 n_startup_trials: int | None = None, multivariate: bool = True,
                 constant_liar: bool = True, budget_projection: bool = True) -> None:
        super().__init__(context, seed, n_startup_trials=n_startup_trials,
                         multivariate=multivariate, constant_liar=constant_liar,
                         budget_projection=budget_projection)

    @classmethod
    def build_sampler(cls, context: SearchContext, seed: int, *, n_startup_trials: int | None = None,
                      multivariate: bool = True, constant_liar: bool = True,
                      budget_projection: bool = True) -> optuna.samplers.BaseSampler:
        import warnings

        import optuna

        if n_startup_trials is None:
            n_startup_trials = max(5, min(10, context.trials // 4 if context.trials else 10))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                n_startup_trials=int(n_startup_trials), multivariate=bool(multivariate),
                constant_liar=bool(constant_liar), seed=seed,
            )
