"""benchmarks/bench_classic.py end to end on a tiny forest: every method's pick fits the target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_classic_picks_fit_the_size_target(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_classic",
                                                  ROOT / "benchmarks" / "bench_classic.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--trees", "10", "--trials", "4", "--data", "sklearn:breast_cancer",
                    "--targets", "0.3", "--json", str(tmp_path / "b.json")])
    (res,) = out
    (row,) = res["rows"]
    assert row["limit_bytes"] == 0.3 * res["base"]["size_bytes"]
    picks = [row[m] for m in ("search", "fewer trees", "shallower trees") if row[m] is not None]
    assert row["search"] is not None and row["fewer trees"] is not None
    assert all(p["size_bytes"] <= row["limit_bytes"] for p in picks)
    assert "| 30% (" in capsys.readouterr().out and (tmp_path / "b.json").is_file()
    svm = {r["bits"]: r for r in res["svm"]["rows"]}
    assert svm[8]["size_bytes"] < svm[16]["size_bytes"] < svm[32]["size_bytes"]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in svm.values())
