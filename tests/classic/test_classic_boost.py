"""Gradient boosting, cost-complexity pruning and the greedy strategy on tiny data: cost model =
artefact bytes, ONNX labels = the artefact's, the uncompressed artefact = scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from autocompress.classic import (
    ClassicProblem,
    PackedForest,
    compress_forest,
    forest_from_sklearn,
    forest_to_onnx,
    make_spec,
    run_classic_search,
)
from autocompress.classic.export import onnx_predict
from autocompress.cli import main
from autocompress.compression.policy import CompressionPolicy, LayerAction

BC = "sklearn:breast_cancer"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})


@pytest.fixture(scope="module", params=[BC, "sklearn:wine"])
def boosted(request: pytest.FixtureRequest) -> ClassicProblem:
    return ClassicProblem.build(make_spec(model="sklearn:gradient_boosting:12", data=request.param,
                                          trials=1))


BOOST_POLICIES = [
    {},
    {"stages": LayerAction(prune=0.5)},
    {"depth": LayerAction(prune=0.4), "leaves": LayerAction(w_bits=4)},
    {"stages": LayerAction(prune=0.3), "thresholds": LayerAction(w_bits=5),
     "leaves": LayerAction(w_bits=2)},
]


@pytest.mark.parametrize("layers", BOOST_POLICIES)
def test_boosted_cost_model_round_trip_and_onnx(boosted: ClassicProblem,
                                                layers: dict[str, LayerAction]) -> None:
    policy = CompressionPolicy(layers)
    packed = boosted.space.build(policy)
    blob = packed.to_bytes()
    assert blob[:4] == b"ACTB" and len(blob) == boosted.space.size_bytes(policy) == packed.size_bytes()
    loaded = PackedForest.from_bytes(blob)
    s = boosted.splits
    x = np.concatenate([s.x_val, s.x_test])
    assert np.array_equal(loaded.raw_scores(x), packed.raw_scores(x))
    assert np.array_equal(onnx_predict(forest_to_onnx(loaded), x), loaded.predict(x))
    assert boosted.space.params(policy) == loaded.n_nodes
    if not layers:
        for xs in (s.x_train, x):
            assert np.array_equal(loaded.predict(xs), boosted.model.predict(xs))
            assert np.allclose(loaded.predict_proba(xs), boosted.model.predict_proba(xs), atol=1e-5)


def test_boosted_space_keeps_stage_prefixes(boosted: ClassicProblem) -> None:
    space = boosted.space
    names = [p.name for p in space.decision_points]
    assert "stages" in names and "trees" not in names and "ccp" not in names
    s = space.setting(CompressionPolicy({"stages": LayerAction(prune=0.5)}))
    assert s.kept == tuple(range(6 * space.outputs))
    assert space.outputs == (1 if boosted.splits.classes.__len__() == 2 else 3)


@pytest.fixture(scope="module")
def tree_problem() -> ClassicProblem:
    return ClassicProblem.build(make_spec(model="sklearn:decision_tree", data=BC, trials=1))


def test_collapse_alphas_are_scikit_learns_pruning_path(tree_problem: ClassicProblem) -> None:
    from sklearn.tree import DecisionTreeClassifier

    s = tree_problem.splits
    path = DecisionTreeClassifier(random_state=0).cost_complexity_pruning_path(s.x_train, s.y_train)
    ours = np.unique(tree_problem.space.ccp_alphas)
    # scikit-learn's path starts at 0 (the full tree) and ends where the root collapses
    want = np.unique(path.ccp_alphas[1:-1])
    assert np.allclose(ours, want, rtol=1e-9, atol=1e-15)
    base = tree_problem.forest
    for lo, hi in zip(path.ccp_alphas[:-2], path.ccp_alphas[1:-1], strict=True):
        alpha = (lo + hi) / 2
        pruned = DecisionTreeClassifier(random_state=0, ccp_alpha=alpha).fit(s.x_train, s.y_train)
        packed = compress_forest(base, np.array([0]), 10_000, 32, 32, alpha=alpha,
                                 collapse=tree_problem.space.collapse,
                                 anc_min=tree_problem.space.anc_min)
        assert packed.n_nodes == pruned.tree_.node_count
        assert np.array_equal(packed.predict(s.x_test), pruned.predict(s.x_test))
        assert packed.n_nodes == len(forest_from_sklearn(pruned, 2).feature)


@pytest.mark.parametrize("q", [0.2, 0.6, 0.95])
def test_ccp_knob_cost_model_and_onnx(q: float) -> None:
    problem = ClassicProblem.build(make_spec(model="sklearn:random_forest:8", data="sklearn:wine",
                                             trials=1))
    sizes = []
    for layers in ({"ccp": LayerAction(prune=q)},
                   {"ccp": LayerAction(prune=q), "depth": LayerAction(prune=0.3),
                    "leaves": LayerAction(w_bits=3), "thresholds": LayerAction(w_bits=6)}):
        policy = CompressionPolicy(layers)
        packed = problem.space.build(policy)
        blob = packed.to_bytes()
        assert len(blob) == problem.space.size_bytes(policy)
        assert problem.space.params(policy) == packed.n_nodes
        x = problem.splits.x_test
        assert np.array_equal(onnx_predict(forest_to_onnx(packed), x), packed.predict(x))
        sizes.append(len(blob))
    base = problem.space.size_bytes(problem.space.identity())
    assert sizes[1] < sizes[0] < base
    assert " ccp=0." in problem.space.structure_key(CompressionPolicy({"ccp": LayerAction(prune=q)}))


def test_greedy_probes_then_walks_down_in_size(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        result = run_classic_search(make_spec(model="sklearn:random_forest:10", data=BC,
                                              budgets=["size=30%"], strategy="greedy", trials=20,
                                              out=str(tmp_path / name)))
        runs.append([(r["setting"], r["metrics"]["acc"]) for r in result.records])
    assert runs[0] == runs[1]
    # probes: trees, depth, ccp, thresholds, leaves at three levels each
    probes, walk = result.records[:15], result.records[15:]
    moved = [next(iter(r["policy"]["_data"]["layers"])) for r in probes
             if len(r["policy"]["_data"]["layers"]) == 1]
    assert moved == [n for n in ("trees", "depth", "ccp", "thresholds", "leaves") for _ in range(3)]
    assert walk and all(r["feasible"] for r in walk)
    sizes = [r["metrics"]["size_bytes"] for r in walk]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] <= 0.3 * result.base_metrics["size_bytes"]
    assert result.pareto["points"]


def test_gradient_boosting_cli_search_export_and_bad_values(tmp_path: Path) -> None:
    out = tmp_path / "gb"
    res = _cli("search", "--model", "sklearn:gradient_boosting:10", "--data", BC, "--budget",
               "size=50%", "--trials", "6", "--strategy", "random", "--out", str(out))
    assert res.exit_code == 0, res.output
    pareto = json.loads((out / "pareto.json").read_text())
    for p in pareto["points"]:
        assert (out / p["artefact"]).stat().st_size == p["metrics"]["size_bytes"]
        assert p["setting"].startswith("stages=")
    res = _cli("export", str(out), "--point", "best", "--out", str(tmp_path / "gb.onnx"))
    assert res.exit_code == 0, res.output
    assert "TreeEnsembleRegressor" in res.output and "on 114/114" in res.output
    for args, words in [(["--model", "sklearn:gradient_boosting:0"], "tree count '0'"),
                        (["--model", "sklearn:gradient_boosting:x"], "tree count 'x'"),
                        (["--model", "sklearn:gradient_boosting", "--strategy", "ppo"],
                         "not available for classic")]:
        bad = tmp_path / "bad"
        res = _cli("search", *args, "--data", BC, "--out", str(bad))
        assert res.exit_code == 2 and words in res.output and not bad.exists(), res.output
