"""Agents behind one interface: registry, budgets, learning on a toy reward, seeds, save/load."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from autocompress.compression import CompressionPolicy
from autocompress.envs import Budget, CompressionEnv
from autocompress.errors import UserInputError
from autocompress.evaluators import EvaluatorConfig
from autocompress.policies import (
    BaseAgent,
    EpisodeRewardReplayBuffer,
    TruncatedNormalActionNoise,
    create_agent,
    greedy_allocate,
    list_agents,
    load_agent,
    register_agent,
)
from autocompress.problem import Problem

pytestmark = pytest.mark.timeout(300)

RL = ("ddpg", "td3", "sac", "ppo")


def _small(name: str, warmup: int = 5) -> dict:
    """Tiny settings so tests are fast (the defaults are AMC's 300-300 networks)."""
    if name == "ppo":
        return {"net_arch": [32, 32], "episodes_per_update": 4, "batch_size": 16, "n_epochs": 2}
    if name in RL:
        return {"net_arch": [32, 32], "warmup_episodes": warmup, "batch_size": 32}
    return {}


def _env(space, fn, **kw) -> CompressionEnv:  # type: ignore[no-untyped-def]
    kw.setdefault("budgets", {"macs": Budget(0.5), "size_bytes": Budget(0.4)})
    return CompressionEnv(space=space, evaluate_fn=fn, **kw)


def test_registry() -> None:
    assert set(RL + ("random", "uniform", "greedy")) <= set(list_agents())
    assert list_agents("*d*") == ["ddpg", "greedy", "random", "td3"]
    with pytest.raises(UserInputError, match="unknown agent 'nope'; allowed: ddpg"):
        create_agent("nope", None)
    with pytest.raises(ValueError, match="already registered"):
        register_agent("ddpg")(BaseAgent)


def test_agent_needs_a_compression_env() -> None:
    import gymnasium

    with pytest.raises(UserInputError, match="CompressionEnv"):
        create_agent("random", gymnasium.make("CartPole-v1"))


@pytest.mark.parametrize("name", list_agents())
def test_every_agent_learns_within_budgets_and_proposes(name: str, convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space))
    agent = create_agent(name, env, seed=0, **_small(name))
    agent.learn(40)
    assert 1 <= len(agent.history) <= 40 and env.n_evaluations <= 40
    for rec in agent.history:
        assert all(env.cost(m, rec.policy) <= b for m, b in env.budgets.items())
        assert rec.status == "ok" and rec.metrics["acc"] > 0
    policy = agent.propose()
    convnet_space.validate(policy)
    assert env.meets(policy, env.budgets)
    assert agent.best() is not None and agent.best().reward == max(r.reward for r in agent.history)


def test_ddpg_defaults_are_amcs(convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space))
    agent = create_agent("ddpg", env, seed=0, warmup_episodes=100)
    m = agent.model
    T = env.n_points
    assert m.tau == 0.01 and m.batch_size == 64 and m.gamma == 1.0
    assert m.actor_lr == 1e-4 and m.critic_lr == 1e-3
    assert [layer.out_features for layer in m.actor.mu if hasattr(layer, "out_features")][:2] == [300, 300]
    assert [layer.out_features for layer in m.critic.qf0 if hasattr(layer, "out_features")][:2] == [300, 300]
    assert m.learning_starts == 100 * T and m.buffer_size == 100 * T
    assert m.train_freq.frequency == T and m.gradient_steps == -1
    assert isinstance(m.replay_buffer, EpisodeRewardReplayBuffer) and m.replay_buffer.baseline_alpha == 0.5
    assert isinstance(m.action_noise, TruncatedNormalActionNoise) and m.action_noise.sigma == pytest.approx(1.0)
    from stable_baselines3.common.logger import configure

    m.set_logger(configure(None, []))
    m._update_learning_rate([m.actor.optimizer, m.critic.optimizer])
    assert m.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert m.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_ddpg_improves_on_a_toy_reward(convnet_prune_space, toy_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_prune_space, toy_eval(convnet_prune_space), budgets={"macs": Budget(0.5)})
    warmup = 20
    agent = create_agent("ddpg", env, seed=0, net_arch=[64, 64], warmup_episodes=warmup)
    agent.learn(120)
    rewards = np.array([r.reward for r in agent.history])
    random_phase = rewards[:warmup].mean()
    assert rewards[-20:].mean() > random_phase + 0.1
    proposed = toy_eval(convnet_prune_space)(agent.propose())["acc"]
    assert proposed > random_phase + 0.1


