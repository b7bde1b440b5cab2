"""Classic models (tree ensembles) end to end on tiny data: cost model, artefact round trip,
ONNX export, budgets, determinism and one-line input errors."""

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
    evaluate_policy,
    forest_to_onnx,
    make_spec,
    run_classic_search,
)
from autocompress.classic.export import onnx_predict
from autocompress.cli import main
from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.errors import UserInputError

RF20 = "sklearn:random_forest:20"
BC = "sklearn:breast_cancer"


@pytest.fixture(scope="module")
def problem() -> ClassicProblem:
    return ClassicProblem.build(make_spec(model=RF20, data=BC, trials=1))


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})


POLICIES = [
    {},
    {"trees": LayerAction(prune=0.5)},
    {"depth": LayerAction(prune=0.5), "thresholds": LayerAction(w_bits=8)},
    {"trees": LayerAction(prune=0.7), "depth": LayerAction(prune=0.3),
     "thresholds": LayerAction(w_bits=3), "leaves": LayerAction(w_bits=2)},
    {"trees": LayerAction(prune=0.95), "depth": LayerAction(prune=0.85),
     "thresholds": LayerAction(w_bits=2), "leaves": LayerAction(w_bits=1)},
]


@pytest.mark.parametrize("layers", POLICIES)
def test_cost_model_is_the_artefact_size_and_round_trip_predicts_identically(
        problem: ClassicProblem, layers: dict[str, LayerAction], tmp_path: Path) -> None:
    policy = CompressionPolicy(layers)
    packed = problem.space.build(policy)
    path = tmp_path / "m.actf"
    path.write_bytes(packed.to_bytes())
    assert path.stat().st_size == problem.space.size_bytes(policy) == packed.size_bytes()
    loaded = PackedForest.from_bytes(path.read_bytes())
    x = np.concatenate([problem.splits.x_val, problem.splits.x_test])
    assert np.array_equal(loaded.scores(x), packed.scores(x))
    assert problem.space.params(policy) == loaded.n_nodes


def test_uncompressed_artefact_predicts_like_scikit_learn(problem: ClassicProblem) -> None:
    packed = problem.space.build(problem.space.identity())
    s = problem.splits
    for x in (s.x_train, s.x_val, s.x_test):
        assert np.array_equal(packed.predict(x), problem.model.predict(x))
        assert np.allclose(packed.predict_proba(x), problem.model.predict_proba(x), atol=1e-6)


def test_compression_shrinks_the_artefact_monotonically(problem: ClassicProblem) -> None:
    sizes = [problem.space.size_bytes(CompressionPolicy(p)) for p in POLICIES]
    # every policy compresses more than identity; the last two are ordered knob by knob
    assert all(size < sizes[0] for size in sizes[1:])
    assert sizes[4] < sizes[3] and sizes[4] < sizes[0] / 10


@pytest.mark.parametrize("layers", [POLICIES[0], POLICIES[3]])
def test_onnx_labels_equal_the_artefact_and_scikit_learn(problem: ClassicProblem,
                                                         layers: dict[str, LayerAction]) -> None:
    packed = problem.space.build(CompressionPolicy(layers))
    x = problem.splits.x_test
    got = onnx_predict(forest_to_onnx(packed), x)
    assert np.array_equal(got, packed.predict(x))
    if not layers:
        assert np.array_equal(got, problem.model.predict(x))


