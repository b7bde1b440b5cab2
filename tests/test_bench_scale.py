"""benchmarks/bench_scale.py in its tiny mode: every overhead is measured, 1 and 2 worker processes
share a study of three trials, and the throughput model turns them into a sweep estimate that
follows its own formula."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[1]


def test_tiny_mode_measures_and_models(tmp_path: Path) -> None:
    out, report = tmp_path / "bench", tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--tiny", "--out", str(out),
         "--json", str(report), "--nodes", "1", "100"],
        capture_output=True, text=True, timeout=580, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    o = data["overheads"]
    for key in ("build_problem_s", "unpickle_shipped_s", "journal_ask_tell_ms", "sqlite_ask_tell_ms",
                "cache_put_ms", "cache_get_ms", "cheap_eval_s"):
        assert o[key] > 0, key
    for workers in ("1", "2"):  # each run: 3 trials of one shared study
        assert data["local"][workers]["trials"] == 3 and data["local"][workers]["trials_per_min"] > 0
    m = data["model"]
    small, big = m["rows"]
    assert small["nodes"] == 1 and small["gpus"] == 8 and big["gpus"] == 800
    # The study's growth: the admission's view of a 200-trial study costs more than of a 20-trial one.
    growth = data["growth"]
    assert set(growth) == {"20", "200"} and growth["200"]["view_s"] > growth["20"]["view_s"] > 0
    assert m["view_b_s"] > 0
    # throughput(W, k) = min(W / (E + o), 1 / (s + a + b·k)), summed over the sweep's trials.
    for row in (small, big):
        gpu_s = (m["E_s"] + m["o_s"]) / row["gpus"]
        serial = [m["s_s"] + m["view_a_s"] + m["view_b_s"] * k for k in range(10_000)]
        assert row["hours"] == pytest.approx(sum(max(gpu_s, x) for x in serial) / 3600)
        first = next((k for k, x in enumerate(serial) if x > gpu_s), None)
        assert row["driver_from"] == first
    assert big["driver_from"] is not None and big["driver_from"] <= (small["driver_from"] or 10_000)
    assert "load average" in proc.stdout and "candidates in" in proc.stdout
    # No failed evaluation in any worker's log (a worker that started after the other had taken
    # every trial has none).
    logs = list((out / "local" / "w2").glob("p*/trials.jsonl"))
    assert logs and not any(f.read_text().count('"failed"') for f in logs)
