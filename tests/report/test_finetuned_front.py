"""Test top-1 on a held-out split and the front after fine-tuning (search --finetune-top K,
finetune --front / --top K), on a tiny image folder with train/ and test/ sub-folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cli_checks import assert_one_line_error
from click.testing import CliRunner

from autocompress.cli import main
from autocompress.errors import UserInputError
from autocompress.report import load_run

pytestmark = pytest.mark.timeout(600)


def make_image_folder(root: Path, per_class: int, seed: int, classes: int = 10) -> None:
    """16x16 PNGs, one colour per class (odd classes with every other row inverted), small noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(c * 25) % 256, (c * 97) % 256, (c * 151) % 256])
        for i in range(per_class):
            arr = np.clip(colour[None, None, :] + rng.integers(-20, 21, (16, 16, 3)), 0, 255)
            arr = arr.astype(np.uint8)
            if c % 2:
                arr[::2] = 255 - arr[::2]
            Image.fromarray(arr).save(folder / f"{i}.png")


def make_train_test(root: Path) -> Path:
    """``root/train/<class>`` (24 per class) and ``root/test/<class>`` (4 per class)."""
    make_image_folder(root / "train", 24, seed=0)
    make_image_folder(root / "test", 4, seed=1)
    return root


def _search_args(data: str, out: Path, cfg: Path, *extra: str) -> list[str]:
    return ["search", "--config", str(cfg), "--model", "test_convnet", "--data", data,
            "--strategy", "uniform", "--trials", "5", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heldout")
    data = make_train_test(root / "data")
    cfg = root / "cfg.yaml"
    cfg.write_text("train_epochs: 8\n")
    return {"root": root, "data": data, "cfg": cfg}


@pytest.fixture(scope="module")
def ft_run(setup: dict[str, Path]) -> tuple[Path, str]:
    """``search --finetune-top 2 --finetune-epochs 1`` on the train/test folder."""
    out = setup["root"] / "run"
    res = CliRunner().invoke(main, _search_args(f"imagefolder:{setup['data']}", out, setup["cfg"],
                                                "--finetune-top", "2", "--finetune-epochs", "1"))
    assert res.exit_code == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return out, res.stdout


def _records(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "finetune").glob("*.json"))]


def test_search_reports_test_top1_of_every_front_point(ft_run: tuple[Path, str]) -> None:
    run_dir, stdout = ft_run
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert len(pareto["points"]) >= 2
    for p in pareto["points"]:
        assert 0.0 <= p["test_acc"] <= 1.0
        assert "test_acc" not in p["metrics"]  # measured, never an objective
    assert pareto["test"]["samples"] == 40 and 0.0 <= pareto["test"]["base"] <= 1.0
    assert pareto["test"]["base"] > 0.3  # the base model learnt the colours (10 classes)
    assert "test top-1" in stdout  # the summary table's column
    run = load_run(run_dir)
    assert {p.id: run.test_acc(p) for p in run.front} == {
        str(p["id"]): p["test_acc"] for p in pareto["points"]}


def test_test_top1_is_the_searched_model_on_the_test_folder(ft_run: tuple[Path, str]) -> None:
    from autocompress.evaluators.accuracy import topk_correct
    from autocompress.report._rebuild import rebuild_problem, scored_model

    run = load_run(ft_run[0])
    problem = rebuild_problem(run)
    x, y = problem.data.tensors("test")
    assert len(y) == 40  # exactly the test/ folder: nothing carved from it
    point = run.front[0]
    got = topk_correct(scored_model(problem, point.policy), x, y)[1]
    assert run.test_acc(point) == pytest.approx(got)


def test_finetune_top_2_writes_two_records_best_first(ft_run: tuple[Path, str]) -> None:
    run_dir, stdout = ft_run
    run = load_run(run_dir)
    recs = _records(run_dir)
    assert len(recs) == 2
    best_two = [p.id for p in run.by_proxy_rank()[:2]]
    assert sorted(r["point_id"] for r in recs) == sorted(best_two)
    for r in recs:
        assert r["epochs"] == 1 and r["kd"] is True
        for key in ("acc_before", "acc_after", "test_before", "test_after", "teacher_test_acc"):
            assert 0.0 <= r[key] <= 1.0, key
        point = run.point(r["point_id"])
        assert r["acc_before"] == pytest.approx(point.metrics["acc"], abs=1e-6)
        assert r["test_before"] == pytest.approx(run.test_acc(point), abs=1e-6)
    assert set(run.finetuned) == set(best_two)
    assert "Fine-tuned front" in stdout and "test after" in stdout


