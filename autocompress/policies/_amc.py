"""AMC's DDPG ingredients on top of Stable-Baselines3: noise, episode-reward buffer, two learning rates.

AMC (He et al., ECCV 2018) trains DDPG with a sparse reward known only at the end of an episode
and gives *every* transition of the episode that final reward, minus a moving-average baseline,
with discount 1. SB3 writes transitions to its replay buffer as they happen, so
``EpisodeRewardReplayBuffer`` holds an episode's transitions back until the episode ends and then
writes them all with the final reward; the baseline is subtracted when a batch is sampled, the way
AMC's ``update_policy`` normalises each batch. ``TruncatedNormalActionNoise`` draws the exploration
action from a normal around the actor's action truncated to the action box, with AMC's decaying
width; ``AMCDDPG`` uses it and keeps separate actor and critic learning rates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecNormalize


class TruncatedNormalActionNoise(ActionNoise):
    """AMC's exploration: ``a ~ TN(mu, sigma_e, low, high)``, ``sigma_e = sigma * decay**(e - warmup)``.

    ``e`` counts finished episodes (SB3 calls ``reset`` once per finished episode); before
    ``warmup_episodes`` the width stays ``sigma``. ``sigma`` is given in AMC's [0, 1] action units
    and ``unit_scale`` converts it to the agent's action box (2 for SB3's [-1, 1]).

    ``AMCDDPG`` calls ``sample_around(mu)``; used as a plain additive SB3 noise, ``__call__`` returns
    a centred normal of the current width (SB3 then clips, which is not a truncated normal).
    """

    def __init__(
        self,
        n_actions: int,
        sigma: float = 0.5,
        decay: float = 0.95,
        warmup_episodes: int = 0,
        low: float = -1.0,
        high: float = 1.0,
        unit_scale: float = 2.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.n_actions = int(n_actions)
        self.sigma0 = float(sigma)
        self.decay = float(decay)
        self.warmup_episodes = int(warmup_episodes)
        self.low, self.high = float(low), float(high)
        self.unit_scale = float(unit_scale)
        self.episodes = 0
        self._rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        """Current width in the agent's action units."""
        k = max(0, self.episodes - self.warmup_episodes)
        return self.sigma0 * (self.decay**k) * self.unit_scale

    def sample_around(self, mu: np.ndarray) -> np.ndarray:
        """One truncated-normal draw per entry of ``mu`` (any shape), within [low, high]."""
        mu = np.clip(np.asarray(mu, dtype=np.float64), self.low, self.high)
        sigma = max(self.sigma, 1e-8)
        a, b = (self.low - mu) / sigma, (self.high - mu) / sigma
        out = truncnorm.rvs(a, b, loc=mu, scale=sigma, size=mu.shape, random_state=self._rng)
        return np.clip(out, self.low, self.high).astype(np.float32)

    def __call__(self) -> np.ndarray:
        return self._rng.normal(0.0, self.sigma, size=self.n_actions).astype(np.float32)

    def reset(self, **kwargs: Any) -> None:
        """One episode finished: narrow the width."""
        self.episodes += 1

    def __repr__(self) -> str:
        return f"TruncatedNormalActionNoise(sigma={self.sigma:.4g}, episodes={self.episodes})"


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Replay buffer giving every transition of an episode the episode's final reward.

    ``add`` keeps each env's transitions pending until that env's episode ends, then assigns the
    final (terminal) reward to all of them and writes them to the buffer. ``sample`` subtracts a
    moving average of the sampled rewards (``baseline += alpha * (batch_mean - baseline)``, AMC's
    ``moving_alpha``) -- the baseline that keeps the critic's targets centred. With
    ``store_taken_action`` the stored action is the one the environment really executed after
    budget clipping (``info["action_taken"]``), so Q is learned for what happened.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        baseline_alpha: float = 0.5,
        store_taken_action: bool = True,
    ) -> None:
        super().__init__(
            buffer_size, observation_space, action_space, device, n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.baseline_alpha = float(baseline_alpha)
        self.store_taken_action = bool(store_taken_action)
        self.baseline: float | None = None
        self._pending: list[list[tuple[Any, ...]]] = [[] for _ in range(self.n_envs)]
        self._ready: list[list[tuple[Any, ...]]] = [[] for _ in range(self.n_envs)]

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Hold the transition until its episode ends; then write the episode with its final reward."""
        obs = np.asarray(obs).reshape((self.n_envs, *self.obs_shape))
        next_obs = np.asarray(next_obs).reshape((self.n_envs, *self.obs_shape))
        action = np.asarray(action).reshape((self.n_envs, self.action_dim))
        for i in range(self.n_envs):
            act = action[i]
            if self.store_taken_action and "action_taken" in infos[i]:
                act = np.asarray(infos[i]["action_taken"], dtype=action.dtype).reshape(self.action_dim)
            self._pending[i].append((obs[i].copy(), next_obs[i].copy(), act.copy(), bool(done[i]), infos[i]))
            if done[i]:
                final = float(reward[i])
                self._ready[i].extend((o, no, a, final, d, inf) for o, no, a, d, inf in self._pending[i])
                self._pending[i] = []
        # Envs advance in lockstep rows: write one row whenever every env has a finished transition.
        while all(self._ready):
            rows = [q.pop(0) for q in self._ready]
            super().add(
                np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                np.stack([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=np.float32),
                np.array([r[4] for r in rows]), [r[5] for r in rows],
            )

    def discard_pending(self) -> None:
        """Drop transitions of unfinished episodes (an interrupted rollout)."""
        self._pending = [[] for _ in range(self.n_envs)]

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch whose rewards have the moving-average baseline subtracted."""
        batch = super().sample(batch_size, env=env)
        mean = float(batch.rewards.mean())
        if self.baseline is None:
            self.baseline = mean
        else:
            self.baseline += self.baseline_alpha * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline)


class AMCDDPG(DDPG):
    """SB3 DDPG with AMC's separate actor/critic learning rates and truncated-normal exploration.

    Args:
        actor_lr: actor learning rate (AMC: 1e-4).
        critic_lr: critic learning rate (AMC: 1e-3).
        *args, **kwargs: as ``stable_baselines3.DDPG``.
    """

    def __init__(self, *args: Any, actor_lr: float = 1e-4, critic_lr: float = 1e-3, **kwargs: Any) -> None:
        self.actor_lr = float(actor_lr)
        self.critic_lr = float(critic_lr)
        kwargs.setdefault("learning_rate", self.actor_lr)
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        self.logger.record("train/actor_lr", self.actor_lr)
        self.logger.record("train/critic_lr", self.critic_lr)
        update_learning_rate(self.actor.optimizer, self.actor_lr)
        update_learning_rate(self.critic.optimizer, self.critic_lr)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts or not isinstance(action_noise, TruncatedNormalActionNoise):
            return super()._sample_action(learning_starts, action_noise, n_envs)
        assert self._last_obs is not None
        unscaled, _ = self.predict(self._last_obs, deterministic=True)
        mu = self.policy.scale_action(unscaled)
        scaled = action_noise.sample_around(mu)
        return self.policy.unscale_action(scaled), scaled
