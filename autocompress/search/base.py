"""The ask/tell searcher interface, the context every searcher gets, and the searcher registry.

Every strategy (Optuna samplers, RL agents, heuristics) is an adapter behind :class:`BaseSearcher`:
the runner asks for a policy, evaluates it (with the cache), tells the result, and records it.
Searchers never evaluate anything themselves.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.errors import UserInputError
from autocompress.metrics import PREDICTED_METRICS as _PREDICTED
from autocompress.metrics import predicted_costs
from autocompress.registry import Registry

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.evaluators import EvalResult
    from autocompress.metrics import Budget
    from autocompress.search.objectives import Objective

#: Metrics the compression space predicts without building a model (cheap, monotone): the
#: ``predicted`` metrics of ``autocompress.metrics.VOCABULARY``.
PREDICTED_METRICS: tuple[str, ...] = _PREDICTED


@dataclass
class SearchContext:
    """What a searcher may look at: the space, objectives, budgets and the base model's metrics.

    Never the problem or its evaluator: a searcher proposes, the runner evaluates (RL searchers
    build their environment on the space and hand its evaluations to the runner through ask/tell).

    Args:
        space: the compression space (decision points, knobs, predicted costs).
        objectives: metrics optimised, with directions.
        budgets: hard budgets; ``limits`` holds their absolute bounds.
        soft_budgets: soft budgets (penalised by RL rewards, reported, never excluding).
        base_metrics: the uncompressed model's metrics.
        limits: budget name -> absolute bound on its metric (``acc-drop``: lowest accuracy).
        storage: the Optuna storage of the study (Optuna searchers open the study on it; None
            when the run records into ``ledger.jsonl``).
        study_name: the Optuna study's name.
        trials: candidates the study should evaluate in total.
        run_dir: the run directory (searchers may keep checkpoints under ``run_dir/searcher``).
        predict_latency: predicted latency (ms) of a policy, when a latency predictor is on.
        latency_table: the latency lookup table's prediction (ms) of a policy, built on its first
            call, offered even when the search predicts no latency (RL searchers whose reward
            weighs ``latency_ms`` use it); None when the evaluator has no lookup table.
        owner: the search process's worker id; searchers that create study trials tag them with
            it at once, so a process killed before it records a candidate leaves no ownerless
            trial behind.
    """

    space: CompressionSpace
    objectives: Sequence[Objective]
    budgets: Sequence[Budget] = ()
    soft_budgets: Sequence[Budget] = ()
    base_metrics: Mapping[str, float] = field(default_factory=dict)
    limits: Mapping[str, float] = field(default_factory=dict)
    storage: Any = None
    study_name: str = "autocompress"
    trials: int = 0
    run_dir: Path | None = None
    predict_latency: Callable[[CompressionPolicy], float] | None = None
    latency_table: Callable[[CompressionPolicy], float] | None = None
    owner: str | None = None

    def predicted_metrics(self, policy: CompressionPolicy) -> dict[str, float]:
        """Costs the space predicts for ``policy`` (and latency when a predictor is set)."""
        costs = self.space.costs(policy) if hasattr(self.space, "costs") else {
            "macs": self.space.macs(policy), "params": self.space.params(policy),
            "size_bytes": self.space.size_bytes(policy), "bops": self.space.bops(policy),
        }
        out = predicted_costs(costs)
        if self.predict_latency is not None:
            out["latency_ms"] = float(self.predict_latency(policy))
        return out

    def predicted_violations(self, policy: CompressionPolicy) -> dict[str, float]:
        """Normalised violation (> 0 infeasible) of each hard budget the space can predict."""
        predicted = self.predicted_metrics(policy)
        return {
            b.name: b.violation(predicted, self.base_metrics)
            for b in self.budgets
            if b.metric in predicted
        }

    def predicted_feasible(self, policy: CompressionPolicy) -> bool:
        """True when no predictable hard budget is violated."""
        return all(v <= 0.0 for v in self.predicted_violations(policy).values())

    def violations(self, metrics: Mapping[str, float], policy: CompressionPolicy | None = None
                   ) -> dict[str, float]:
        """Normalised violation of every hard budget by evaluated ``metrics`` (falls back to the
        predicted value for a metric the evaluation did not report)."""
        merged = dict(metrics)
        if policy is not None and any(b.metric not in merged for b in self.budgets):
            for k, v in self.predicted_metrics(policy).items():
                merged.setdefault(k, v)
        return {b.name: b.violation(merged, self.base_metrics) for b in self.budgets}

    def objective_values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective values of ``metrics`` in objective order (NaN where missing)."""
        return [float(metrics.get(o.name, math.nan)) for o in self.objectives]