@pytest.mark.parametrize("name", ["ddpg", "sac", "ppo", "random", "uniform", "greedy"])
def test_same_seed_same_results(name: str, convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    def run() -> tuple[list[float], list[str], str]:
        env = _env(convnet_space, cost_eval(convnet_space))
        agent = create_agent(name, env, seed=3, **_small(name))
        agent.learn(35)
        return [r.reward for r in agent.history], [r.policy.key() for r in agent.history], agent.propose().key()

    assert run() == run()


def test_different_seeds_differ(convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    keys = []
    for seed in (0, 1):
        agent = create_agent("ddpg", _env(convnet_space, cost_eval(convnet_space)), seed=seed, **_small("ddpg"))
        agent.learn(8)
        keys.append([r.policy.key() for r in agent.history])
    assert keys[0] != keys[1]


@pytest.mark.parametrize("name", ["ddpg", "ppo", "greedy", "random", "uniform"])
def test_save_load_round_trip(name: str, convnet_space, cost_eval, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space))
    agent = create_agent(name, env, seed=0, **_small(name))
    agent.learn(35)
    before = agent.propose()
    agent.save(tmp_path / "agent")
    env2 = _env(convnet_space, cost_eval(convnet_space))
    loaded = load_agent(tmp_path / "agent", env2)
    assert type(loaded) is type(agent)
    assert [r.policy for r in loaded.history] == [r.policy for r in agent.history]
    assert loaded.propose() == before
    assert env2.n_evaluations == 0
    if name in RL:
        loaded.learn(4)  # a loaded agent keeps training
        assert len(loaded.history) == len(agent.history) + 4


def test_load_checks_the_env(convnet_space, convnet_prune_space, cost_eval, tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent = create_agent("random", _env(convnet_space, cost_eval(convnet_space)), seed=0)
    agent.learn(2)
    agent.save(tmp_path / "a")
    with pytest.raises(UserInputError, match="trained on observations"):
        load_agent(tmp_path / "a", _env(convnet_prune_space, cost_eval(convnet_prune_space)))
    with pytest.raises(UserInputError, match="not a saved agent"):
        load_agent(tmp_path / "missing", _env(convnet_space, cost_eval(convnet_space)))


def test_budget_conditioned_agent_proposes_for_new_targets(convnet_space, cost_eval, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space), budgets={}, budget_range=(0.3, 0.8))
    agent = create_agent("ddpg", env, seed=0, **_small("ddpg"))
    agent.learn(30)
    targets = {r.target for r in agent.history}
    assert len(targets) == 30  # a new target every episode
    spent = env.n_evaluations
    for target in (0.33, 0.5, 0.77):  # budgets it never trained on exactly
        policy = agent.propose(target)
        assert env.cost("macs", policy) <= target * env.base_costs["macs"]
    assert env.n_evaluations == spent  # proposing costs no evaluation
    with pytest.raises(UserInputError, match="needs a MACs fraction"):
        agent.propose()
    agent.save(tmp_path / "cond")
    loaded = load_agent(tmp_path / "cond", env)
    assert loaded.propose(0.5) == agent.propose(0.5)


@pytest.mark.parametrize("name", ["uniform", "greedy", "random"])
def test_heuristics_propose_for_targets(name: str, convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space), budgets={}, budget_range=(0.3, 0.8))
    agent = create_agent(name, env, seed=0)
    agent.learn(40)
    for target in (0.35, 0.6):
        assert env.cost("macs", agent.propose(target)) <= target * env.base_costs["macs"]


def test_uniform_is_one_ratio_just_meeting_the_budget(convnet_prune_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_prune_space, cost_eval(convnet_prune_space), budgets={"macs": Budget(0.5)})
    agent = create_agent("uniform", env, seed=0)
    agent.learn(10)
    assert len(agent.history) == 1  # one knob, fixed budget: a single candidate
    policy = agent.history[0].policy
    ratios = {policy.get(p.name).prune for p in env.points}
    assert len(ratios) == 1
    ratio = ratios.pop()
    assert env.meets(policy, env.budgets)
    less = CompressionPolicy({p.name: {"prune": ratio - 0.01} for p in env.points})
    assert not env.meets(less, env.budgets)


def test_greedy_probes_then_allocates(convnet_prune_space, toy_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_prune_space, toy_eval(convnet_prune_space), budgets={"macs": Budget(0.5)})
    agent = create_agent("greedy", env, seed=0)
    agent.learn(20)
    n_points = env.n_points
    assert agent.n_probes == 1 + n_points * 3
    assert env.n_evaluations == agent.n_probes + len(agent.history) <= 20
    assert len(agent.history) >= 2  # the allocation, the uniform policy, then local-search moves
    assert all(env.meets(r.policy, env.budgets) for r in agent.history)
    assert agent.propose() == agent.best().policy
    # The toy accuracy is additive, so the measured drops are exactly s_i * prune.
    sens = np.linspace(1.0, 0.05, n_points)
    np.testing.assert_allclose(agent.drops[:, 0, -1], sens * 0.8, atol=1e-9)
    with pytest.raises(UserInputError, match="at least"):
        create_agent("greedy", env).learn(3)
    free = _env(convnet_prune_space, toy_eval(convnet_prune_space), budgets={})
    with pytest.raises(UserInputError, match="has none"):
        create_agent("greedy", free).learn(20)
    assert free.n_evaluations == 0  # refused before spending a probe


