"""Linear models, kernel SVMs and kNN on tiny data: cost model = artefact bytes, the artefact read
back predicts identically, ONNX labels = the artefact's, uncompressed = scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from autocompress.classic import ClassicProblem, make_spec
from autocompress.classic.dense import PackedDense, dense_to_onnx, load_artefact
from autocompress.classic.export import onnx_predict
from autocompress.cli import main
from autocompress.compression.policy import CompressionPolicy, LayerAction

WINE = "sklearn:wine"
BC = "sklearn:breast_cancer"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})


@pytest.fixture(scope="module", params=[(m, d) for m in ("logistic_regression", "linear_svc", "svc",
                                                          "knn") for d in (BC, WINE)],
                ids=lambda p: f"{p[0]}-{p[1].split(':')[1]}")
def dense(request: pytest.FixtureRequest) -> ClassicProblem:
    model, data = request.param
    return ClassicProblem.build(make_spec(model=f"sklearn:{model}", data=data, trials=1))


POLICIES = [{}, {"matrix": LayerAction(w_bits=6)}, {"rows": LayerAction(prune=0.5)},
            {"rows": LayerAction(prune=0.8), "matrix": LayerAction(w_bits=3)}]


@pytest.mark.parametrize("layers", POLICIES)
def test_dense_cost_model_round_trip_and_onnx(dense: ClassicProblem,
                                              layers: dict[str, LayerAction]) -> None:
    names = {p.name for p in dense.space.decision_points}
    policy = CompressionPolicy({k: v for k, v in layers.items() if k in names})
    packed = dense.space.build(policy)
    blob = packed.to_bytes()
    assert blob[:4] == b"ACTD" and len(blob) == dense.space.size_bytes(policy) == packed.size_bytes()
    loaded = load_artefact(blob)
    assert isinstance(loaded, PackedDense)
    s = dense.splits
    x = np.concatenate([s.x_val, s.x_test])
    assert np.array_equal(loaded.scores(x), packed.scores(x))
    assert np.array_equal(onnx_predict(dense_to_onnx(loaded), x), loaded.predict(x))
    assert dense.space.params(policy) == loaded.params()
    if not policy.layers:
        assert np.array_equal(loaded.predict(x), dense.model.predict(x))


def test_rows_knob_keeps_fewer_vectors_or_prototypes(dense: ClassicProblem) -> None:
    names = [p.name for p in dense.space.decision_points]
    kind = dense.space.base.kind
    assert ("rows" in names) == (kind != "linear") and "matrix" in names
    if kind == "linear":
        return
    full = dense.space.build(dense.space.identity())
    half = dense.space.build(CompressionPolicy({"rows": LayerAction(prune=0.5)}))
    assert half.rows < full.rows and half.size_bytes() < full.size_bytes()
    if kind == "knn":  # per-class k-means centroids, each class kept, nearest prototype decides
        assert half.k == 1 and set(half.labels.tolist()) == set(full.labels.tolist())
    else:  # the kept support vectors are the strongest (largest |dual coefficient|)
        strength = np.abs(dense.space.base.dual).max(axis=0)
        kept = np.sort(dense.space.order[:half.rows])
        assert strength[kept].min() >= np.delete(strength, kept).max()


def test_svc_cli_search_greedy_export_and_bad_values(tmp_path: Path) -> None:
    out = tmp_path / "svc"
    res = _cli("search", "--model", "sklearn:svc", "--data", WINE, "--budget", "size=40%",
               "--strategy", "greedy", "--trials", "10", "--out", str(out))
    assert res.exit_code == 0, res.output
    pareto = json.loads((out / "pareto.json").read_text())
    spec = json.loads((out / "spec.json").read_text())
    assert pareto["points"]
    for p in pareto["points"]:
        assert (out / p["artefact"]).stat().st_size == p["metrics"]["size_bytes"]
        assert p["metrics"]["size_bytes"] <= 0.4 * spec["base_metrics"]["size_bytes"]
    res = _cli("export", str(out), "--point", "knee", "--out", str(tmp_path / "s.onnx"))
    assert res.exit_code == 0, res.output
    assert "on 36/36 test samples" in res.output and (tmp_path / "s.onnx").is_file()
    res = _cli("show", str(out), "--point", "knee")
    assert res.exit_code == 0 and "vectors=" in res.output


def test_unsupported_kernel_and_counts_are_refused(tmp_path: Path) -> None:
    import joblib
    from sklearn.svm import SVC

    from autocompress.classic import load_tabular

    s = load_tabular(WINE)
    path = tmp_path / "poly.joblib"
    joblib.dump(SVC(kernel="poly").fit(s.x_train, s.y_train), path)
    for args, words in [
        (["--model", f"sklearn:{path}", "--trust-pickle"], "SVC kernel 'poly' is not supported"),
        (["--model", "sklearn:svc:5"], "tree count '5'"),
        (["--model", "sklearn:knn", "--budget", "size=0"], "size"),
    ]:
        run = tmp_path / "run"
        res = _cli("search", *args, "--data", WINE, "--out", str(run))
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.output
        assert not run.exists()
