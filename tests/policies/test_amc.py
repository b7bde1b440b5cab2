"""AMC's DDPG ingredients: truncated-normal noise and the episode-reward replay buffer."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from autocompress.policies import EpisodeRewardReplayBuffer, TruncatedNormalActionNoise

pytestmark = pytest.mark.timeout(60)


def test_noise_width_decays_after_warmup() -> None:
    noise = TruncatedNormalActionNoise(2, sigma=0.5, decay=0.95, warmup_episodes=3, seed=0)
    assert noise.sigma == pytest.approx(1.0)  # 0.5 in [0, 1] units is 1.0 in [-1, 1] units
    for _ in range(3):
        noise.reset()
    assert noise.sigma == pytest.approx(1.0)
    for _ in range(10):
        noise.reset()
    assert noise.sigma == pytest.approx(0.95**10)


def test_noise_samples_are_truncated_and_centred() -> None:
    noise = TruncatedNormalActionNoise(1, sigma=0.05, seed=1)
    mu = np.full((4000, 1), 0.3)
    x = noise.sample_around(mu)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert abs(float(x.mean()) - 0.3) < 0.01
    # At the edge a truncated normal stays inside and leans inward (no mass piled on the bound).
    edge = noise.sample_around(np.full((4000, 1), 1.0))
    assert edge.max() <= 1.0 and float((edge == 1.0).mean()) < 0.01 and float(edge.mean()) < 1.0


def test_noise_is_seeded() -> None:
    a = TruncatedNormalActionNoise(3, seed=7).sample_around(np.zeros(3))
    b = TruncatedNormalActionNoise(3, seed=7).sample_around(np.zeros(3))
    np.testing.assert_array_equal(a, b)


def _buffer(n_envs: int = 1, **kw: object) -> EpisodeRewardReplayBuffer:
    obs = spaces.Box(0, 1, (3,), np.float32)
    act = spaces.Box(-1, 1, (2,), np.float32)
    return EpisodeRewardReplayBuffer(100, obs, act, device="cpu", n_envs=n_envs, **kw)  # type: ignore[arg-type]


def test_buffer_gives_every_transition_the_final_reward() -> None:
    buf = _buffer()
    T = 4
    for t in range(T):
        done = t == T - 1
        reward = 0.75 if done else 0.0
        info = {"action_taken": np.array([0.5, -0.5], np.float32)}
        buf.add(np.full((1, 3), t / T), np.full((1, 3), (t + 1) / T), np.zeros((1, 2)),
                np.array([reward]), np.array([done]), [info])
        assert buf.size() == (T if done else 0)  # nothing is written before the episode ends
    np.testing.assert_allclose(buf.rewards[:T, 0], 0.75)
    np.testing.assert_allclose(buf.dones[:T, 0], [0, 0, 0, 1])
    # The executed (clipped) action is stored, not the proposed one.
    np.testing.assert_allclose(buf.actions[:T, 0], [[0.5, -0.5]] * T)


def test_buffer_subtracts_moving_average_baseline() -> None:
    buf = _buffer(baseline_alpha=0.5)
    for ep, final in enumerate([1.0, 3.0]):
        for t in range(2):
            done = t == 1
            buf.add(np.zeros((1, 3)), np.zeros((1, 3)), np.zeros((1, 2)),
                    np.array([final if done else 0.0]), np.array([done]), [{}])
        assert buf.size() == 2 * (ep + 1)
    batch = buf.sample(64)
    raw_mean = float((batch.rewards + buf.baseline).mean())
    assert buf.baseline == pytest.approx(raw_mean)  # first batch: baseline = its mean
    first = buf.baseline
    batch2 = buf.sample(64)
    mean2 = float((batch2.rewards + buf.baseline).mean())
    assert buf.baseline == pytest.approx(first + 0.5 * (mean2 - first))


def test_buffer_with_two_envs_in_lockstep() -> None:
    buf = _buffer(n_envs=2)
    for t in range(3):
        done = np.array([t == 2, t == 2])
        rew = np.array([1.0, 2.0]) if t == 2 else np.zeros(2)
        buf.add(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2)), rew, done, [{}, {}])
    assert buf.size() == 3  # rows of n_envs transitions
    np.testing.assert_allclose(buf.rewards[:3], [[1.0, 2.0]] * 3)
    buf.add(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2), np.array([False, False]), [{}, {}])
    buf.discard_pending()
    assert buf._pending == [[], []]