def test_proxy_rank_is_accuracy_then_lower_cost(ft_run: tuple[Path, str]) -> None:
    run = load_run(ft_run[0])
    ranked = run.by_proxy_rank()
    keys = [(-p.metrics["acc"], p.metrics["macs"]) for p in ranked]
    assert keys == sorted(keys)


def test_report_shows_both_fronts(ft_run: tuple[Path, str]) -> None:
    from autocompress.report.plots import finetuned_pairs

    run_dir = ft_run[0]
    res = CliRunner().invoke(main, ["report", str(run_dir)])
    assert res.exit_code == 0, res.stderr
    assert "Pareto front" in res.stdout and "Fine-tuned front" in res.stdout
    for col in ("proxy top-1", "val after", "test before", "test after"):
        assert col in res.stdout
    run = load_run(run_dir)
    pairs = finetuned_pairs(run)
    assert len(pairs) == 2
    for point, _, before, after in pairs:
        assert before == pytest.approx(100 * point.metrics["acc"])
        assert after == pytest.approx(100 * run.finetuned[point.id]["acc_after"])
    page = (run_dir / "pareto.html").read_text()
    assert "after fine-tuning (2)" in page and "Pareto front" in page
    assert (run_dir / "pareto.png").stat().st_size > 10_000


def test_show_and_export_report_test_top1(ft_run: tuple[Path, str], tmp_path: Path) -> None:
    from autocompress.report.export import export_point

    run_dir = ft_run[0]
    run = load_run(run_dir)
    tuned = run.by_proxy_rank()[0]
    res = CliRunner().invoke(main, ["show", str(run_dir), "--point", tuned.id])
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "test top-1" in text and "fine-tuned (1 epoch(s))" in text
    info = export_point(run_dir, tuned.id, "onnx", tmp_path / "p.onnx", repeats=2)
    assert info.test_samples == 40 and info.test_acc == pytest.approx(run.test_acc(tuned), abs=0.03)
    assert any(line.startswith("test top-1") for line in info.lines())
    ft = export_point(run_dir, tuned.id, "onnx", tmp_path / "ft.onnx", repeats=2, finetuned=True)
    assert ft.test_acc == pytest.approx(run.finetuned[tuned.id]["test_after"], abs=0.03)


def test_resumed_search_finetunes_only_what_is_missing(ft_run: tuple[Path, str],
                                                       setup: dict[str, Path]) -> None:
    run_dir = ft_run[0]
    run = load_run(run_dir)
    first, second = run.by_proxy_rank()[:2]
    kept = run_dir / "finetune" / f"point-{first.id}.json"
    before = kept.read_text()
    (run_dir / "finetune" / f"point-{second.id}.json").unlink()
    (run_dir / "finetune" / f"point-{second.id}.pt").unlink()
    res = CliRunner().invoke(main, _search_args(f"imagefolder:{setup['data']}", run_dir, setup["cfg"],
                                                "--finetune-top", "2", "--finetune-epochs", "1",
                                                "--resume", "--no-report"))
    assert res.exit_code == 0, res.stderr
    assert kept.read_text() == before  # not fine-tuned again
    assert (run_dir / "finetune" / f"point-{second.id}.json").is_file()
    assert len(_records(run_dir)) == 2


