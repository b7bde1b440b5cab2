"""Stable-Baselines3 agents (DDPG with AMC's settings, TD3, SAC, PPO) behind ``BaseAgent``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise

from autocompress.compression import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.policies._amc import (
    AMCDDPG,
    EpisodeRewardReplayBuffer,
    TruncatedNormalActionNoise,
)
from autocompress.policies.base import BaseAgent, EpisodeCallback, register_agent

_MODEL_FILE = "sb3_model.zip"


def _no_unpickling(path: Path, model: BaseAlgorithm) -> dict[str, Any]:
    """``custom_objects`` replacing every cloudpickled entry of an SB3 save by ``model``'s own value.

    SB3 stores attributes that are not JSON (spaces, classes, schedules, the action noise) as
    base64 cloudpickle and unpickles them on load, which runs whatever code a planted file holds.
    The agent being restored was just built from the same JSON settings (``agent.json``), so its
    own values are the right ones; learned state lives in the tensors (loaded weights-only by
    SB3) and in ``state_dict``.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{str(path)!r} is not a saved stable-baselines3 model ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{str(path)!r} is not a saved stable-baselines3 model")
    return {k: getattr(model, k, None) for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}


class _EpisodeHook(BaseCallback):
    """Turns every evaluated episode end into an ``EpisodeRecord`` and honours the user's stop."""

    def __init__(self, agent: SB3Agent, callback: EpisodeCallback | None, limit: int | None) -> None:
        super().__init__()
        self.agent = agent
        self.user_callback = callback
        self.limit = limit
        self.count = 0

    def _on_step(self) -> bool:
        keep_going = True
        for info in self.locals.get("infos", []):
            if info.get("evaluated"):
                self.count += 1
                keep_going &= self.agent._record(info, info["reward"], self.user_callback)
        if self.limit is not None and self.count >= self.limit:
            return False
        return keep_going


