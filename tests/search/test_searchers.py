"""Every registered strategy runs a few trials on the tiny problem and respects the hard budgets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from autocompress.compression import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.problem import Problem
from autocompress.report import load_run
from autocompress.search import SearchSpec, create_searcher, list_searchers, run_search
from autocompress.search.base import SearchContext, register_searcher
from autocompress.search.baseline_searchers import UniformSearcher, knob_value, uniform_policy
from autocompress.search.budgets import parse_budget
from autocompress.search.spec import Objective
from autocompress.testing import TINY_STRATEGY_SETTINGS, synthetic_result, tiny_context

#: Trials per strategy: greedy needs 1 base + one probe per point + its candidates (the allocation,
#: the uniform policy, then local-search moves).
TRIALS = {"greedy": 12}
SETTINGS = TINY_STRATEGY_SETTINGS


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", list_searchers())
def test_strategy_runs_and_respects_hard_budgets(strategy: str, search_problem: Problem,
                                                 tmp_path: Path, tiny_spec: Callable) -> None:
    trials = TRIALS.get(strategy, 4)
    spec = tiny_spec(tmp_path / strategy, strategy=strategy, trials=trials,
                     strategy_settings=SETTINGS.get(strategy, {}))
    result = run_search(spec, problem=search_problem)

    limit = 0.5 * search_problem.space.macs(search_problem.space.identity())
    evaluated = [t for t in result.trials if t.status in ("ok", "failed")]
    assert result.n_evaluated == len(evaluated)
    if strategy == "greedy":
        assert result.stop_reason == "completed" or result.stop_reason.endswith("nothing more to propose")
        assert 3 <= result.n_evaluated <= trials
        candidates = [t for t in evaluated if t.feasible]
        assert len(candidates) >= 3, "the allocation, the uniform policy and at least one local-search move"
        assert all(search_problem.space.macs(t.policy) <= limit * (1 + 1e-9) for t in candidates)
    else:
        assert result.n_evaluated == trials
        for t in evaluated:  # probes aside, every evaluated candidate meets the hard budget
            assert t.status == "ok", t.error
            assert search_problem.space.macs(t.policy) <= limit * (1 + 1e-9)
            assert t.feasible and t.violations["macs"] <= 0
    assert result.front, "a feasible candidate was evaluated, so the front is not empty"
    for p in result.front:
        assert p.feasible and p.metrics["macs"] <= limit * (1 + 1e-9)
    assert result.hypervolume is not None and 0.0 < result.hypervolume <= 1.0
    # the run directory reads back through the report package
    run = load_run(result.run_dir)
    assert sorted(int(i) for i in run.front_ids) == sorted(p.id for p in result.front)
    assert run.budgets["macs"] == pytest.approx(limit)
    # RL adapters stop their agent thread
    assert not [t for t in threading.enumerate() if t.name.startswith("autocompress-") and t.is_alive()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["random", "nsga2", "ddpg", "ladder"])
def test_same_seed_same_candidates(strategy: str, search_problem: Problem, tmp_path: Path,
                                   tiny_spec: Callable) -> None:
    settings = SETTINGS.get(strategy, {})
    runs = []
    for name in ("a", "b"):
        spec = tiny_spec(tmp_path / name, strategy=strategy, trials=4, strategy_settings=settings)
        runs.append([t.policy for t in run_search(spec, problem=search_problem).trials])
    assert runs[0] == runs[1]
    other = tiny_spec(tmp_path / "c", strategy=strategy, trials=4, seed=1, strategy_settings=settings)
    assert [t.policy for t in run_search(other, problem=search_problem).trials] != runs[0]


def _context(problem: Problem, budgets: list[str]) -> SearchContext:
    base = {k: float(v) for k, v in problem.base.metrics.items()}
    bs = tuple(parse_budget(b) for b in budgets)
    return SearchContext(space=problem.space,
                         objectives=(Objective("acc", "maximize"), Objective("macs", "minimize")),
                         budgets=bs, base_metrics=base, limits={b.name: b.limit(base) for b in bs},
                         trials=8)


RL_STRATEGIES = ["ddpg", "td3", "sac", "ppo", "ddpg_bc"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", RL_STRATEGIES)
def test_rl_searcher_runs_on_the_space_without_any_problem(strategy: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An RL searcher builds its env from the context's space and budgets: no Problem exists
    (building one fails), and every score reaches the agent through tell."""
    def no_problem(*args: object, **kwargs: object) -> None:
        raise AssertionError("a searcher built a Problem")

    monkeypatch.setattr(Problem, "build", no_problem)
    monkeypatch.setattr(Problem, "default", no_problem)
    assert "problem" not in SearchContext.__dataclass_fields__
    ctx = tiny_context(trials=4)
    searcher = create_searcher(strategy, ctx, seed=0, **SETTINGS[strategy])
    try:
        assert searcher.env.problem is None and searcher.env.space is ctx.space
        for _ in range(4):
            policy = searcher.ask()
            assert policy is not None
            assert ctx.space.macs(policy) <= ctx.limits["macs"] * (1 + 1e-9)
            searcher.tell(policy, synthetic_result(ctx, policy))
        assert searcher.n_told == 4
    finally:
        searcher.close()


