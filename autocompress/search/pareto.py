"""Pareto fronts, exact hypervolume, knee point and QoM: pure NumPy (no torch import).

Conventions (one boundary, as in Optuna's ``_normalize_value``): every objective is turned into a
*loss* to minimise by :func:`normalise`; everything after that works on losses only.

Normalisation and reference point (documented once, used everywhere):
    With base-model values ``b`` (the uncompressed model) each objective value ``v`` becomes

    * maximised metric (``acc``):  ``loss = 1 - v / b``   (0 = as good as the base, 1 = zero)
    * minimised metric (``macs``): ``loss = v / b``       (1 = as costly as the base, 0 = free)

    and the hypervolume reference point is ``(1, ..., 1)``: zero accuracy and the base model's cost.
    The hypervolume is therefore the fraction of the unit box ``[0, 1]^m`` that the front dominates
    (1.0 = the base accuracy at zero cost), comparable between strategies, seeds and runs of the same
    problem. Points outside the box (e.g. cost above the base) add nothing. Without base values
    (``base=None``) objectives are min-max normalised over the given points instead (reference
    point again ``1``), which is only comparable within one set of points.

QoM (quality of model, Eq. 15 of the compression survey, alpha = beta = 0.5)::

    QoM_i = alpha * acc_i + beta * (1 - params_i / max_params)

with ``acc_i`` as a fraction (the survey writes ``acc_i / 100`` for percentages) and ``max_params``
the largest parameter count among the compared models (the base model included). The survey's
typeset formula reads ``beta * (1 - para_i) / maxpara``; that is a misplaced parenthesis (it would be
negative for every model with more than one parameter, while the text says scores near 1 are best),
so the fraction ``para_i / maxpara`` is what is subtracted from 1 here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Schema version of ``RUN/pareto.json``.
PARETO_SCHEMA_VERSION = 1

MAXIMIZE = "maximize"
MINIMIZE = "minimize"


def _as_matrix(points: Any) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1) if arr.size else arr.reshape(0, 1)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n_points, n_objectives), got shape {arr.shape}")
    return arr


def to_losses(values: Any, directions: Sequence[str]) -> np.ndarray:
    """Flip maximised columns so that every column is minimised (no rescaling)."""
    arr = _as_matrix(values).copy()
    if arr.shape[1] != len(directions):
        raise ValueError(f"{arr.shape[1]} objective columns but {len(directions)} directions")
    for j, d in enumerate(directions):
        if d not in (MAXIMIZE, MINIMIZE):
            raise ValueError(f"direction {d!r}; allowed: {MAXIMIZE}, {MINIMIZE}")
        if d == MAXIMIZE:
            arr[:, j] = -arr[:, j]
    return arr


def normalise(
    values: Any, directions: Sequence[str], base: Sequence[float] | None = None
) -> np.ndarray:
    """Objective values -> losses in the unit box (see the module docstring for the formula).

    Args:
        values: ``(n, m)`` objective values in their natural units.
        directions: ``"maximize"`` / ``"minimize"`` per column.
        base: the base model's value per column; ``None`` = min-max over ``values``.
    """
    arr = _as_matrix(values)
    m = arr.shape[1]
    if len(directions) != m:
        raise ValueError(f"{m} objective columns but {len(directions)} directions")
    out = np.empty_like(arr)
    for j, d in enumerate(directions):
        col = arr[:, j]
        if base is not None:
            b = float(base[j])
            if not np.isfinite(b) or b == 0.0:
                raise ValueError(f"base value of objective {j} is {b!r}; it must be finite and non-zero")
            out[:, j] = 1.0 - col / b if d == MAXIMIZE else col / b
        else:
            lo, hi = (float(col.min()), float(col.max())) if col.size else (0.0, 1.0)
            span = hi - lo if hi > lo else 1.0
            out[:, j] = (hi - col) / span if d == MAXIMIZE else (col - lo) / span
    return out


def non_dominated_mask(losses: Any) -> np.ndarray:
    """Boolean mask of the points no other point dominates (all losses, minimised).

    ``a`` dominates ``b`` when ``a <= b`` in every objective and ``a < b`` in at least one.
    Exact duplicates do not dominate each other, so both stay on the front.
    """
    arr = _as_matrix(losses)
    n = arr.shape[0]
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        le = np.all(arr <= arr[i], axis=1)
        lt = np.any(arr < arr[i], axis=1)
        if np.any(le & lt):
            mask[i] = False
    return mask


def _hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume by a sweep over the first objective (points already inside the box)."""
    if points.shape[0] == 0:
        return 0.0
    order = np.lexsort((points[:, 1], points[:, 0]))
    pts = points[order]
    volume = 0.0
    best_y = ref[1]
    for x, y in pts:
        if y < best_y:
            volume += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(volume)


