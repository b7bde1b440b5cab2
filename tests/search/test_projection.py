"""Budget projection of the Optuna samplers: shapes sampled, placed on the hard budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.compression import CompressionSpace
from autocompress.models import create_model
from autocompress.search import parse_budget
from autocompress.search._projection import BUDGET_FILL, BudgetProjector, make_projector
from autocompress.search.base import SearchContext
from autocompress.search.optuna_searcher import space_distributions
from autocompress.search.spec import Objective


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    model = create_model("test_resnet").eval()
    return CompressionSpace.from_model(model, torch.randn(1, 3, 16, 16), knobs=("prune", "w_bits"))


def _context(space: CompressionSpace, budget: str = "macs=50%") -> SearchContext:
    b = parse_budget(budget)
    base = {"acc": 0.9, "macs": float(space.macs(space.identity())), "size_bytes": float(space.size_bytes(space.identity()))}
    return SearchContext(space=space, objectives=[Objective("acc", "maximize"), Objective("macs", "minimize")],
                         budgets=[b], base_metrics=base, limits={b.name: b.limit(base)})


def test_projected_policies_land_just_under_the_target(space: CompressionSpace) -> None:
    ctx = _context(space)
    proj = make_projector(ctx)
    assert proj is not None and proj.metric == "macs"
    limit = ctx.limits["macs"]
    rng = np.random.default_rng(0)
    for i in range(20):
        shape = space.sample(rng)
        fill = float(rng.uniform(0.25, 1.0))
        policy = proj(shape, fill)
        macs = space.macs(policy)
        target = proj.target(float(space.macs(proj.saturate(shape))), fill)
        assert target >= fill * limit - 1e-6  # never aimed below the asked fill
        assert macs <= target + 1e-6
        # the projection gets close to the target, not just under it (ResNet-8 at width 8 is coarse)
        assert macs >= 0.75 * target, (i, macs / target)  # channel counts are integers
        assert proj(shape, fill) == policy  # a pure function of shape and fill


def test_projection_keeps_the_shape(space: CompressionSpace) -> None:
    proj = make_projector(_context(space))
    shape = space.sample(3)
    policy = proj(shape, 0.6)
    ratios = [(shape.layers[n].prune, policy.layers[n].prune) for n in shape.layers if shape.layers[n].prune > 0]
    order_before = np.argsort([a for a, _ in ratios], kind="stable")
    order_after = np.argsort([b for _, b in ratios], kind="stable")
    # relative compression is scaled by one factor, so the layer ranking is kept (ties may saturate)
    assert [ratios[i][0] for i in order_before] == sorted(a for a, _ in ratios)
    assert sorted(b for _, b in ratios) == [ratios[i][1] for i in order_after]
    assert all(b <= max(p.knobs["prune"].high for p in space.decision_points if "prune" in p.knobs) + 1e-9
               for _, b in ratios)


def test_size_budget_projects_bits_and_channels(space: CompressionSpace) -> None:
    ctx = _context(space, "size=30%")
    proj = make_projector(ctx)
    assert proj is not None and proj.metric == "size_bytes"
    policy = proj(space.sample(1), 1.0)
    assert space.size_bytes(policy) <= ctx.limits["size"] + 1e-6


def test_no_projectable_budget_means_no_projector(space: CompressionSpace) -> None:
    ctx = _context(space, "acc-drop=1%")
    assert make_projector(ctx) is None
    assert BUDGET_FILL not in space_distributions(space, None)
    proj = BudgetProjector(space, "macs", 1.0, lambda p: float(space.macs(p)))
    assert BUDGET_FILL in space_distributions(space, proj)
    with pytest.raises(ValueError, match="fill_low"):
        BudgetProjector(space, "macs", 1.0, lambda p: 0.0, fill_low=0.0)


def test_nsga2_spreads_candidates_over_the_budget(tmp_path, tiny_spec, search_problem) -> None:
    from autocompress.search import run_search

    spec = tiny_spec(tmp_path / "proj", strategy="nsga2", trials=8, budgets=["macs=50%"],
                     strategy_settings={"population_size": 4})
    result = run_search(spec, problem=search_problem)
    base = result.base_metrics["macs"]
    fractions = [t.metrics["macs"] / base for t in result.trials if t.metrics and "macs" in t.metrics]
    assert all(f <= 0.5 + 1e-9 for f in fractions)
    assert max(fractions) > 0.4  # candidates reach up to the budget instead of piling far below it


@pytest.fixture(scope="module")
def bits_space() -> CompressionSpace:
    model = create_model("test_resnet").eval()
    return CompressionSpace.from_model(model, torch.randn(1, 3, 16, 16), knobs=("prune", "w_bits", "a_bits"))


@pytest.mark.parametrize(("budget", "metric", "projected"), [
    ("size=30%", "size_bytes", ("prune", "w_bits")),
    ("params=40%", "params", ("prune",)),
    ("macs=50%", "macs", ("prune",)),
    ("bops=10%", "bops", ("prune", "w_bits", "a_bits")),
])
def test_only_the_knobs_the_budget_depends_on_are_projected(bits_space: CompressionSpace, budget: str,
                                                            metric: str, projected: tuple) -> None:
    b = parse_budget(budget)
    ident = bits_space.identity()
    base = {"acc": 0.9, **{k: float(v) for k, v in bits_space.costs(ident).items()}}
    base["flops"] = 2 * base["macs"]
    # (BOPs as an objective: every knob pays off somewhere, so none is held)
    ctx = SearchContext(space=bits_space, objectives=[Objective("acc", "maximize"), Objective("bops", "minimize")],
                        budgets=[b], base_metrics=base, limits={b.name: b.limit(base)})
    proj = make_projector(ctx)
    assert proj is not None and proj.metric == metric and proj.knobs == projected
    rng = np.random.default_rng(1)
    for _ in range(6):
        shape = bits_space.sample(rng)
        policy = proj(shape, float(rng.uniform(0.25, 1.0)))
        for name, action in shape.layers.items():
            for knob in ("prune", "w_bits", "a_bits"):
                if knob not in projected and knob in bits_space[name].knobs:
                    # e.g. activation bits do not change the model's size: the sampled value stays
                    assert getattr(policy.get(name), knob) == getattr(action, knob), (name, knob)
        assert float(ctx.predicted_metrics(policy)[metric]) <= ctx.limits[b.name] + 1e-6


def test_the_target_stays_above_the_reachable_floor(space: CompressionSpace) -> None:
    # A budget just above the smallest reachable cost (as latency budgets often are): a target of
    # fill x limit would lie below the floor for most fills, and every such proposal would be the
    # same saturated policy; the targets are spread over [floor, limit] instead.
    floor = float(space.macs(space.most_compressed()))
    proj = BudgetProjector(space, "macs", 2.0 * floor, lambda p: float(space.macs(p)), knobs=("prune",))
    shape = space.uniform(prune=0.8)
    assert space.macs(proj.saturate(shape)) == floor
    fills = np.linspace(0.25, 1.0, 9)
    policies = [proj(shape, float(f)) for f in fills]
    costs = [space.macs(p) for p in policies]
    assert all(c <= 2.0 * floor + 1e-6 for c in costs)
    assert costs == sorted(costs)  # a higher fill never gives a smaller model
    # only the lowest fill sits at the floor (fill x limit < floor would saturate the first three)
    assert [c == floor for c in costs] == [True] + [False] * 8, costs
    assert costs[-1] >= 0.75 * 2.0 * floor


def test_knobs_nothing_rewards_are_held_and_not_sampled(bits_space: CompressionSpace) -> None:
    # acc, size and MACs: activation bits change neither cost, so they could only lose accuracy
    b = parse_budget("size=30%")
    base = {"acc": 0.9, **{k: float(v) for k, v in bits_space.costs(bits_space.identity()).items()}}
    objectives = [Objective("acc", "maximize"), Objective("size_bytes", "minimize"),
                  Objective("macs", "minimize")]
    ctx = SearchContext(space=bits_space, objectives=objectives, budgets=[b], base_metrics=base,
                        limits={b.name: b.limit(base)})
    proj = make_projector(ctx)
    assert proj is not None and proj.held == ("a_bits",)
    assert not [n for n in space_distributions(bits_space, proj) if n.endswith(":a_bits")]
    policy = proj(bits_space.sample(2), 0.8)
    assert all(policy.get(p.name).a_bits == 32 for p in bits_space.decision_points)
    # with BOPs among the objectives activation bits pay off, so they are searched
    ctx.objectives = [*objectives, Objective("bops", "minimize")]
    proj = make_projector(ctx)
    assert proj is not None and proj.held == ()
    assert [n for n in space_distributions(bits_space, proj) if n.endswith(":a_bits")]


def _context_budgets(space: CompressionSpace, budgets: list[str]) -> SearchContext:
    bs = [parse_budget(b) for b in budgets]
    base = {"acc": 0.9, "macs": float(space.macs(space.identity())),
            "size_bytes": float(space.size_bytes(space.identity()))}
    return SearchContext(space=space, objectives=[Objective("acc", "maximize"), Objective("macs", "minimize")],
                         budgets=bs, base_metrics=base, limits={b.name: b.limit(base) for b in bs})


def test_several_budgets_are_met_at_once_whatever_their_order(space: CompressionSpace) -> None:
    """``macs=60% size=20%``: each projected policy meets both (the size budget binds for some
    shapes, the MACs one for others), the most binding one nearly tight, and the order the budgets
    are given in changes nothing."""
    one = make_projector(_context_budgets(space, ["macs=60%", "size=20%"]))
    other = make_projector(_context_budgets(space, ["size=20%", "macs=60%"]))
    assert one is not None and other is not None and one.limit == 1.0
    limits = _context_budgets(space, ["macs=60%", "size=20%"]).limits
    rng = np.random.default_rng(0)
    binding, tightest = set(), []
    for _ in range(20):
        shape = space.sample(rng)
        policy = one(shape, 1.0)
        assert policy == other(shape, 1.0)
        use = {"macs": space.macs(policy) / limits["macs"], "size": space.size_bytes(policy) / limits["size"]}
        assert max(use.values()) <= 1.0 + 1e-9, use
        tightest.append(max(use.values()))
        binding.add(max(use, key=use.get))
    assert binding == {"macs", "size"}  # both budgets bind for some shapes
    # on the budget, not far below it (bit-widths halve and channels are coarse: a few shapes
    # cannot get close)
    assert float(np.median(tightest)) >= 0.9, tightest