def test_search_cli_respects_the_budget_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "rf"
    res = _cli("search", "--model", RF20, "--data", BC, "--budget", "size=30%", "--trials", "10",
               "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output
    spec = json.loads((out / "spec.json").read_text())
    pareto = json.loads((out / "pareto.json").read_text())
    limit = 0.3 * spec["base_metrics"]["size_bytes"]
    assert pareto["points"]
    for p in pareto["points"]:
        art = out / p["artefact"]
        assert p["metrics"]["size_bytes"] == art.stat().st_size <= limit
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 10
    assert all(r["feasible"] == (r["metrics"]["size_bytes"] <= limit) for r in records)
    res = _cli("export", str(out), "--point", "knee", "--out", str(tmp_path / "k.onnx"))
    assert res.exit_code == 0, res.output
    assert "equal the artefact's on 114/114" in res.output and (tmp_path / "k.onnx").is_file()
    res = _cli("export", str(out), "--point", "knee", "--int8", "--out", str(tmp_path / "i.onnx"))
    assert res.exit_code == 2 and "--int8" in res.output and not (tmp_path / "i.onnx").exists()
    res = _cli("finetune", str(out), "--point", "knee")
    assert res.exit_code == 2 and "classic" in res.output
    res = _cli("show", str(out), "--point", "best")
    assert res.exit_code == 0 and "val acc" in res.output
    res = _cli("report", str(out))
    assert res.exit_code == 0 and "Pareto front" in res.output


@pytest.mark.parametrize("strategy", ["nsga2", "tpe", "random", "uniform", "fewer_trees",
                                      "shallower_trees"])
def test_same_seed_same_candidates(strategy: str, tmp_path: Path) -> None:
    keys = []
    for run in ("a", "b"):
        spec = make_spec(model=RF20, data=BC, budgets=["size=50%"], strategy=strategy, trials=6,
                         seed=3, out=str(tmp_path / run))
        result = run_classic_search(spec)
        keys.append([(r["setting"], r["metrics"]["acc"], r["metrics"]["size_bytes"])
                     for r in result.records])
    assert keys[0] == keys[1] and len(keys[0]) >= 1


def test_fewer_trees_baseline_only_removes_trees(tmp_path: Path) -> None:
    result = run_classic_search(make_spec(model=RF20, data=BC, strategy="fewer_trees", trials=4,
                                          out=str(tmp_path / "f")))
    settings = [r["setting"] for r in result.records]
    assert all(s.endswith("thr=32 leaf=32") for s in settings)
    assert len({s.split()[0] for s in settings}) == 4


def test_evaluate_policy_measures_val_accuracy(problem: ClassicProblem) -> None:
    metrics, packed = evaluate_policy(problem, problem.space.identity())
    s = problem.splits
    assert metrics["acc"] == float((problem.model.predict(s.x_val) == s.y_val).mean())
    assert metrics["latency_ms"] > 0 and metrics["size_bytes"] == len(packed.to_bytes())


def _write_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.where(x[:, 0] > 0, "yes", "no")
    rows = ["a,b,c,label"] + [f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{t}" for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(rows) + "\n")


def test_csv_data_and_trusted_joblib_model(tmp_path: Path) -> None:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    csv = tmp_path / "d.csv"
    _write_csv(csv)
    res = _cli("search", "--model", "sklearn:random_forest:5", "--data", f"csv:{csv}",
               "--target", "label", "--trials", "3", "--strategy", "random",
               "--out", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "spec.json").read_text())["classes"] == ["no", "yes"]
    from autocompress.classic import load_tabular

    s = load_tabular(BC)
    path = tmp_path / "m.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=3, random_state=0).fit(s.x_train, s.y_train), path)
    res = _cli("search", "--model", f"sklearn:{path}", "--trust-pickle", "--data", BC,
               "--trials", "2", "--strategy", "random", "--out", str(tmp_path / "j"))
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, words", [
    (["--model", "sklearn:svm", "--data", BC], "unknown model 'sklearn:svm'"),
    (["--model", RF20, "--data", "sklearn:nope"], "unknown data 'sklearn:nope'"),
    (["--model", "sklearn:m.joblib", "--data", BC], "pass --trust-pickle"),
    (["--model", RF20, "--data", "csv:CSV", "--target", "nope"], "--target 'nope' is not a column"),
    (["--model", RF20, "--data", "csv:CSV"], "needs --target"),
    (["--model", RF20, "--data", BC, "--strategy", "ddpg"], "not available for classic"),
    (["--model", RF20, "--data", BC, "--budget", "macs=50%"], "not available for classic"),
    (["--model", RF20, "--data", BC, "--knob", "rank"], "--knob not available"),
])
def test_bad_input_is_one_line_exit_2_nothing_created(args: list[str], words: str,
                                                      tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    _write_csv(csv)
    (tmp_path / "m.joblib").write_bytes(b"not read")
    args = [a.replace("CSV", str(csv)).replace("sklearn:m.joblib", f"sklearn:{tmp_path / 'm.joblib'}")
            for a in args]
    out = tmp_path / "run"
    res = _cli("search", *args, "--out", str(out))
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], res.output
    assert not out.exists()


def test_make_spec_refuses_a_joblib_without_trust() -> None:
    with pytest.raises(UserInputError, match="--trust-pickle"):
        make_spec(model="sklearn:/nowhere/m.joblib", data=BC)


def test_three_classes_store_every_fraction_and_match_sklearn_and_onnx(tmp_path: Path) -> None:
    wine = ClassicProblem.build(make_spec(model="sklearn:random_forest:10", data="sklearn:wine",
                                          trials=1))
    x = wine.splits.x_test
    for layers in ({}, {"trees": LayerAction(prune=0.5), "leaves": LayerAction(w_bits=3),
                        "thresholds": LayerAction(w_bits=4)}):
        policy = CompressionPolicy(layers)
        packed = wine.space.build(policy)
        blob = packed.to_bytes()
        assert len(blob) == wine.space.size_bytes(policy)
        assert packed.leaf_weights().shape == (packed.n_nodes - packed.n_internal, 3)
        assert np.array_equal(PackedForest.from_bytes(blob).scores(x), packed.scores(x))
        assert np.array_equal(onnx_predict(forest_to_onnx(packed), x), packed.predict(x))
        if not layers:
            assert np.array_equal(packed.predict(x), wine.model.predict(x))


def test_two_classes_store_one_fraction_per_leaf(problem: ClassicProblem) -> None:
    policy = CompressionPolicy({"leaves": LayerAction(w_bits=8)})
    packed = problem.space.build(policy)
    n_leaves = packed.n_nodes - packed.n_internal
    assert packed.leaf_codes is not None and len(packed.leaf_codes) == n_leaves
    w = packed.leaf_weights()
    assert np.array_equal(w.sum(axis=1), np.full(n_leaves, 255.0))


def test_acc_drop_and_node_budgets_decide_feasibility(tmp_path: Path) -> None:
    result = run_classic_search(make_spec(model=RF20, data=BC, budgets=["acc-drop=1%", "params=300"],
                                          strategy="random", trials=8, out=str(tmp_path / "a")))
    base = result.base_metrics["acc"]
    for r in result.records:
        m = r["metrics"]
        assert r["feasible"] == (m["acc"] >= base - 0.01 - 1e-12 and m["params"] <= 300)
    assert all(p["metrics"]["params"] <= 300 for p in result.pareto["points"])
