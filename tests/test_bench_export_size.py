"""benchmarks/bench_export_size.py on test_convnet: every row is printed, every file matches
PyTorch, and the sparse and shared rows store their weights compactly (the LSTM / GRU rows are
the library's, tested in tests/report/test_export_compact.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]


def test_rows_of_test_convnet() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_export_size.py"), "--models", "test_convnet"],
        capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| test_")}
    assert len(rows) == 16
    for key, (_, _, ratio, _, _, types, _, diff) in rows.items():
        assert float(diff) <= 1e-4, key
        assert "float)" not in types, key  # no weight left in float32
        assert 0.5 < float(ratio.strip("*×")) < 8, key
    assert rows["test_convnet", "sparse 0.8"][5] == "8×sparse FLOAT + bitmap"
    assert rows["test_convnet", "share 4"][5] == "8×UINT4 indices + codebook"
    assert rows["test_convnet", "pow2 5"][5] == "8×UINT8 indices + codebook"  # no 5-bit ONNX type
    assert rows["test_convnet", "sparse 0.8 + pow2 4"][5] == "8×sparse UINT4 indices + codebook + bitmap"
    assert rows["test_convnet", "sparse 0.8 + share 4"][5].endswith("indices + codebook + bitmap")