@pytest.mark.timeout(60)
def test_rl_reward_on_latency_uses_the_contexts_latency_table() -> None:
    """A reward weighing latency in a search that predicts none takes the context's lookup-table
    prediction (the searcher has no evaluator to build one from); without one it is refused."""
    weights = {"acc": 1.0, "latency_ms": 0.5}
    settings = {**SETTINGS["ddpg"], "reward": "weighted", "reward_weights": weights}
    calls: list[CompressionPolicy] = []

    def table(policy: CompressionPolicy) -> float:
        calls.append(policy)
        return 1.0 + ctx.space.macs(policy) / 1000.0

    ctx = tiny_context(trials=2)
    with pytest.raises(UserInputError, match="latency"):
        create_searcher("ddpg", ctx, seed=0, **settings)
    ctx.latency_table = table
    searcher = create_searcher("ddpg", ctx, seed=0, **settings)
    try:
        assert calls, "the env's base latency comes from the table"
        identity = ctx.space.identity()
        assert searcher.env.cost("latency_ms", identity) == table(identity)
    finally:
        searcher.close()
    # a search that predicts latency keeps its own predictor
    ctx.predict_latency = lambda policy: 7.0
    searcher = create_searcher("ddpg", ctx, seed=0, **settings)
    try:
        assert searcher.env.cost("latency_ms", ctx.space.identity()) == 7.0
    finally:
        searcher.close()


@pytest.mark.timeout(60)
def test_uniform_sweep_starts_at_the_budget_and_stays_uniform(search_problem: Problem) -> None:
    ctx = _context(search_problem, ["macs=50%"])
    searcher = create_searcher("uniform", ctx, seed=0, points=5)
    assert isinstance(searcher, UniformSearcher)
    policies = [searcher.ask() for _ in range(5)]
    assert searcher.ask() is None  # the sweep is done
    limit = ctx.limits["macs"]
    first = search_problem.space.macs(policies[0])
    assert first <= limit and first > 0.9 * limit  # just meets the budget (bisection)
    for p in policies:
        prunes = {round(a.prune, 9) for a in p.layers.values()}
        assert len(prunes) == 1  # the same ratio everywhere
        assert ctx.predicted_feasible(p)
    assert len({p.key() for p in policies}) == 5
    knob = search_problem.space.decision_points[0].knobs["prune"]
    assert knob_value(knob, 0.0) == knob.least_compressed and knob_value(knob, 1.0) == knob.most_compressed
    assert search_problem.space.macs(uniform_policy(search_problem.space, 1.0)) == \
        search_problem.space.macs(search_problem.space.most_compressed())


@pytest.mark.timeout(60)
def test_random_searcher_repairs_samples_to_the_budget(search_problem: Problem) -> None:
    ctx = _context(search_problem, ["macs=15%"])
    searcher = create_searcher("random", ctx, seed=3, max_tries=1)
    for _ in range(10):
        assert ctx.predicted_feasible(searcher.ask())


def test_registry_is_strict() -> None:
    assert {"ladder", "nsga2", "tpe", "random", "uniform", "greedy", "ddpg", "td3", "sac", "ppo",
            "ddpg_bc"} <= set(list_searchers())
    assert list_searchers("dd*") == ["ddpg", "ddpg_bc"]
    with pytest.raises(ValueError, match="already registered"):
        register_searcher("nsga2", "somewhere:Else")
    with pytest.raises(UserInputError, match="unknown strategy 'hill'"):
        SearchSpec(strategy="hill")


@pytest.mark.timeout(120)
def test_ladder_starts_with_the_uniform_sweep_then_moves_front_points_at_equal_cost(search_problem: Problem) -> None:
    from autocompress.search.ladder_searcher import LadderSearcher

    ctx = _context(search_problem, ["macs=50%"])
    ladder = create_searcher("ladder", ctx, seed=0, ladder_fraction=0.5, cost_jitter=0.0, polish_fraction=0.0)
    uniform = create_searcher("uniform", ctx, seed=0, points=8)
    assert isinstance(ladder, LadderSearcher) and ladder.n_ladder == 4
    rungs = [ladder.ask() for _ in range(4)]
    assert rungs == [uniform.ask() for _ in range(4)]  # the same sweep, in the same order
    for policy in rungs:
        ladder.tell(policy, search_problem.evaluator.evaluate(policy))
    assert ladder.front, "feasible rungs were told, so there is a front to move from"
    front_costs = {round(cost) for _, _, cost in ladder.front}
    space, limit = search_problem.space, ctx.limits["macs"]
    children = [ladder.ask() for _ in range(6)]
    for child in children:
        assert ctx.predicted_feasible(child)
        assert len({round(a.prune, 6) for a in child.layers.values()}) > 1  # not uniform any more
        # at its parent's cost: the largest cost not above it, within one channel's step
        cost = space.macs(child)
        assert cost <= limit and min(abs(cost - c) for c in front_costs) <= 0.2 * limit
    again = create_searcher("ladder", ctx, seed=0, ladder_fraction=0.5, cost_jitter=0.0, polish_fraction=0.0)
    for policy in [again.ask() for _ in range(4)]:
        again.tell(policy, search_problem.evaluator.evaluate(policy))
    assert [again.ask() for _ in range(6)] == children  # seeded: the same moves


