"""CompressionEnv: Gymnasium/SB3 contract, hard budgets by construction, rewards, conditioned mode."""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from autocompress.compression import CompressionPolicy
from autocompress.envs import ENV_ID, Budget, CompressionEnv, make_eval_result
from autocompress.errors import UserInputError
from autocompress.evaluators import EvalResult, EvaluatorConfig, LatencyLUT

pytestmark = pytest.mark.timeout(300)

TINY_EVAL = EvaluatorConfig(
    latency="none", val_samples=256, low_fidelity_val_samples=64, recalib_batches=2, recalib_batch_size=32,
)


def _no_warnings(fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    assert [str(w.message) for w in caught] == []


def _run_episode(env: CompressionEnv, rng: np.random.Generator, options: dict | None = None,
                 mode: str = "random") -> dict:
    env.reset(options=options)
    k = env.action_space.shape[0]
    while True:
        if mode == "random":
            a = rng.uniform(-1, 1, size=k)
        elif mode == "none":  # never compress: the clipping must do all the work, at the end
            a = -np.ones(k)
        else:  # extremes
            a = rng.choice([-1.0, 1.0], size=k)
        _, reward, terminated, truncated, info = env.step(a.astype(np.float32))
        assert not truncated
        if terminated:
            info["reward_returned"] = reward
            return info
        assert reward == 0.0


# -- Gymnasium / SB3 contract -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "settings"),
    [
        ("test_convnet", {"budgets": {"macs": Budget(0.5)}}),
        ("test_convnet", {"budget_range": (0.3, 0.8)}),
        ("test_mlp", {"budgets": {}, "reward": "r_flops"}),
        ("test_mlp", {"budgets": {"size_bytes": Budget(0.3), "params": Budget(0.6)}, "fidelity": "low"}),
    ],
)
def test_env_checkers_pass_without_warnings(model: str, settings: dict) -> None:
    # Built through gymnasium.make with plain settings so the env has a spec the checker can
    # re-make (the close check), exactly as a user would build it.
    env = gymnasium.make(ENV_ID, model=model, train_epochs=2, evaluator=TINY_EVAL, **settings)
    _no_warnings(gym_check_env, env.unwrapped)
    _no_warnings(sb3_check_env, env.unwrapped, warn=True)


