"""RL agents (DDPG, TD3, SAC, PPO, budget-conditioned DDPG) behind the ask/tell interface.

An agent from ``autocompress.policies`` learns by driving a ``CompressionEnv`` whose
``evaluate_fn`` is called at the end of each episode. To let the search runner evaluate (with
its cache and records) every policy the agent wants scored, the control flow is inverted: the
agent's ``learn`` runs in a worker thread, and the env's ``evaluate_fn`` hands the policy to
:meth:`AgentSearcher.ask` and blocks until :meth:`AgentSearcher.tell` returns the result. The two
threads strictly alternate (one runs while the other waits), so a seeded search is
deterministic. Hard budgets hold by construction through the env's action clipping.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.errors import UserInputError
from autocompress.metrics import COST_METRICS, macs_from_flops
from autocompress.search.base import BaseSearcher, SearchContext, register_searcher

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult

#: Search budgets the env can clip to: every cost (``acc-drop`` is checked on results instead).
_ENV_BUDGET_METRICS = COST_METRICS


class _Stop(BaseException):
    """Raised inside the agent's thread to end ``learn`` when the search is over."""


_STOP = object()


class AgentSearcher(BaseSearcher):
    """Adapter: an ``autocompress.policies`` agent learning on a ``CompressionEnv``, as ask/tell.

    The env is built from the context's space, budgets and latency predictor only; the searcher
    never sees the problem or its evaluator.

    Args:
        reward: env reward (``acc``, ``r_flops``, ``lagrangian``, ``weighted``); ``lagrangian``
            penalises the spec's soft budgets.
        reward_weights: multipliers / weights of the reward (see ``CompressionEnv``).
        warmup_episodes: random episodes before learning (default: a quarter of the trials,
            at most 100).
        agent_settings: further constructor settings of the agent (e.g. ``net_arch``); they may
            also be given as keyword arguments directly.
        total_episodes: episodes the agent is allowed (default: enough that the runner's trial
            count, not the agent, ends the search).
    """

    max_pending = 1
    #: Proposals come from the env, which clips to the budgets; probes must never be skipped.
    prescreen: ClassVar[bool] = False
    agent_name: ClassVar[str] = ""
    conditioned: ClassVar[bool] = False

    def __init__(self, context: SearchContext, seed: int = 0, *, reward: str = "acc",
                 reward_weights: Mapping[str, float] | None = None,
                 warmup_episodes: int | None = None,
                 agent_settings: Mapping[str, Any] | None = None,
                 total_episodes: int | None = None,
                 budget_range: Sequence[float] | None = None, **agent_kw: Any) -> None:
        super().__init__(context, seed)
        from autocompress.envs import CompressionEnv
        from autocompress.policies import create_agent

        budgets: dict[str, float] = {}
        soft: dict[str, float] = {}
        for b in context.budgets:
            if b.metric in _ENV_BUDGET_METRICS and (b.metric != "latency_ms" or context.predict_latency):
                budgets[b.metric] = float(context.limits[b.name])
        for b in context.soft_budgets:
            if b.metric in _ENV_BUDGET_METRICS and (b.metric != "latency_ms" or context.predict_latency):
                soft[b.metric] = float(b.limit(context.base_metrics))
        env_range = None
        if self.conditioned:
            env_range = self._budget_range(budgets, budget_range)
            budgets.pop("macs", None)
            budgets.pop("flops", None)
        self.budget_range = env_range
        latency_fn = context.predict_latency
        if latency_fn is None and "latency_ms" in (reward_weights or {}):
            # A reward weighing latency in a search that predicts none: the lookup table's
            # prediction, built on first use (as the env would build it from an evaluator).
            latency_fn = context.latency_table
        # The env is built on the space alone; every evaluation it asks for goes to the runner.
        self.env = CompressionEnv(
            space=context.space, budgets=budgets, soft_budgets=soft or None, reward=reward,
            reward_weights=reward_weights, budget_range=env_range,
            evaluate_fn=self._evaluate_fn, latency_fn=latency_fn,
        )
        settings = {**dict(agent_settings or {}), **agent_kw}
        if self._uses_warmup() and "warmup_episodes" not in settings:
            if warmup_episodes is None:
                warmup_episodes = max(1, min(100, int(context.trials) // 4))
            settings["warmup_episodes"] = int(warmup_episodes)
        self.agent = create_agent(self.agent_name, self.env, seed=self.seed, **settings)
        self.total_episodes = int(total_episodes) if total_episodes else max(
            100, 20 * max(1, int(context.trials)))
        self._to_runner: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._to_agent: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._awaiting: CompressionPolicy | None = None
        self._finished = False
        self.n_told = 0

    # -- settings ---------------------------------------------------------------------------
    def _uses_warmup(self) -> bool:
        return self.agent_name in ("ddpg", "td3", "sac")

    @classmethod
    def _agent_setting_names(cls) -> list[str]:
        if not cls.agent_name:
            return []
        from autocompress.policies import agent_class

        klass = agent_class(cls.agent_name)
        names: list[str] = []
        for fn in (klass.__init__, getattr(klass, "_build", None)):
            if fn is None:
                continue
            for n, p in inspect.signature(fn).parameters.items():
                if p.kind is p.KEYWORD_ONLY and n not in names:
                    names.append(n)
        return names

    @classmethod
    def setting_names(cls) -> list[str]:
        """The adapter's settings plus every keyword setting of the agent."""
        own = [n for n in super().setting_names() if n not in ("agent_settings", "total_episodes")]
        if not cls.conditioned:
            own = [n for n in own if n != "budget_range"]
        return own + [n for n in cls._agent_setting_names() if n not in own]

    def _budget_range(self, budgets: Mapping[str, float], given: Sequence[float] | None
                      ) -> tuple[float, float]:
        ctx = self.context
        base_macs = float(ctx.base_metrics.get("macs") or ctx.space.macs(ctx.space.identity()))
        floor = float(ctx.space.macs(ctx.space.most_compressed())) / base_macs
        if given is not None:
            lo, hi = (float(x) for x in given)
        else:
            hi = 1.0
            if "macs" in budgets:
                hi = budgets["macs"] / base_macs
            if "flops" in budgets:
                hi = min(hi, macs_from_flops(budgets["flops"]) / base_macs)
            lo = max(floor * 1.02, hi / 4.0)
        if not (0.0 < lo <= hi <= 1.0):
            raise UserInputError(
                f"budget_range={[lo, hi]!r} is not allowed; allowed: 0 < low <= high <= 1 "
                "(fractions of the base model's MACs)"
            )
        return (lo, hi)

    # -- the inverted loop ------------------------------------------------------------------
    def _evaluate_fn(self, policy: CompressionPolicy) -> EvalResult:
        """Runs in the agent's thread: hand ``policy`` to the runner and wait for its result."""
        self._to_runner.put(("ask", policy))
        msg = self._to_agent.get()
        if msg is _STOP:
            raise _Stop()
        return msg

    def _learn(self) -> None:
        try:
            self.agent.learn(self.total_episodes)
        except _Stop:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the runner's thread
            self._to_runner.put(("error", exc))
            return
        self._to_runner.put(("done", None))

    def ask(self) -> CompressionPolicy | None:
        """Let the agent run until it wants a policy scored; None when it has finished."""
        if self._finished:
            return None
        if self._awaiting is not None:
            raise RuntimeError(f"{self.name}: tell() the last asked policy before asking again")
        if self._thread is None:
            self._thread = threading.Thread(target=self._learn, name=f"autocompress-{self.name}",
                                            daemon=True)
            self._thread.start()
        kind, payload = self._to_runner.get()
        if kind == "ask":
            self._awaiting = payload
            return payload
        self._finished = True
        if kind == "error":
            raise payload
        return None

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        """Hand the result back to the agent (it continues learning until its next ask)."""
        if self._awaiting is None:
            return
        self._awaiting = None
        self.n_told += 1
        self._to_agent.put(result)

    def close(self) -> None:
        """Stop the agent's thread."""
        if self._thread is not None and self._thread.is_alive():
            self._to_agent.put(_STOP)
            self._thread.join(timeout=60)
        self._finished = True

    def state_dict(self) -> dict[str, Any]:
        """Episodes told so far; a resumed search replays them from the recorded results."""
        return {"told": self.n_told}


@register_searcher("ddpg")
class DDPGSearcher(AgentSearcher):
    """DDPG with AMC's settings (actor/critic 300-300, truncated-normal exploration, warm-up)."""

    agent_name = "ddpg"


@register_searcher("td3")
class TD3Searcher(AgentSearcher):
    """TD3 on the AMC environment."""

    agent_name = "td3"


@register_searcher("sac")
class SACSearcher(AgentSearcher):
    """SAC on the AMC environment."""

    agent_name = "sac"


@register_searcher("ppo")
class PPOSearcher(AgentSearcher):
    """PPO on the AMC environment (sparse end-of-episode reward)."""

    agent_name = "ppo"


@register_searcher("ddpg_bc")
class BudgetConditionedDDPGSearcher(AgentSearcher):
    """Budget-conditioned DDPG: each episode draws a MACs target from ``budget_range`` and the
    target is part of the observation, so one agent proposes policies across budgets (a front
    from one training run).

    ``budget_range`` (fractions of the base MACs) defaults to ``[max(1.02 x floor, high / 4),
    high]`` where ``high`` is the hard MACs (or FLOPs) budget, or 1 without one; every target is
    a hard budget of its episode, so a hard MACs budget still holds for every candidate.
    """

    agent_name = "ddpg"
    conditioned = True
