"""Regression (sklearn:diabetes, R²) with tree ensembles: cost model = artefact bytes, ONNX values =
the artefact's, uncompressed = scikit-learn's regressor; non-tree models are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from autocompress.classic import ClassicProblem, PackedForest, forest_to_onnx, make_spec
from autocompress.classic.export import onnx_predict
from autocompress.cli import main
from autocompress.compression.policy import CompressionPolicy, LayerAction

DIA = "sklearn:diabetes"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})


@pytest.fixture(scope="module", params=["random_forest:6", "gradient_boosting:8", "decision_tree"])
def reg(request: pytest.FixtureRequest) -> ClassicProblem:
    return ClassicProblem.build(make_spec(model=f"sklearn:{request.param}", data=DIA, trials=1))


POLICIES = [{}, {"trees": LayerAction(prune=0.5), "stages": LayerAction(prune=0.5)},
            {"depth": LayerAction(prune=0.4), "leaves": LayerAction(w_bits=5)},
            {"ccp": LayerAction(prune=0.5), "thresholds": LayerAction(w_bits=6),
             "leaves": LayerAction(w_bits=3)}]


@pytest.mark.parametrize("layers", POLICIES)
def test_regression_cost_model_round_trip_and_onnx(reg: ClassicProblem,
                                                   layers: dict[str, LayerAction]) -> None:
    names = {p.name for p in reg.space.decision_points}
    policy = CompressionPolicy({k: v for k, v in layers.items() if k in names})
    packed = reg.space.build(policy)
    blob = packed.to_bytes()
    assert len(blob) == reg.space.size_bytes(policy) == packed.size_bytes()
    loaded = PackedForest.from_bytes(blob)
    x = np.concatenate([reg.splits.x_val, reg.splits.x_test])
    assert loaded.n_classes == 0 and np.array_equal(loaded.predict(x), packed.predict(x))
    assert np.allclose(onnx_predict(forest_to_onnx(loaded), x), loaded.predict(x), rtol=1e-6, atol=0)
    if not policy.layers:
        assert np.allclose(loaded.predict(x), reg.model.predict(x), rtol=1e-5)
        s = reg.splits
        r2 = 1 - ((s.y_test - reg.model.predict(s.x_test)) ** 2).sum() / (
            (s.y_test - s.y_test.mean()) ** 2).sum()
        assert abs(s.score(loaded.predict(s.x_test), s.y_test) - r2) < 1e-6


def test_regression_cli_search_reports_r2_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "rf"
    res = _cli("search", "--model", "sklearn:random_forest:8", "--data", DIA, "--budget",
               "size=30%", "--trials", "6", "--strategy", "random", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "val R²" in res.output
    spec = json.loads((out / "spec.json").read_text())
    assert spec["task"] == "regression" and spec["base_vs_sklearn_test_agreement"] == 1.0
    pareto = json.loads((out / "pareto.json").read_text())
    for p in pareto["points"]:
        assert (out / p["artefact"]).stat().st_size == p["metrics"]["size_bytes"]
    res = _cli("export", str(out), "--point", "best", "--out", str(tmp_path / "r.onnx"))
    assert res.exit_code == 0, res.output
    assert "test     R²" in res.output and "on 89/89 test samples" in res.output
    bad = tmp_path / "bad"
    res = _cli("search", "--model", "sklearn:svc", "--data", DIA, "--out", str(bad))
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "does not fit a numeric target" in lines[0]
    assert not bad.exists()