def _hv_recursive(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume for any dimension by slicing along the last objective (HSO)."""
    m = points.shape[1]
    if points.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _hv_2d(points, ref)
    order = np.argsort(points[:, -1], kind="stable")
    pts = points[order]
    volume = 0.0
    # Between consecutive distinct last-coordinates the dominated (m-1)-D cross-section is fixed:
    # the front of every point whose last coordinate is at or below the slice.
    for i in range(pts.shape[0]):
        z = pts[i, -1]
        z_next = pts[i + 1, -1] if i + 1 < pts.shape[0] else ref[-1]
        depth = z_next - z
        if depth <= 0.0:
            continue
        section = pts[: i + 1, :-1]
        section = section[non_dominated_mask(section)]
        volume += depth * _hv_recursive(section, ref[:-1])
    return float(volume)


def hypervolume(losses: Any, reference: Sequence[float] | None = None) -> float:
    """Exact hypervolume dominated by ``losses`` (minimised) up to ``reference``.

    2-D is a sweep (O(n log n)); 3-D and higher slice along the last objective and recurse (exact,
    fine for the few hundred points of a search). Points not strictly better than the reference in
    every objective contribute nothing. The default reference is ``(1, ..., 1)``, matching
    :func:`normalise`.
    """
    arr = _as_matrix(losses)
    m = arr.shape[1]
    ref = np.ones(m) if reference is None else np.asarray(reference, dtype=float)
    if ref.shape != (m,):
        raise ValueError(f"reference point has {ref.shape} entries, expected {m}")
    if arr.shape[0] == 0:
        return 0.0
    arr = arr[np.all(np.isfinite(arr), axis=1)]
    arr = arr[np.all(arr < ref, axis=1)]
    if arr.shape[0] == 0:
        return 0.0
    arr = arr[non_dominated_mask(arr)]
    return _hv_recursive(arr, ref)


def knee_index(losses: Any) -> int | None:
    """Index of the knee of a front of losses (None for an empty front).

    The front is min-max scaled to ``[0, 1]`` per objective; the knee is the point farthest on the
    good side of the hyperplane through the extreme points (Das 1999; in 2-D the chord between the
    two ends of the front: the point where a small gain in one objective starts to cost much of the
    other). When that plane is undefined (fewer points than objectives, flat fronts) the point
    closest to the ideal corner is taken instead.
    """
    arr = _as_matrix(losses)
    n, m = arr.shape
    if n == 0:
        return None
    if n == 1:
        return 0
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (arr - lo) / span
    extremes = [int(np.argmin(z[:, j])) for j in range(m)]
    fallback = int(np.argmin(np.linalg.norm(z, axis=1)))
    if len(set(extremes)) < m:
        return fallback
    e = z[extremes]
    # Hyperplane through the extremes: w . x = 1 (solve for w); distance below it is the knee score.
    try:
        w = np.linalg.solve(e, np.ones(m))
    except np.linalg.LinAlgError:
        return fallback
    norm = np.linalg.norm(w)
    if not np.isfinite(norm) or norm == 0.0:
        return fallback
    score = (1.0 - z @ w) / norm
    if np.max(score) <= 1e-12:
        return fallback
    return int(np.argmax(score))


def qom(acc: Any, params: Any, *, max_params: float | None = None, alpha: float = 0.5,
        beta: float = 0.5) -> np.ndarray:
    """Quality of model (survey Eq. 15): ``alpha * acc + beta * (1 - params / max_params)``.

    Args:
        acc: top-1 accuracy as a fraction per model.
        params: parameter count per model.
        max_params: the largest parameter count among the compared models (default: ``max(params)``).
    """
    a = np.asarray(acc, dtype=float)
    p = np.asarray(params, dtype=float)
    mp = float(np.max(p)) if max_params is None else float(max_params)
    if mp <= 0:
        raise ValueError(f"max_params={mp!r} must be positive")
    return alpha * a + beta * (1.0 - p / mp)


def pareto_report(
    candidates: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    *,
    base_metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``RUN/pareto.json`` for a list of *feasible* candidates.

    Args:
        candidates: dicts with at least ``id``, ``policy`` and ``metrics`` (already filtered to
            feasible, successfully evaluated, full-fidelity candidates).
        objectives: ``(metric name, direction)`` pairs.
        base_metrics: the uncompressed model's metrics (normalisation, reference point, QoM).
        extra: further top-level fields (spec summary, budgets, counts).

    Returns:
        ``{"schema_version", "objectives", "reference", "hypervolume", "knee", "points", ...}``;
        points are sorted by the first objective, best first.
    """
    names = [n for n, _ in objectives]
    dirs = [d for _, d in objectives]
    usable = [c for c in candidates if all(_finite(c["metrics"].get(n)) for n in names)]
    values = np.array([[float(c["metrics"][n]) for n in names] for c in usable], dtype=float)
    values = values.reshape(len(usable), len(names))
    base_vals: list[float] | None = None
    if base_metrics is not None and all(_finite(base_metrics.get(n)) and float(base_metrics[n]) != 0
                                        for n in names):
        base_vals = [float(base_metrics[n]) for n in names]
    norm = normalise(values, dirs, base_vals)
    mask = non_dominated_mask(norm) if len(usable) else np.zeros(0, dtype=bool)
    front_idx = [i for i in range(len(usable)) if mask[i]]
    front_norm = norm[front_idx] if front_idx else np.zeros((0, len(names)))
    hv = hypervolume(front_norm)
    knee_local = knee_index(front_norm)
    knee_id = usable[front_idx[knee_local]]["id"] if knee_local is not None else None

    qoms: dict[int, float] = {}
    if all("params" in c["metrics"] and _finite(c["metrics"]["params"]) for c in usable) and usable:
        pool = [float(c["metrics"]["params"]) for c in usable]
        if base_metrics is not None and _finite(base_metrics.get("params")):
            pool.append(float(base_metrics["params"]))
        accs = [float(c["metrics"].get("acc", np.nan)) for c in usable]
        q = qom(accs, [float(c["metrics"]["params"]) for c in usable], max_params=max(pool))
        qoms = {i: float(q[i]) for i in range(len(usable)) if np.isfinite(q[i])}

    points = []
    for k, i in enumerate(front_idx):
        c = usable[i]
        points.append({
            "id": c["id"],
            "policy": c["policy"],
            "metrics": dict(c["metrics"]),
            "normalised": [float(v) for v in front_norm[k]],
            "qom": qoms.get(i),
            "knee": c["id"] == knee_id,
            **{k2: v for k2, v in c.items() if k2 not in ("id", "policy", "metrics")},
        })
    first, first_dir = names[0], dirs[0]
    points.sort(key=lambda p: -p["metrics"][first] if first_dir == MAXIMIZE else p["metrics"][first])
    reference = {
        "normalisation": "base" if base_vals is not None else "minmax",
        "base": {n: base_vals[j] for j, n in enumerate(names)} if base_vals is not None else None,
        "point": [1.0] * len(names),
        "description": (
            "losses: 1 - v/base for maximised, v/base for minimised objectives; reference point 1 "
            "(zero accuracy, the base model's cost); hypervolume = dominated fraction of the unit box"
            if base_vals is not None else
            "min-max normalised over the feasible candidates (no base values); reference point 1"
        ),
    }
    report: dict[str, Any] = {
        "schema_version": PARETO_SCHEMA_VERSION,
        "objectives": [{"name": n, "direction": d} for n, d in objectives],
        "reference": reference,
        "hypervolume": hv,
        "knee": knee_id,
        "qom": {"alpha": 0.5, "beta": 0.5,
                "formula": "alpha*acc + beta*(1 - params/max_params), survey Eq. 15"},
        "n_feasible": len(usable),
        "points": points,
    }
    if extra:
        report.update(dict(extra))
    return report


def _finite(v: Any) -> bool:
    try:
        return v is not None and bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False
