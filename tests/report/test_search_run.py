"""report / show / export / finetune on a run the search engine itself wrote (its format wins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from autocompress.errors import UserInputError
from autocompress.report import load_run, show_point, write_report
from autocompress.report.export import export_point
from autocompress.report.finetune import finetune_point


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autocompress.search import SearchSpec, run_search

    out = tmp_path_factory.mktemp("search") / "run"
    spec = SearchSpec.from_dict({
        "model": "test_mlp", "data": "digits", "knobs": ["prune", "w_bits", "a_bits"],
        "strategy": "random", "trials": 8, "seed": 0, "train_epochs": 4,
        "budgets": ["macs=60%"], "out": str(out),
    })
    result = run_search(spec)
    assert result.front
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_report_show_export_finetune_on_a_search_run(search_run: Path, tmp_path: Path) -> None:
    run = load_run(search_run)
    assert run.front_ids and all(p.policy.layers for p in run.front)
    assert run.budgets["macs"] == pytest.approx(0.6 * run.base_metrics["macs"])
    assert run.base_metrics["acc"] > 0.9
    assert {t.id for t in run.trials} >= set(run.front_ids)

    paths = write_report(search_run)
    assert paths.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths.html.read_text()
    for pid in run.front_ids:
        assert f"point {pid}\\u003c" in page

    knee = run.knee_id or run.front_ids[0]
    table, png = show_point(search_run, knee)
    assert png.is_file() and len(table.rows) == len(run.point(knee).policy.layers)
    bad = str(max(int(i) for i in run.front_ids) + 100)
    with pytest.raises(UserInputError, match=f"point '{bad}' is not on the Pareto front"):
        show_point(search_run, bad)

    info = export_point(search_run, knee, "onnx", tmp_path / "knee.onnx", repeats=3)
    assert info.max_abs_diff <= 1e-4
    # The rebuilt compressed model is the one the search scored: same accuracy.
    assert info.acc == pytest.approx(run.point(knee).metrics["acc"], abs=0.01)
    sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (3, 10)

    res = finetune_point(search_run, knee, epochs=1, seed=0)
    assert res.acc_before == pytest.approx(run.point(knee).metrics["acc"], abs=0.01)
    assert res.record_path is not None and res.record_path.parent == search_run / "finetune"
