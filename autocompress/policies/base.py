"""What proposes compression policies: one small agent interface and its registry."""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym

from autocompress.envs import CompressionEnv, EpisodeRecord
from autocompress.errors import UserInputError
from autocompress.registry import Registry

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy

#: Called after every evaluated episode with its record; returning ``False`` stops ``learn``.
EpisodeCallback = Callable[[EpisodeRecord], "bool | None"]

_SAVE_TYPE = "autocompress.Agent"
_SAVE_VERSION = 1


def unwrap_env(env: Any) -> CompressionEnv:
    """The ``CompressionEnv`` inside ``env``: itself, under Gymnasium wrappers, or the first env
    of an SB3 ``DummyVecEnv`` (SB3 agents then train on all of its envs)."""
    if not isinstance(env, gym.Env) and hasattr(env, "envs") and getattr(env, "envs", None):
        env = env.envs[0]
    inner = env.unwrapped if isinstance(env, gym.Env) else env
    if not isinstance(inner, CompressionEnv):
        raise UserInputError(
            f"agents need an autocompress CompressionEnv (or a wrapped one), got {type(env).__name__}"
        )
    return inner


class BaseAgent(abc.ABC):
    """Learns or searches a ``CompressionEnv`` and proposes ``CompressionPolicy`` objects.

    Every evaluation an agent spends goes through the env (an episode end or
    ``env.evaluate_policy``), so the env's ``evaluate_fn`` sees all of them and hard budgets
    hold for every candidate. ``history`` holds one ``EpisodeRecord`` per evaluated candidate.

    Example:
        >>> env = CompressionEnv(problem, budgets={"macs": Budget(0.5)})  # doctest: +SKIP
        >>> agent = create_agent("ddpg", env, seed=0)                      # doctest: +SKIP
        >>> agent.learn(total_episodes=300)                                # doctest: +SKIP
        >>> policy = agent.best().policy                                   # doctest: +SKIP

    Args:
        env: the environment (``CompressionEnv`` or a Gymnasium-wrapped one).
        seed: seed of every random choice the agent makes.
    """

    name: ClassVar[str] = ""

    def __init__(self, env: Any, seed: int = 0) -> None:
        self.env = env
        self.cenv = unwrap_env(env)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserInputError(f"seed={seed!r} is not allowed; allowed: an integer")
        self.seed = seed
        self.history: list[EpisodeRecord] = []

    # -- the interface ----------------------------------------------------------------------
    @abc.abstractmethod
    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> BaseAgent:
        """Spend up to ``total_episodes`` evaluated episodes improving the agent; returns ``self``."""

    @abc.abstractmethod
    def propose(self, target: float | None = None) -> CompressionPolicy:
        """A policy for the env's budgets (or MACs ``target`` in conditioned mode), no evaluation."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor settings (``create_agent(name, env, seed, **config)``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable learned state beyond ``history`` (heuristics)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore ``state_dict`` output."""

    def _save_extra(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write files beyond ``agent.json`` (networks)."""

    def _load_extra(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Read what ``_save_extra`` wrote."""

    # -- shared behaviour -------------------------------------------------------------------
    def best(self, target: float | None = None) -> EpisodeRecord | None:
        """The highest-reward successful record (of episodes with ``target``, when given)."""
        recs = [r for r in self.history if r.status == "ok" and math.isfinite(r.reward)]
        if target is not None:
            recs = [r for r in recs if r.target is not None and math.isclose(r.target, target, rel_tol=1e-9)]
        return max(recs, key=lambda r: r.reward, default=None)

    def _record(self, info: dict[str, Any], reward: float, callback: EpisodeCallback | None) -> bool:
        """Append the record of an evaluated episode; False when the callback asks to stop."""
        rec = EpisodeRecord(
            policy=info["policy"], reward=float(reward), metrics=dict(info.get("metrics", {})),
            status=str(info.get("status", "ok")), target=info.get("target"),
        )
        self.history.append(rec)
        return not (callback is not None and callback(rec) is False)

    @staticmethod
    def _check_episodes(total_episodes: int) -> int:
        if isinstance(total_episodes, bool) or not isinstance(total_episodes, int) or total_episodes < 1:
            raise UserInputError(f"total_episodes={total_episodes!r} is not allowed; allowed: an integer >= 1")
        return total_episodes

    def save(self, path: str | Path) -> Path:
        """Write the agent to directory ``path`` (``agent.json`` plus the agent's own files)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        blob = {
            "_type": _SAVE_TYPE, "_version": _SAVE_VERSION, "name": self.name, "seed": self.seed,
            "config": self.config(), "state": self.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "obs_shape": list(self.cenv.observation_space.shape),
            "knobs": list(self.cenv.knobs),
        }
        (directory / "agent.json").write_text(json.dumps(blob, indent=1, sort_keys=True))
        self._save_extra(directory)
        return directory

    @classmethod
    def load(cls, path: str | Path, env: Any) -> BaseAgent:
        """Rebuild a saved agent on ``env`` (same space layout); its class comes from the file."""
        directory = Path(path)
        meta_file = directory / "agent.json"
        if not meta_file.is_file():
            raise UserInputError(f"{directory} is not a saved agent (no agent.json)")
        blob = json.loads(meta_file.read_text())
        if blob.get("_type") != _SAVE_TYPE or blob.get("_version") != _SAVE_VERSION:
            raise UserInputError(
                f"{meta_file}: unsupported agent file (_type {blob.get('_type')!r}, _version "
                f"{blob.get('_version')!r}); this autocompress reads version {_SAVE_VERSION}"
            )
        klass = agent_class(blob["name"])
        if cls is not BaseAgent and not issubclass(klass, cls):
            raise UserInputError(f"{directory} holds a {blob['name']!r} agent, not a {cls.name or cls.__name__}")
        cenv = unwrap_env(env)
        if list(cenv.observation_space.shape) != blob["obs_shape"] or list(cenv.knobs) != blob["knobs"]:
            raise UserInputError(
                f"{directory}: the agent was trained on observations {blob['obs_shape']} and knobs "
                f"{blob['knobs']}; this env has {list(cenv.observation_space.shape)} and {list(cenv.knobs)}"
            )
        agent = klass._restore(env, int(blob["seed"]), dict(blob["config"]), directory)
        agent.history = [EpisodeRecord.from_dict(r) for r in blob["history"]]
        agent.load_state_dict(blob.get("state", {}))
        return agent

    @classmethod
    def _restore(cls, env: Any, seed: int, config: dict[str, Any], directory: Path) -> BaseAgent:
        agent = cls(env, seed=seed, **config)
        agent._load_extra(directory)
        return agent


#: Agent name -> class.
_AGENTS: Registry[type[BaseAgent]] = Registry("agent", BaseAgent)


def register_agent(name: str) -> Callable[[type[BaseAgent]], type[BaseAgent]]:
    """Class decorator registering an agent under ``name``; a duplicate name raises."""
    return _AGENTS.register(name)


def list_agents(pattern: str = "*") -> list[str]:
    """Registered agent names matching a glob."""
    return _AGENTS.names(pattern)


def agent_class(name: str) -> type[BaseAgent]:
    """The class registered as ``name``; an unknown name lists the allowed ones."""
    return _AGENTS.lookup(name)


def create_agent(name: str, env: Any, seed: int = 0, **kwargs: Any) -> BaseAgent:
    """Build a registered agent on ``env`` (``kwargs`` go to its constructor).

    Example:
        >>> agent = create_agent("uniform", env)  # doctest: +SKIP
    """
    return agent_class(name)(env, seed=seed, **kwargs)


def load_agent(path: str | Path, env: Any) -> BaseAgent:
    """Load any saved agent (``BaseAgent.load``)."""
    return BaseAgent.load(path, env)
