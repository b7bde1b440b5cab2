"""Pareto PNG/HTML, the front table and one point's view, on a hand-written run directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from autocompress.errors import UserInputError
from autocompress.report import load_run, show_point, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _render(table: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


@pytest.mark.timeout(120)
def test_write_report_png_html_and_table(fake_run: Path) -> None:
    paths = write_report(fake_run)
    assert paths.png == fake_run / "pareto.png"
    assert paths.png.read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    img = imread(paths.png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    page = paths.html.read_text()
    assert "plotly" in page.lower()
    assert "<script src=" not in page  # plotly.js embedded, works offline
    assert len(page) > 1_000_000
    run = load_run(fake_run)
    assert run.front
    for pid in run.front_ids:
        assert f"point {pid}\\u003c\\u002fb\\u003e" in page  # "<b>point ID</b>" as plotly escapes it
    # Hover text carries the per-layer policy of each point.
    assert "stem.0: " in page and "fc2: " in page
    text = _render(paths.table)
    ids = [c.rstrip(" *") for c in paths.table.columns[0].cells]
    assert ids[0] == "base" and sorted(ids[1:]) == sorted(run.front_ids)
    assert "base" in text and "97.00%" in text and f"{run.knee_id} *" in text


def test_load_run_reads_the_format(fake_run: Path) -> None:
    run = load_run(fake_run)
    assert len(run.trials) == 25  # 24 ok + 1 failed; the half-written last line is skipped...
    assert len(run.warnings) == 1 and "last line" in run.warnings[0]  # ...and said so
    assert sum(not t.ok for t in run.trials) == 1
    assert run.objectives == {"acc": "maximize", "macs": "minimize"}
    assert run.cost_metric == "macs" and run.quality_metric == "acc"
    assert run.budgets["macs"] == pytest.approx(1.0e6)  # 50% of the base model's 2M MACs
    assert run.base_metrics["acc"] == pytest.approx(0.97)
    assert all(p.feasible for p in run.front)


def test_budget_parsing() -> None:
    from autocompress.report.run import parse_budget_value

    assert parse_budget_value("macs", "50M", {}) == 50e6
    assert parse_budget_value("flops", "1.5G", {}) == 1.5e9
    assert parse_budget_value("latency_ms", "2ms", {}) == 2.0
    assert parse_budget_value("size_bytes", "1.5MB", {}) == 1.5e6
    assert parse_budget_value("macs", "25%", {"macs": 4e6}) == 1e6
    assert parse_budget_value("macs", "25%", {}) is None
    assert parse_budget_value("macs", "fifty", {}) is None


def test_show_point_table_and_chart(fake_run: Path) -> None:
    run = load_run(fake_run)
    pid = run.front_ids[0]
    table, png = show_point(fake_run, pid)
    assert png.read_bytes()[:8] == PNG_MAGIC
    text = _render(table)
    point = run.point(pid)
    for name in point.policy.layers:
        assert name in text
    assert f"{point.policy['fc1'].prune:.2f}" in text
    assert "top-1" in text and "MACs" in text
    # The same point id given as an int works too.
    table2, _ = show_point(fake_run, int(pid))
    assert _render(table2) == text


def test_show_point_model_order(fake_run: Path) -> None:
    """Rows follow the model's module order (stem before res before branches), not the alphabet."""
    run = load_run(fake_run)
    table, _ = show_point(fake_run, run.front_ids[0])
    layers = list(table.columns[1].cells)
    assert layers == ["stem.0", "res.0", "branch_a.0", "branch_b.0", "dw.0", "pw.0", "fc1", "fc2"]


def test_bad_point_id_names_valid_ids(fake_run: Path) -> None:
    run = load_run(fake_run)
    bad = "424242"
    with pytest.raises(UserInputError) as err:
        show_point(fake_run, bad)
    msg = str(err.value)
    assert bad in msg and "\n" not in msg
    for pid in run.front_ids:
        assert pid in msg
    assert not (fake_run / "points" / f"point-{bad}.png").exists()


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="pareto.json"):
        write_report(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pareto.json").write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        write_report(tmp_path / "broken")


def test_report_handles_wide_and_narrow_spreads(fake_run: Path) -> None:
    """A front whose costs span < 20x is drawn on a linear axis, a wider one on a log axis."""
    from autocompress.report.plots import _use_log

    assert not _use_log([1e6, 2e6, 5e6])
    assert _use_log([1e4, 2e6])
    # A log holding only the front's candidates: the report still draws the front and base model.
    front_ids = set(load_run(fake_run).front_ids)
    lines = [ln for ln in (fake_run / "trials.jsonl").read_text().splitlines(keepends=True)
             if ln.endswith("\n") and str(json.loads(ln)["id"]) in front_ids]
    (fake_run / "trials.jsonl").write_text("".join(lines))
    paths = write_report(fake_run)
    assert paths.png.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((fake_run / "pareto.json").read_text())["points"]


def test_policy_views_show_only_used_knobs(tmp_path: Path) -> None:
    """A pruning-only point gets no bit-width or rank columns, and a one-panel chart."""
    from autocompress.compression import CompressionPolicy, LayerAction
    from autocompress.report.plots import policy_png
    from autocompress.report.run import Candidate
    from autocompress.report.tables import policy_table

    point = Candidate("3", CompressionPolicy({"a": LayerAction(prune=0.5), "b": LayerAction()}),
                      {"acc": 0.9, "macs": 1e6})
    headers = [c.header for c in policy_table(point).columns]
    assert headers == ["#", "layer", "prune", "kept"]
    from matplotlib.image import imread

    short = imread(policy_png(point, tmp_path / "p.png"))
    mixed = Candidate("4", CompressionPolicy({"a": LayerAction(prune=0.5, w_bits=4, rank=0.5)}),
                      {"acc": 0.9})
    assert [c.header for c in policy_table(mixed).columns][2:] == ["prune", "kept", "w bits", "a bits", "rank"]
    tall = imread(policy_png(mixed, tmp_path / "m.png"))
    assert tall.shape[0] > short.shape[0]  # the bit-width panel is added