class BaseSearcher(abc.ABC):
    """Proposes compression policies and learns from their results (ask/tell).

    Subclasses implement :meth:`ask` and :meth:`tell`; ``state_dict``/``load_state_dict`` and
    ``close`` are optional hooks. ``max_pending`` says how many asked policies may be waiting
    for their tell at once: 1 for searchers whose next proposal depends on the last result
    (RL agents, greedy), larger for ones that can propose batches (Optuna, random, uniform). A
    searcher with ``max_pending > 1`` must tolerate asked policies that are never told (another
    process evaluated that candidate).

    Args:
        context: the space, objectives, budgets and base metrics.
        seed: all randomness of the searcher derives from it.
        **settings: strategy settings (``SearchSpec.strategy_settings``), checked by
            :meth:`check_settings` against the constructor's keyword arguments.

    Example:
        >>> searcher = create_searcher("random", context, seed=0)  # doctest: +SKIP
        >>> policy = searcher.ask()  # doctest: +SKIP
        >>> searcher.tell(policy, evaluator.evaluate(policy))  # doctest: +SKIP
    """

    #: Registry name (set by ``register_searcher``).
    name: ClassVar[str] = ""
    #: Asked-but-not-told policies allowed at once.
    max_pending: ClassVar[int] = 1_000_000
    #: True for strategies driven by an Optuna sampler on the study itself.
    uses_optuna_study: ClassVar[bool] = False
    #: The runner skips evaluating proposals whose *predicted* costs break a hard budget
    #: (recorded as ``infeasible``). Env-driven strategies set False: their proposals meet the
    #: budgets by construction, and their measurement probes must always be evaluated.
    prescreen: ClassVar[bool] = True

    def __init__(self, context: SearchContext, seed: int = 0) -> None:
        self.context = context
        self.seed = int(seed)

    @abc.abstractmethod
    def ask(self) -> CompressionPolicy | None:
        """The next policy to evaluate, or None when the searcher has nothing more to propose."""

    @abc.abstractmethod
    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """The result of evaluating an asked ``policy`` (``result.status`` may be ``failed``)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for resuming (default: nothing beyond the study)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict` output."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads and resources (called once when the search ends)."""

    def discard(self, policy: CompressionPolicy) -> None:  # noqa: B027 - optional hook
        """An asked ``policy`` will never be told (another process has it, or the search stops)."""

    def optuna_trial(self, policy: CompressionPolicy) -> Any:
        """The Optuna trial this searcher created for ``policy`` (None: the runner creates one)."""
        return None

    def open_trials(self) -> list[Any]:
        """Optuna trials this searcher created and has not told yet (finished on Ctrl-C)."""
        return []

    @classmethod
    def setting_names(cls) -> list[str]:
        """Keyword settings the constructor accepts (besides ``context`` and ``seed``)."""
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items()
                if n not in ("self", "context", "seed") and p.kind is p.KEYWORD_ONLY]

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise ``UserInputError`` for a setting this searcher does not take."""
        allowed = cls.setting_names()
        for key in settings:
            if key not in allowed:
                raise UserInputError(
                    f"strategy {cls.name!r} has no setting {key!r}; allowed: "
                    f"{', '.join(allowed) or '(none)'}"
                )


#: The strategy of a search that names none: the uniform ladder refined per layer
#: (benchmarks/README.md, "Default strategy `ladder` vs the uniform sweep").
DEFAULT_STRATEGY = "ladder"

#: name -> class, or ``"module:Class"`` entry point imported on first use (keeps optuna, ray and
#: stable-baselines3 out of ``import autocompress.search``).
_SEARCHERS: Registry[type[BaseSearcher]] = Registry("strategy", BaseSearcher)


def register_searcher(name: str, entry_point: str | None = None
                      ) -> Callable[[type[BaseSearcher]], type[BaseSearcher]]:
    """Register a searcher class under ``name`` (decorator); a duplicate name raises.

    With ``entry_point="module:Class"`` the class is registered lazily instead (call it as a
    plain function; the returned decorator is then unused).
    """
    return _SEARCHERS.register(name, entry_point)


def list_searchers(pattern: str = "*") -> list[str]:
    """Registered strategy names matching a glob."""
    return _SEARCHERS.names(pattern)


def searcher_class(name: str) -> type[BaseSearcher]:
    """The class registered as ``name``; an unknown name lists the allowed ones."""
    return _SEARCHERS.lookup(name)


def create_searcher(name: str, context: SearchContext, seed: int = 0, **settings: Any
                    ) -> BaseSearcher:
    """Build the searcher registered as ``name`` with its ``settings``.

    Example:
        >>> searcher = create_searcher("nsga2", context, seed=0, population_size=8)  # doctest: +SKIP
    """
    cls = searcher_class(name)
    cls.check_settings(settings)
    try:
        return cls(context, seed=seed, **settings)
    except TypeError as exc:
        raise UserInputError(f"strategy {name!r}: {exc}") from None


# Built-in strategies, imported on first use.
for _name, _entry in {
    "nsga2": "autocompress.search.optuna_searcher:NSGA2Searcher",
    "tpe": "autocompress.search.optuna_searcher:TPESearcher",
    "random": "autocompress.search.baseline_searchers:RandomSearcher",
    "uniform": "autocompress.search.baseline_searchers:UniformSearcher",
    "ladder": "autocompress.search.ladder_searcher:LadderSearcher",
    "greedy": "autocompress.search.baseline_searchers:GreedySearcher",
    "ddpg": "autocompress.search.rl_searcher:DDPGSearcher",
    "td3": "autocompress.search.rl_searcher:TD3Searcher",
    "sac": "autocompress.search.rl_searcher:SACSearcher",
    "ppo": "autocompress.search.rl_searcher:PPOSearcher",
    "ddpg_bc": "autocompress.search.rl_searcher:BudgetConditionedDDPGSearcher",
}.items():
    register_searcher(_name, _entry)