def test_spaces_and_observation_layout(convnet_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(convnet_problem, budgets={"macs": Budget(0.5), "size_bytes": Budget(0.4)},
                         evaluate_fn=cheap_eval(convnet_problem.space))
    n_feat = convnet_problem.space.feature_matrix().shape[1]
    assert env.knobs == ("prune", "w_bits", "a_bits", "rank")
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert env.observation_space.shape == (n_feat + 1 + 3 * 2 + 4,)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    # Budget state at the start: nothing removed, target = 50% and 40%.
    state = obs[n_feat + 1: n_feat + 7]
    np.testing.assert_allclose(state[[0, 3]], 0.0)
    np.testing.assert_allclose(state[[2, 5]], [0.5, 0.4], atol=1e-6)
    assert info["budgets"]["macs"] == pytest.approx(0.5 * env.base_costs["macs"])


def test_works_in_dummy_vec_env(convnet_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    fn = cheap_eval(convnet_problem.space)
    venv = DummyVecEnv([lambda: CompressionEnv(convnet_problem, evaluate_fn=fn) for _ in range(2)])
    venv.seed(3)
    venv.reset()
    T = len(convnet_problem.space.decision_points)
    finished = []
    for _ in range(2 * T):
        _, rewards, dones, infos = venv.step(np.zeros((2, 4), dtype=np.float32))
        finished += [info for info, d in zip(infos, dones, strict=True) if d]
    assert len(finished) == 4
    for info in finished:
        assert isinstance(info["policy"], CompressionPolicy)
        assert info["metrics"]["macs"] <= 0.5 * venv.envs[0].unwrapped.base_costs["macs"]


# -- hard budgets ------------------------------------------------------------------------------
@pytest.mark.parametrize("problem_name", ["convnet_problem", "mlp_problem"])
def test_thousand_random_episodes_never_break_a_hard_budget(problem_name: str, request, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    problem = request.getfixturevalue(problem_name)
    space = problem.space
    fn = cheap_eval(space)
    rng = np.random.default_rng(0)
    budget_sets = [
        {"macs": Budget(0.5)},
        {"macs": Budget(0.3), "size_bytes": Budget(0.2)},
        {"params": Budget(0.5), "bops": Budget(0.1), "flops": Budget(0.6)},
        {"size_bytes": Budget(0.06)},
    ]
    episodes = 0
    clipped = 0
    for bi, budgets in enumerate(budget_sets):
        env = CompressionEnv(problem, budgets=budgets, evaluate_fn=fn)
        env.reset(seed=bi)
        for e in range(250):
            info = _run_episode(env, rng, mode=("random", "none", "extremes")[e % 3])
            policy = info["policy"]
            space.validate(policy)
            for m, b in env.budgets.items():
                assert env.cost(m, policy) <= b, (m, env.cost(m, policy), b)
            assert info["metrics"]["macs"] == space.macs(policy)
            clipped += e % 3 == 1
            episodes += 1
    assert episodes == 1000 and clipped > 0


def test_conditioned_random_episodes_meet_their_drawn_target(mlp_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(mlp_problem, budget_range=(0.45, 0.9), budgets={"size_bytes": Budget(0.3)},
                         evaluate_fn=cheap_eval(mlp_problem.space))
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    targets = []
    for _ in range(200):
        info = _run_episode(env, rng)
        t = info["target"]
        targets.append(t)
        assert 0.45 <= t <= 0.9
        assert env.cost("macs", info["policy"]) <= t * env.base_costs["macs"]
        assert env.cost("size_bytes", info["policy"]) <= env.budgets["size_bytes"]
    assert np.std(targets) > 0.05  # really drawn per episode


def test_clipping_is_minimal(convnet_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    """A clipped action is the least compression that keeps every budget reachable."""
    env = CompressionEnv(convnet_problem, budgets={"macs": Budget(0.4), "size_bytes": Budget(0.3)},
                         evaluate_fn=cheap_eval(convnet_problem.space), clip_tol=1e-6)
    from autocompress.envs._features import to_unit, toward_most_compressed

    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(30):
        env.reset()
        for t in range(env.n_points):
            prefix = list(env._actions)
            a = rng.uniform(-1, 1, size=4).astype(np.float32)
            _, _, done, _, info = env.step(a)
            if info["clipped"]:
                # The same action moved a little less towards "most compressed" breaks a budget.
                u = to_unit(a)
                lam = float(np.max(np.abs(to_unit(info["action_taken"]) - u) / np.maximum(1 - u, 1e-12)))
                less = toward_most_compressed(u, max(0.0, lam - 1e-3))
                cand = env._policy_from_actions([*prefix, env.decode(t, less), *env._most[t + 1:]])
                assert not env.meets(cand, env.budgets)
                checked += 1
            if done:
                break
    assert checked > 5


def test_latency_budget_with_a_lookup_table(mlp_problem, tmp_path, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    lut = LatencyLUT.build(mlp_problem.model, mlp_problem.space, mlp_problem.example_input,
                           backend="torch", cache_dir=tmp_path, progress=False, keep_points=3,
                           rank_points=2, repeats=3, warmup=1, calibration_policies=2)
    most = mlp_problem.space.most_compressed()
    budget = max(lut.predict(most), lut.predict(CompressionPolicy({}))) * 0.999 + lut.predict(most) * 0.001
    env = CompressionEnv(mlp_problem, budgets={"latency_ms": budget}, latency_fn=lut.predict,
                         evaluate_fn=cheap_eval(mlp_problem.space))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for e in range(100):
        info = _run_episode(env, rng, mode=("random", "none")[e % 2])
        assert lut.predict(info["policy"]) <= budget
        assert info["predicted"]["latency_ms"] == pytest.approx(lut.predict(info["policy"]))


def test_unreachable_budget_names_smallest_value(mlp_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserInputError, match="smallest reachable value"):
        CompressionEnv(mlp_problem, budgets={"macs": 1.0}, evaluate_fn=cheap_eval(mlp_problem.space))
    with pytest.raises(UserInputError, match="budget_range low"):
        CompressionEnv(mlp_problem, budget_range=(0.001, 0.5), evaluate_fn=cheap_eval(mlp_problem.space))


def test_bad_settings_raise_user_errors(mlp_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    fn = cheap_eval(mlp_problem.space)
    cases = [
        ({"budgets": {"energy": 1.0}}, "not supported"),
        ({"reward": "speed"}, "reward="),
        ({"reward": "lagrangian"}, "soft_budgets"),
        ({"fidelity": "medium"}, "fidelity"),
        ({"budget_range": (0.5, 0.6), "budgets": {"macs": Budget(0.5)}}, "either"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UserInputError, match=match):
            CompressionEnv(mlp_problem, evaluate_fn=fn, **kwargs)
    with pytest.raises(UserInputError, match="evaluate_fn"):
        CompressionEnv(space=mlp_problem.space)
    with pytest.raises(UserInputError, match="latency predictor"):  # no problem, no lookup table
        CompressionEnv(space=mlp_problem.space, evaluate_fn=fn, budgets={"latency_ms": 1.0})
    env = CompressionEnv(mlp_problem, evaluate_fn=fn)
    with pytest.raises(UserInputError, match="only allowed in budget-conditioned"):
        env.reset(options={"target": 0.5})
    with pytest.raises(UserInputError, match="unknown reset option"):
        env.reset(options={"budget": 0.5})
    env.reset()
    with pytest.raises(UserInputError, match="finite numbers"):
        env.step(np.zeros(2, dtype=np.float32))
    for _ in range(env.n_points):
        env.step(np.zeros(4, dtype=np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.float32))


# -- rewards and info --------------------------------------------------------------------------
def _fixed(acc: float):  # type: ignore[no-untyped-def]
    return lambda policy: {"acc": acc}


@pytest.mark.parametrize(
    ("reward", "extra", "expected"),
    [
        ("acc", {}, lambda m, base: 0.8),
        ("r_flops", {"budgets": {}}, lambda m, base: -0.2 * math.log(m["flops"])),
        ("lagrangian", {"soft_budgets": {"macs": 1.0}, "reward_weights": {"macs": 0.1}},
         lambda m, base: 0.8 - 0.1 * (m["macs"] - 1.0)),
        ("weighted", {"reward_weights": {"acc": 1.0, "params": 2.0}},
         lambda m, base: 0.8 + 2.0 * (1 - m["params"] / base["params"])),
    ],
)
def test_reward_at_episode_end(mlp_problem, reward, extra, expected) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(mlp_problem, reward=reward, evaluate_fn=_fixed(0.8), **extra)
    env.reset(seed=0)
    info = _run_episode(env, np.random.default_rng(0))
    assert info["reward_returned"] == pytest.approx(expected(info["metrics"], env.base_costs))
    assert info["reward"] == info["reward_returned"]


def test_failed_evaluation_scores_as_zero_accuracy(mlp_problem) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(mlp_problem, evaluate_fn=lambda p: EvalResult.failure("boom"))
    env.reset(seed=0)
    info = _run_episode(env, np.random.default_rng(0))
    assert info["status"] == "failed" and info["error"] == "boom"
    assert info["reward_returned"] == 0.0
    env2 = CompressionEnv(mlp_problem, evaluate_fn=lambda p: make_eval_result({"acc": float("nan")}))
    env2.reset(seed=0)
    assert _run_episode(env2, np.random.default_rng(0))["status"] == "failed"


def test_real_episodes_carry_policy_and_all_metrics(convnet_problem) -> None:  # type: ignore[no-untyped-def]
    seen: list[CompressionPolicy] = []

    def recording(policy: CompressionPolicy) -> EvalResult:
        seen.append(policy)
        return convnet_problem.evaluator.evaluate(policy, fidelity="low")

    env = CompressionEnv(convnet_problem, budgets={"macs": Budget(0.5)}, fidelity="low", evaluate_fn=recording)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        info = _run_episode(env, rng)
        assert info["status"] == "ok"
        for m in ("acc", "macs", "flops", "params", "size_bytes", "bops"):
            assert m in info["metrics"]
        assert 0.0 <= info["metrics"]["acc"] <= 1.0
        assert info["metrics"]["macs"] <= 0.5 * env.base_costs["macs"]
        assert CompressionPolicy.from_json(info["policy_json"]) == info["policy"]
        assert isinstance(info["eval_result"], EvalResult)
        assert info["reward_returned"] == info["metrics"]["acc"]
    assert len(seen) == 3 and env.n_evaluations == 3


def test_default_evaluator_is_the_problems(mlp_problem) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(mlp_problem, fidelity="low")
    env.reset(seed=0)
    info = _run_episode(env, np.random.default_rng(0))
    direct = mlp_problem.evaluator.evaluate(info["policy"], fidelity="low")
    assert info["metrics"]["acc"] == direct.metrics["acc"]


def test_no_evaluation_when_asked_not_to(mlp_problem) -> None:  # type: ignore[no-untyped-def]
    calls = []
    env = CompressionEnv(mlp_problem, evaluate_fn=lambda p: calls.append(p) or {"acc": 1.0})
    info = _run_episode(env, np.random.default_rng(0), options={"evaluate": False})
    assert calls == [] and info["evaluated"] is False and isinstance(info["policy"], CompressionPolicy)


# -- seeding and conditioned mode --------------------------------------------------------------
def test_same_seed_same_episode(convnet_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    def run() -> list:  # type: ignore[type-arg]
        env = CompressionEnv(convnet_problem, budget_range=(0.3, 0.8),
                             evaluate_fn=cheap_eval(convnet_problem.space))
        obs, _ = env.reset(seed=42)
        rng = np.random.default_rng(42)
        out = [obs]
        for _ in range(3):
            info = _run_episode(env, rng)
            out += [info["target"], info["policy_json"]]
        return out

    a, b = run(), run()
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]


def test_reset_option_sets_the_target(convnet_problem, cheap_eval) -> None:  # type: ignore[no-untyped-def]
    env = CompressionEnv(convnet_problem, budget_range=(0.3, 0.8), evaluate_fn=cheap_eval(convnet_problem.space))
    n_feat = convnet_problem.space.feature_matrix().shape[1]
    obs, info = env.reset(seed=0, options={"target": 0.35})
    assert info["target"] == 0.35 and env.target == 0.35
    assert obs[n_feat + 1 + 2] == pytest.approx(0.35)
    info = _run_episode(env, np.random.default_rng(0), options={"target": 0.35})
    assert env.cost("macs", info["policy"]) <= 0.35 * env.base_costs["macs"]
    with pytest.raises(UserInputError, match="target"):
        env.reset(options={"target": 1.5})


@pytest.mark.slow
def test_make_without_arguments_builds_the_default() -> None:
    env = gymnasium.make(ENV_ID)
    inner = env.unwrapped
    assert isinstance(inner, CompressionEnv)
    assert inner.budgets == {"macs": pytest.approx(0.5 * inner.base_costs["macs"])}
    obs, _ = env.reset(seed=0)
    assert inner.observation_space.contains(obs)