class SB3Agent(BaseAgent):
    """Common wrapper: builds the SB3 model, turns episodes into timesteps, proposes greedily.

    ``learn(n)`` runs ``n`` episodes (``n * n_points`` timesteps). ``propose(target)`` rolls out the
    deterministic actor in the env with evaluation switched off, so it costs no evaluation.
    ``warmup_episodes=None`` means ``min(100, max(1, n // 4))`` for the first ``learn(n)`` (AMC uses
    100 random episodes before its 300-800 learning ones).
    """

    _on_policy: ClassVar[bool] = False

    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        warmup_episodes: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
        **settings: Any,
    ) -> None:
        super().__init__(env, seed=seed)
        if warmup_episodes is not None and (
            isinstance(warmup_episodes, bool) or not isinstance(warmup_episodes, int) or warmup_episodes < 0
        ):
            raise UserInputError(f"warmup_episodes={warmup_episodes!r} is not allowed; allowed: an integer >= 0")
        self._config = {
            "warmup_episodes": warmup_episodes, "tensorboard_log": tensorboard_log,
            "verbose": verbose, "device": device, **settings,
        }
        self.warmup_episodes = warmup_episodes
        self.steps_per_episode = self.cenv.n_points
        self.model: BaseAlgorithm = self._build(
            tensorboard_log=tensorboard_log, verbose=verbose, device=device, **settings
        )
        self._install_logger()

    def _install_logger(self) -> None:
        """Without ``tensorboard_log``, log to stdout (``verbose``) or nowhere, never to a folder.

        SB3's default logger creates an empty ``SB3-<timestamp>`` folder in the system temp
        directory on every ``learn``; an explicit logger without a folder stops that.
        """
        if self._config.get("tensorboard_log"):
            return
        import sys

        from stable_baselines3.common.logger import HumanOutputFormat, Logger

        formats = [HumanOutputFormat(sys.stdout)] if int(self._config.get("verbose") or 0) >= 1 else []
        self.model.set_logger(Logger(folder=None, output_formats=formats))

    def _build(self, **kw: Any) -> BaseAlgorithm:  # pragma: no cover - abstract in spirit
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor settings (JSON)."""
        return _jsonable(self._config)

    def state_dict(self) -> dict[str, Any]:
        """The warm-up actually used, and AMC's exploration noise (episodes seen, generator)."""
        state: dict[str, Any] = {"warmup_episodes": self.warmup_episodes}
        noise = getattr(self.model, "action_noise", None)
        if isinstance(noise, TruncatedNormalActionNoise):
            state["noise"] = {"episodes": noise.episodes, "rng": noise._rng.bit_generator.state}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output."""
        if state.get("warmup_episodes") is not None:
            self._set_warmup(int(state["warmup_episodes"]))
        noise = getattr(self.model, "action_noise", None)
        saved = state.get("noise")
        if isinstance(noise, TruncatedNormalActionNoise) and isinstance(saved, dict):
            noise.episodes = int(saved.get("episodes", 0))
            if isinstance(saved.get("rng"), dict):
                noise._rng.bit_generator.state = saved["rng"]

    def _set_warmup(self, episodes: int) -> None:
        self.warmup_episodes = episodes
        if hasattr(self.model, "learning_starts"):
            self.model.learning_starts = episodes * self.steps_per_episode
        noise = getattr(self.model, "action_noise", None)
        if isinstance(noise, TruncatedNormalActionNoise):
            noise.warmup_episodes = episodes

    def learn(self, total_episodes: int, callback: EpisodeCallback | None = None) -> SB3Agent:
        """Train for ``total_episodes`` evaluated episodes (each one evaluation)."""
        n = self._check_episodes(total_episodes)
        if self.warmup_episodes is None:
            self._set_warmup(min(100, max(1, n // 4)))
        buffer = getattr(self.model, "replay_buffer", None)
        if isinstance(buffer, EpisodeRewardReplayBuffer):
            buffer.discard_pending()
        hook = _EpisodeHook(self, callback, n if self._on_policy else None)
        self.model.learn(
            total_timesteps=n * self.steps_per_episode, callback=hook,
            reset_num_timesteps=False, tb_log_name=self.name,
        )
        # propose() or an interrupted episode leaves the env mid-way: make the next learn reset it.
        self.model._last_obs = None  # type: ignore[assignment]
        return self

    def propose(self, target: float | None = None) -> CompressionPolicy:
        """Roll out the deterministic policy (no evaluation) for the env's budgets / ``target``."""
        env = self.cenv
        if env.budget_range is not None and target is None:
            raise UserInputError("this agent is budget-conditioned: propose(target=...) needs a MACs fraction")
        obs, _ = env.reset(options={"target": target, "evaluate": False})
        while True:
            action, _ = self.model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        self.model._last_obs = None  # type: ignore[assignment]
        return info["policy"]

    def _save_extra(self, directory: Path) -> None:
        self.model.save(directory / _MODEL_FILE)

    def _load_extra(self, directory: Path) -> None:
        algo = type(self.model)
        path = directory / _MODEL_FILE
        self.model = algo.load(path, env=self.env, device=self._config.get("device", "cpu"),
                               custom_objects=_no_unpickling(path, self.model))
        self.model.set_random_seed(self.seed)
        self._install_logger()

    def _policy_kwargs(self, net_arch: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
        kw = dict(extra or {})
        kw.setdefault("net_arch", list(net_arch))
        return kw

    def _episode_replay(self, *, batch_size: int, buffer_episodes: int, baseline_alpha: float,
                        net_arch: Any, policy_kwargs: dict[str, Any] | None, tensorboard_log: str | None,
                        verbose: int, device: str) -> dict[str, Any]:
        """The off-policy arguments DDPG, TD3 and SAC share: learning from whole episodes (every
        transition gets the episode's final reward), one gradient step per transition after each
        episode, nothing learned during the warm-up episodes."""
        T = self.steps_per_episode
        return {
            "batch_size": batch_size, "buffer_size": max(buffer_episodes * T, batch_size),
            "learning_starts": (self.warmup_episodes or 0) * T, "train_freq": (T, "step"),
            "gradient_steps": -1, "replay_buffer_class": EpisodeRewardReplayBuffer,
            "replay_buffer_kwargs": {"baseline_alpha": baseline_alpha},
            "policy_kwargs": self._policy_kwargs(net_arch, policy_kwargs),
            "tensorboard_log": tensorboard_log, "verbose": verbose, "seed": self.seed, "device": device,
        }


@register_agent("ddpg")
class DDPGAgent(SB3Agent):
    """DDPG with AMC's settings (He et al. 2018).

    Defaults: actor and critic 300-300; Adam lr 1e-4 (actor) / 1e-3 (critic); tau 0.01; batch 64;
    discount 1; a warm-up of random episodes; exploration ``a ~ TN(mu(s), sigma_e, [0, 1])`` with
    ``sigma_e = 0.5 * 0.95**(episode - warmup)``; every transition gets the episode's final reward
    minus a moving-average baseline (``EpisodeRewardReplayBuffer``); after each episode, one
    gradient step per transition of the episode (``train_freq = n_points`` steps,
    ``gradient_steps = -1``); replay memory of 100 episodes.

    Args:
        net_arch: hidden sizes of actor and critic.
        actor_lr, critic_lr: learning rates.
        tau: target-network soft update.
        batch_size: minibatch size.
        gamma: discount.
        noise_sigma, noise_decay: exploration width (in [0, 1] action units) and its per-episode decay.
        buffer_episodes: replay memory, in episodes.
        baseline_alpha: moving-average rate of the reward baseline.
        policy_kwargs: extra SB3 ``policy_kwargs``.
    """

    def _build(
        self,
        *,
        net_arch: tuple[int, ...] | list[int] = (300, 300),
        actor_lr: float = 1e-4,
        critic_lr: float = 1e-3,
        tau: float = 0.01,
        batch_size: int = 64,
        gamma: float = 1.0,
        noise_sigma: float = 0.5,
        noise_decay: float = 0.95,
        buffer_episodes: int = 100,
        baseline_alpha: float = 0.5,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
    ) -> BaseAlgorithm:
        k = self.cenv.action_space.shape[0]
        noise = TruncatedNormalActionNoise(
            k, sigma=noise_sigma, decay=noise_decay, warmup_episodes=self.warmup_episodes or 0, seed=self.seed,
        )
        return AMCDDPG(
            "MlpPolicy", self.env, actor_lr=actor_lr, critic_lr=critic_lr, tau=tau, gamma=gamma,
            action_noise=noise,
            **self._episode_replay(batch_size=batch_size, buffer_episodes=buffer_episodes,
                                   baseline_alpha=baseline_alpha, net_arch=net_arch, policy_kwargs=policy_kwargs,
                                   tensorboard_log=tensorboard_log, verbose=verbose, device=device),
        )


@register_agent("td3")
class TD3Agent(SB3Agent):
    """TD3 on the same episode-reward mechanism as DDPG (final reward to every transition, discount 1).

    Gaussian exploration ``action_sigma`` (in [-1, 1] units), SB3's target smoothing and delayed
    actor updates.
    """

    def _build(
        self,
        *,
        net_arch: tuple[int, ...] | list[int] = (300, 300),
        learning_rate: float = 1e-3,
        tau: float = 0.005,
        batch_size: int = 64,
        gamma: float = 1.0,
        action_sigma: float = 0.2,
        buffer_episodes: int = 100,
        baseline_alpha: float = 0.5,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
    ) -> BaseAlgorithm:
        k = self.cenv.action_space.shape[0]
        return TD3(
            "MlpPolicy", self.env, learning_rate=learning_rate, tau=tau, gamma=gamma,
            action_noise=NormalActionNoise(np.zeros(k), action_sigma * np.ones(k)),
            **self._episode_replay(batch_size=batch_size, buffer_episodes=buffer_episodes,
                                   baseline_alpha=baseline_alpha, net_arch=net_arch, policy_kwargs=policy_kwargs,
                                   tensorboard_log=tensorboard_log, verbose=verbose, device=device),
        )


@register_agent("sac")
class SACAgent(SB3Agent):
    """SAC (automatic entropy tuning) on the same episode-reward mechanism as DDPG."""

    def _build(
        self,
        *,
        net_arch: tuple[int, ...] | list[int] = (256, 256),
        learning_rate: float = 3e-4,
        tau: float = 0.005,
        batch_size: int = 64,
        gamma: float = 1.0,
        buffer_episodes: int = 100,
        baseline_alpha: float = 0.5,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
    ) -> BaseAlgorithm:
        return SAC(
            "MlpPolicy", self.env, learning_rate=learning_rate, tau=tau, gamma=gamma,
            **self._episode_replay(batch_size=batch_size, buffer_episodes=buffer_episodes,
                                   baseline_alpha=baseline_alpha, net_arch=net_arch, policy_kwargs=policy_kwargs,
                                   tensorboard_log=tensorboard_log, verbose=verbose, device=device),
        )


@register_agent("ppo")
class PPOAgent(SB3Agent):
    """PPO with the sparse end-of-episode reward, discount 1, ``episodes_per_update`` per rollout.

    PPO has no warm-up; ``learn(n)`` stops after exactly ``n`` evaluated episodes even when ``n``
    is not a multiple of ``episodes_per_update``.
    """

    _on_policy = True

    def _build(
        self,
        *,
        net_arch: tuple[int, ...] | list[int] = (64, 64),
        learning_rate: float = 3e-4,
        episodes_per_update: int = 8,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
    ) -> BaseAlgorithm:
        n_steps = max(2, episodes_per_update * self.steps_per_episode)
        return PPO(
            "MlpPolicy", self.env, learning_rate=learning_rate, n_steps=n_steps,
            batch_size=min(batch_size, n_steps), n_epochs=n_epochs, gamma=gamma,
            gae_lambda=gae_lambda, ent_coef=ent_coef,
            policy_kwargs=self._policy_kwargs(net_arch, policy_kwargs),
            tensorboard_log=tensorboard_log, verbose=verbose, seed=self.seed, device=device,
        )

    def _set_warmup(self, episodes: int) -> None:
        self.warmup_episodes = 0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