@pytest.mark.timeout(120)
def test_ladder_proposes_between_the_fronts_most_expensive_point_and_the_budget(search_problem: Problem) -> None:
    """A front that ends far below the budget (a coarse ladder can) is extended towards it: the
    gap up to the budget is one the children are placed in, not only the gaps between points."""
    ctx = _context(search_problem, ["macs=50%"])
    ladder = create_searcher("ladder", ctx, seed=0, ladder_fraction=0.1, best_share=0.0, cost_jitter=0.0,
                             polish_fraction=0.0)
    for _ in range(ladder.n_ladder):
        ladder.ask()  # the rungs, not told: the front is the one cheap point below
    cheap = ladder._ladder_policy(1.0)
    ladder.tell(cheap, search_problem.evaluator.evaluate(cheap))
    assert len(ladder.front) == 1
    space, limit = search_problem.space, ctx.limits["macs"]
    low = space.macs(cheap)
    costs = [space.macs(ladder.ask()) for _ in range(6)]
    assert all(c <= limit for c in costs)
    # the middle of the gap from the cheap point to the budget, within one channel step
    assert all(c > low + 0.25 * (limit - low) for c in costs), (low, limit, costs)


@pytest.mark.timeout(120)
def test_ladder_ends_polishing_its_most_accurate_point_at_the_budget(search_problem: Problem) -> None:
    """The last ``polish_fraction`` of the trials are narrow moves of the most accurate feasible
    point, scaled onto the hard budget (where a user deploys), not onto the parent's own cost."""
    ctx = _context(search_problem, ["macs=50%"])
    ladder = create_searcher("ladder", ctx, seed=0, ladder_fraction=0.5, polish_fraction=0.25)
    trials = ladder.n_ladder * 2
    assert ladder.polish_from == trials - round(0.25 * trials)
    cheap = ladder._ladder_policy(1.0)  # the front: one point far below the budget
    ladder.index = ladder.polish_from
    ladder.tell(cheap, search_problem.evaluator.evaluate(cheap))
    space, limit = search_problem.space, ctx.limits["macs"]
    low = space.macs(cheap)
    polished = [ladder.ask() for _ in range(3)]
    for child in polished:
        cost = space.macs(child)
        assert ctx.predicted_feasible(child) and cost <= limit
        assert cost > low + 0.75 * (limit - low), (low, limit, cost)  # at the budget, not at its parent
    assert len({tuple(a.prune for a in c.layers.values()) for c in polished}) > 1  # moved, not copied
    off = create_searcher("ladder", ctx, seed=0, ladder_fraction=0.5)
    assert off.polish_from == float("inf")  # off by default


@pytest.mark.timeout(300)
def test_default_strategy_is_the_ladder_and_not_below_the_uniform_sweep(tmp_path: Path) -> None:
    """On a tiny problem whose accuracy responds to pruning (an MLP trained to ~97% on digits,
    scored on the whole validation split), the default's front is never below the uniform
    sweep's at the same number of evaluated candidates, for every seed."""
    from autocompress.search.runner import build_problem

    assert SearchSpec().strategy == "ladder"
    common = {"model": "test_mlp", "data": "digits", "knobs": ["prune"], "round_to": 1, "train_epochs": 10,
              "evaluator": {"val_samples": 359, "recalib_batches": 2}, "budgets": ["macs=50%"], "trials": 12}
    problem = build_problem(SearchSpec.from_dict({**common, "out": str(tmp_path / "p")}), progress=False)
    assert problem.base.metrics["acc"] > 0.9
    for seed in (0, 1, 2):
        hv = {}
        for strategy in ("ladder", "uniform"):
            spec = SearchSpec.from_dict({**common, "strategy": strategy, "seed": seed,
                                         "out": str(tmp_path / f"{strategy}-{seed}")})
            result = run_search(spec, problem=problem)
            assert result.n_evaluated == 12
            hv[strategy] = result.hypervolume
        assert hv["ladder"] >= hv["uniform"], (seed, hv)