def test_finetune_front_covers_every_feasible_point(ft_run: tuple[Path, str]) -> None:
    from collections import Counter

    run_dir = ft_run[0]
    n_before = len(_records(run_dir))
    counts = Counter(r["point_id"] for r in _records(run_dir))
    front = load_run(run_dir).front
    assert all(p.feasible for p in front)
    res = CliRunner().invoke(main, ["finetune", str(run_dir), "--front", "--epochs", "1"])
    assert res.exit_code == 0, res.stderr
    after = Counter(r["point_id"] for r in _records(run_dir))
    assert after == counts + Counter(p.id for p in front)  # one new record per front point
    assert res.stdout.count("test top-1 before") == len(front)
    assert "Fine-tuned front" in res.stdout
    # --top 1: only the best point, once more (never overwriting)
    res = CliRunner().invoke(main, ["finetune", str(run_dir), "--top", "1", "--epochs", "1"])
    assert res.exit_code == 0, res.stderr
    best = load_run(run_dir).by_proxy_rank()[0].id
    assert res.stdout.count("test top-1 before") == 1 and f"point {best}:" in res.stdout
    assert len(_records(run_dir)) == n_before + len(front) + 1


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one of --point, --front, --top"),
    (["--point", "knee", "--front"], "exactly one of"),
    (["--top", "0"], "--top 0"),
])
def test_finetune_selection_errors(fake_run: Path, args: list[str], needle: str) -> None:
    res = CliRunner().invoke(main, ["finetune", str(fake_run), *args])
    assert_one_line_error(res, needle)
    assert not (fake_run / "finetune").exists()


@pytest.mark.parametrize("k", ["0", "-1", "two"])
def test_bad_finetune_top_is_refused_before_anything_is_created(tmp_path: Path, k: str) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", "--model", "test_mlp", "--trials", "2",
                                    "--finetune-top", k, "--out", str(out)])
    assert_one_line_error(res, "finetune" if k != "two" else "--finetune-top")
    assert not out.exists()


def test_spec_field_validates_and_is_run_level() -> None:
    from autocompress.search import SearchSpec
    from autocompress.search.spec import RUN_LEVEL_FIELDS

    assert SearchSpec(finetune_top=3).finetune_top == 3
    assert SearchSpec().finetune_top is None and SearchSpec().finetune_epochs == 3
    for bad in (0, -2, True, 1.5, "x"):
        with pytest.raises(UserInputError, match="finetune_top"):
            SearchSpec(finetune_top=bad)
    with pytest.raises(UserInputError, match="finetune_epochs"):
        SearchSpec(finetune_epochs=0)
    # Changing K continues the stored search instead of being refused as another search.
    assert {"finetune_top", "finetune_epochs"} <= RUN_LEVEL_FIELDS
    assert SearchSpec(finetune_top=2).identity() == SearchSpec().identity()


def test_finetune_front_api_validates_top(fake_run: Path) -> None:
    from autocompress.report import finetune_front

    for bad in (0, -1, 2.0, True):
        with pytest.raises(UserInputError, match="top="):
            finetune_front(fake_run, top=bad)


def test_flat_folder_has_no_test_column(setup: dict[str, Path]) -> None:
    flat = setup["root"] / "flat"
    make_image_folder(flat, 12, seed=2)
    out = setup["root"] / "flat-run"
    res = CliRunner().invoke(main, ["search", "--config", str(setup["cfg"]), "--model", "test_convnet",
                                    "--data", f"imagefolder:{flat}", "--strategy", "uniform",
                                    "--trials", "2", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    assert "test top-1" not in res.stdout and "Fine-tuned front" not in res.stdout
    pareto = json.loads((out / "pareto.json").read_text())
    assert "test" not in pareto and all("test_acc" not in p for p in pareto["points"])
    assert not (out / "test_top1.json").exists()


def test_digits_api_finetune_top_without_test_split(tmp_path: Path) -> None:
    from autocompress.report.tables import finetune_table, front_table
    from autocompress.search import SearchSpec, run_search

    spec = SearchSpec(model="test_mlp", data="digits", strategy="uniform", trials=3, train_epochs=2,
                      finetune_top=1, finetune_epochs=1, out=str(tmp_path / "run"))
    result = run_search(spec)
    assert result.test_acc == {} and result.base_test_acc is None
    assert len(result.finetuned) == 1
    ft = result.finetuned[0]
    assert ft.test_before is None and ft.test_after is None and 0.0 <= ft.acc_after <= 1.0
    run = load_run(result.run_dir)
    assert ft.point_id == run.by_proxy_rank()[0].id
    headers = [c.header for c in front_table(run).columns]
    assert "test top-1" not in headers
    table = finetune_table(run)
    assert table is not None
    assert [c.header for c in table.columns][-3:] == ["val before", "val after", "epochs"]
    assert not (result.run_dir / "test_top1.json").exists()
