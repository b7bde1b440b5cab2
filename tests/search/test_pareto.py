"""Pareto set, exact hypervolume (against brute force), knee point, QoM and the report schema."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest

from autocompress.search import pareto
from autocompress.search.pareto import (
    hypervolume,
    knee_index,
    non_dominated_mask,
    normalise,
    pareto_report,
    qom,
    to_losses,
)

pytestmark = pytest.mark.timeout(120)


def brute_non_dominated(points: np.ndarray) -> np.ndarray:
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i, j in itertools.permutations(range(n), 2):
        a, b = points[j], points[i]
        if all(a <= b) and any(a < b):
            keep[i] = False
    return keep


def brute_hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact: split the box into the grid of all coordinates; sum the cells some point dominates."""
    pts = points[np.all(points < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    axes = [np.unique(np.concatenate([pts[:, d], [ref[d]]])) for d in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[d][c] for d, c in enumerate(cell)])
        hi = np.array([axes[d][c + 1] for d, c in enumerate(cell)])
        if np.any(np.all(pts <= lo, axis=1)):
            total += float(np.prod(hi - lo))
    return total


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_non_dominated_and_hypervolume_match_brute_force(dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 14 if dim == 3 else 30
    pts = rng.uniform(0, 1, size=(n, dim))
    if seed % 2:  # ties and duplicates
        pts = np.round(pts, 1)
        pts[3] = pts[4]
    np.testing.assert_array_equal(non_dominated_mask(pts), brute_non_dominated(pts))
    ref = np.ones(dim) * 1.05
    assert hypervolume(pts, ref) == pytest.approx(brute_hypervolume(pts, ref), rel=1e-12, abs=1e-12)


def test_hypervolume_known_values_and_edge_cases() -> None:
    assert hypervolume(np.array([[0.5, 0.5]])) == pytest.approx(0.25)
    # two boxes 0.5x1 and 1x0.5 overlap in 0.25: union 0.75
    assert hypervolume(np.array([[0.5, 0.0], [0.0, 0.5]])) == pytest.approx(0.75)
    assert hypervolume(np.array([[0.0, 0.0, 0.0]])) == pytest.approx(1.0)
    assert hypervolume(np.zeros((0, 2))) == 0.0
    # points outside the reference box add nothing; a dominated point adds nothing
    assert hypervolume(np.array([[1.2, 0.1], [0.5, 0.5], [0.6, 0.6]])) == pytest.approx(0.25)
    # 1-D and 4-D go through the same exact recursion
    assert hypervolume(np.array([[0.25], [0.5]])) == pytest.approx(0.75)
    four = np.random.default_rng(0).uniform(0, 1, (6, 4))
    assert hypervolume(four) == pytest.approx(brute_hypervolume(four, np.ones(4)))


def test_normalise_against_base_and_directions() -> None:
    values = np.array([[0.9, 50.0], [0.45, 25.0]])
    losses = normalise(values, ["maximize", "minimize"], base=[0.9, 100.0])
    np.testing.assert_allclose(losses, [[0.0, 0.5], [0.5, 0.25]])
    # the base model itself sits at the reference corner's edge: zero hypervolume
    assert hypervolume(normalise([[0.9, 100.0]], ["maximize", "minimize"], base=[0.9, 100.0])) == 0.0
    np.testing.assert_allclose(to_losses([[1.0, 2.0]], ["maximize", "minimize"]), [[-1.0, 2.0]])
    with pytest.raises(ValueError, match="direction"):
        to_losses([[1.0]], ["upwards"])


def test_knee_of_a_convex_front() -> None:
    # losses on a front with an obvious corner at (0.1, 0.1)
    front = np.array([[0.0, 1.0], [0.05, 0.4], [0.1, 0.1], [0.4, 0.05], [1.0, 0.0]])
    assert knee_index(front) == 2
    assert knee_index(np.zeros((0, 2))) is None
    assert knee_index(np.array([[0.3, 0.3]])) == 0
    # a straight line has no knee: falls back to the point nearest the ideal corner
    line = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert knee_index(line) == 1


def test_qom_is_survey_eq15_with_alpha_beta_half() -> None:
    q = qom([0.9, 0.8], [100.0, 50.0])
    np.testing.assert_allclose(q, [0.5 * 0.9 + 0.5 * 0.0, 0.5 * 0.8 + 0.5 * 0.5])
    q = qom([1.0], [0.0], max_params=10.0)
    assert q[0] == pytest.approx(1.0)


def test_pareto_report_schema() -> None:
    base = {"acc": 0.9, "macs": 100.0, "params": 1000.0}
    cands = [
        {"id": i, "policy": {"p": i}, "metrics": {"acc": a, "macs": m, "params": p}}
        for i, (a, m, p) in enumerate([(0.88, 50, 500), (0.8, 30, 300), (0.7, 40, 400), (0.85, 45, 450)])
    ]
    rep = pareto_report(cands, [("acc", "maximize"), ("macs", "minimize")], base_metrics=base)
    assert rep["schema_version"] == pareto.PARETO_SCHEMA_VERSION
    ids = [p["id"] for p in rep["points"]]
    assert ids == [0, 3, 1]  # (0.7, 40) is dominated by (0.8, 30); sorted by acc, best first
    assert rep["knee"] in ids
    assert sum(p["knee"] for p in rep["points"]) == 1
    assert rep["reference"]["point"] == [1.0, 1.0]
    assert rep["reference"]["normalisation"] == "base"
    losses = normalise([[c["metrics"]["acc"], c["metrics"]["macs"]] for c in cands],
                       ["maximize", "minimize"], base=[0.9, 100.0])
    assert rep["hypervolume"] == pytest.approx(hypervolume(losses))
    for p in rep["points"]:
        assert set(p) >= {"id", "policy", "metrics", "qom", "normalised"}
        assert p["qom"] == pytest.approx(0.5 * p["metrics"]["acc"] + 0.5 * (1 - p["metrics"]["params"] / 1000.0))
    empty = pareto_report([], [("acc", "maximize"), ("macs", "minimize")], base_metrics=base)
    assert empty["points"] == [] and empty["hypervolume"] == 0.0 and empty["knee"] is None


def test_pareto_module_imports_no_torch() -> None:
    tree = ast.parse(Path(pareto.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in imported and imported <= {"__future__", "collections", "typing", "numpy"}