def test_greedy_local_search_fixes_what_single_point_probes_miss(convnet_prune_space) -> None:  # type: ignore[no-untyped-def]
    # The two cheapest points look harmless one at a time, but pruning both hard costs accuracy:
    # the additive allocation piles the budget onto them, real evaluations find better.
    names = [p.name for p in convnet_prune_space.decision_points]
    sens = np.linspace(1.0, 0.05, len(names))

    def fn(policy: CompressionPolicy) -> dict[str, float]:
        p = np.array([policy.get(n).prune for n in names])
        joint = max(0.0, p[-1] + p[-2] - 0.8)
        return {"acc": 1.0 - float(sens @ p) - 5.0 * joint ** 2}

    env = _env(convnet_prune_space, fn, budgets={"macs": Budget(0.5)})
    agent = create_agent("greedy", env, seed=0)
    agent.learn(60)
    allocation, uniform, *moves = agent.history
    assert moves and all(env.meets(r.policy, env.budgets) for r in agent.history)
    best = agent.best()
    assert best is not None and best.reward > max(allocation.reward, uniform.reward) + 0.05
    # Same seed, same candidates.
    again = create_agent("greedy", _env(convnet_prune_space, fn, budgets={"macs": Budget(0.5)}), seed=0)
    again.learn(60)
    assert [r.policy.key() for r in again.history] == [r.policy.key() for r in agent.history]


def test_greedy_allocate_solves_a_fractional_knapsack() -> None:
    # Separable linear costs and drops: the optimum fills points in order of drop per cost.
    weights = np.array([4.0, 1.0, 2.0, 3.0])
    sens = np.array([1.0, 0.1, 1.0, 0.3])  # drop per unit: ratios 0.25, 0.1, 0.5, 0.1
    present = np.ones((4, 1), dtype=bool)

    def load(units):  # type: ignore[no-untyped-def]
        return np.array([float(weights @ (1 - units[:, 0])) / 5.0])  # budget: 5 of 10

    units = greedy_allocate(present, [list(np.linspace(0.05, 1.0, 20))], lambda i, j, u: sens[i] * u,
                            lambda u: u, load, tol=1e-9)  # type: ignore[arg-type, return-value]
    # Remove 5 units of cost: points 1 and 3 fully (4 units), then 1/4 of point 0.
    np.testing.assert_allclose(units[:, 0], [0.25, 1.0, 0.0, 1.0], atol=1e-6)


def test_ppo_stops_at_the_requested_episode_count(convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    agent = create_agent("ppo", _env(convnet_space, cost_eval(convnet_space)), seed=0, **_small("ppo"))
    agent.learn(5)
    assert len(agent.history) == 5


@pytest.mark.parametrize("name", ["ddpg", "random", "uniform"])
def test_callback_sees_every_record_and_can_stop(name: str, convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    env = _env(convnet_space, cost_eval(convnet_space), budgets={} if name == "uniform" else None)
    seen = []

    def cb(rec):  # type: ignore[no-untyped-def]
        seen.append(rec)
        return len(seen) < 3

    agent = create_agent(name, env, seed=0, **_small(name))
    agent.learn(10, callback=cb)
    assert len(seen) == 3 and agent.history == seen


def test_vec_env_training(convnet_space, cost_eval) -> None:  # type: ignore[no-untyped-def]
    fn = cost_eval(convnet_space)
    venv = DummyVecEnv([lambda: _env(convnet_space, fn) for _ in range(2)])
    agent = create_agent("ddpg", venv, seed=0, **_small("ddpg", warmup=2))
    agent.learn(8)
    assert len(agent.history) == 8
    assert agent.model.replay_buffer.size() == 8 * convnet_space_points(convnet_space) // 2


def convnet_space_points(space) -> int:  # type: ignore[no-untyped-def]
    return len(space.decision_points)


def test_tensorboard_logging(convnet_space, cost_eval, tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent = create_agent("ddpg", _env(convnet_space, cost_eval(convnet_space)), seed=0,
                         tensorboard_log=str(tmp_path), **_small("ddpg", warmup=1))
    agent.learn(4)
    assert list(tmp_path.rglob("events.out.tfevents*"))


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_learning_leaves_no_log_folder_in_the_temp_dir(name: str, convnet_space, cost_eval, tmp_path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    # SB3's default logger makes an empty SB3-<timestamp> folder in the system temp dir per learn
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    agent = create_agent(name, _env(convnet_space, cost_eval(convnet_space)), seed=0,
                         **_small(name, warmup=1))
    agent.learn(4)
    agent.save(tmp_path / "saved")
    load_agent(tmp_path / "saved", _env(convnet_space, cost_eval(convnet_space))).learn(4)
    assert not list(tmp_path.glob("SB3-*"))
    assert len(agent.history) == 4  # it did learn


def test_real_evaluations_through_a_problem() -> None:
    problem = Problem.build("test_mlp", data="digits", train_epochs=2,
                            evaluator=EvaluatorConfig(latency="none", low_fidelity_val_samples=64))
    env = CompressionEnv(problem, budgets={"macs": Budget(0.6)}, fidelity="low")
    agent = create_agent("ddpg", env, seed=0, **_small("ddpg", warmup=2))
    agent.learn(5)
    assert len(agent.history) == 5
    for rec in agent.history:
        assert 0.0 < rec.metrics["acc"] <= 1.0 and rec.metrics["macs"] <= 0.6 * env.base_costs["macs"]
