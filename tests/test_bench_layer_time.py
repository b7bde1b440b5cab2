"""benchmarks/bench_layer_time.py on a tiny search run (test_convnet on digits): the MACs it
counts per group add up to the engine's count, a pruned point has fewer MACs where it was pruned,
every group is timed, and a bad point is a one-line error with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from _bench import load_benchmark

from autocompress.compression import compress, count_macs
from autocompress.search import SearchSpec, run_search

pytestmark = pytest.mark.timeout(300)


def _bench() -> ModuleType:
    return load_benchmark("bench_layer_time")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layer_time") / "run"
    run_search(SearchSpec.from_dict({
        "model": "test_convnet", "data": "digits", "knobs": ["prune"], "round_to": 1, "train_epochs": 1,
        "evaluator": {"val_samples": 64, "recalib_batches": 1}, "trials": 3, "strategy": "uniform",
        "out": str(out)}), progress=None)
    return out


def test_groups_add_up_and_a_pruned_point_is_counted_smaller(tiny_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    pareto = json.loads((tiny_run / "pareto.json").read_text())
    pid = str(min(pareto["points"], key=lambda p: p["metrics"]["macs"])["id"])
    out = tmp_path / "t.json"
    result = bench.main(["--points", f"{tiny_run}:{pid}", "--rounds", "2", "--runs", "1", "--batch", "4",
                         "--json", str(out)])
    assert json.loads(out.read_text())["macs"] == result["macs"]
    label = f"{tiny_run.name}:{pid}"
    spec, points = bench.load_points([f"{tiny_run}:{pid}"])
    model, space, x = bench.base_model(spec)
    small = compress(model, points[0][1], space=space)
    assert sum(result["macs"]["base"].values()) == pytest.approx(count_macs(model, x))
    assert sum(result["macs"][label].values()) == pytest.approx(count_macs(small, x))
    assert sum(result["macs"][label].values()) < sum(result["macs"]["base"].values())
    for name in ("base", label):
        timed = result["timed"][name]
        assert timed["run_ms"] > 0
        assert set(result["macs"][name]) <= set(timed["group_ms"])  # every layer group ran
        assert all(ms >= 0 for ms in timed["group_ms"].values())
        assert sum(timed["group_ms"].values()) <= timed["run_ms"] * 1.5
    printed = capsys.readouterr().out
    assert f"{label}: " in printed and "| group |" in printed


@pytest.mark.parametrize(("point", "message"), [
    ("no-colon", "is not RUN:ID"),
    ("/nonexistent/run:3", "does not exist"),
])
def test_a_bad_point_is_one_line_and_exit_2(point: str, message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--points", point])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_missing_point_id_is_named(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--points", f"{tiny_run}:999"])
    assert exc.value.code == 2
    assert "has no candidate '999'" in capsys.readouterr().err


def test_points_of_runs_of_another_model_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    """All points compress one base: a run of another input shape is named, not mixed in."""
    import shutil

    from autocompress.errors import UserInputError

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    spec = json.loads((other / "spec.json").read_text())
    spec["input_shape"] = [1, 16, 16]
    (other / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(UserInputError, match="another model, input or round_to"):
        _bench().load_points([f"{tiny_run}:0", f"{other}:0"])
