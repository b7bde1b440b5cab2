"""The latency table's measurement plan (which cells are timed, at which grids) and interpolation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.evaluators._lut_layers import _Layer, _removed
from autocompress.evaluators._standalone import _channels, _Profiler, _rnn_factorised

if TYPE_CHECKING:
    from autocompress.compression import CompressionSpace


def _interp_axis(grid: Sequence[float], x: float) -> tuple[int, int, float]:
    """Indices (i, j) bracketing ``x`` in ``grid`` and the weight of ``j`` (clamped at the ends)."""
    if len(grid) == 1 or x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        last = len(grid) - 1
        return last, last, 0.0
    j = int(np.searchsorted(grid, x))
    i = j - 1
    return i, j, (x - grid[i]) / (grid[j] - grid[i])


def _interp2(gx: Sequence[float], gy: Sequence[float], table: Sequence[Sequence[float]],
             x: float, y: float) -> float:
    i0, i1, wx = _interp_axis(gx, x)
    j0, j1, wy = _interp_axis(gy, y)
    top = table[i0][j0] * (1 - wy) + table[i0][j1] * wy
    bot = table[i1][j0] * (1 - wy) + table[i1][j1] * wy
    return top * (1 - wx) + bot * wx


def _interp3(gx: Sequence[float], gy: Sequence[float], gz: Sequence[float],
             cube: Sequence[Sequence[Sequence[float]]], x: float, y: float, z: float) -> float:
    i0, i1, wx = _interp_axis(gx, x)
    lo = _interp2(gy, gz, cube[i0], y, z)
    return lo if wx == 0.0 else lo * (1 - wx) + _interp2(gy, gz, cube[i1], y, z) * wx



def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust line fit: median of pairwise slopes, then median intercept.

    One timing disturbed by a busy neighbour must not tilt the line (least squares would).
    """
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    ok = np.abs(dx) > 1e-12
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
    return slope, float(np.median(y - slope * x))



def _plan(layers: list[_Layer], space: CompressionSpace, keep_points: int,
          rank_points: int) -> list[list[Any]]:
    """Grids of each layer, and one profiling job per table cell (run later, with progress)."""
    from autocompress.compression.lowrank import factorised_rank

    knobs = {p.name: p.knobs for p in space.decision_points}

    def width_grid(sources: dict[str, list[list[float]]], full: int) -> list[float]:
        # the widths every source reaches at the same grid index: exact, achievable widths
        if not sources:
            return [1.0]
        n = len(next(iter(sources.values()))[0])
        return sorted({(full - _removed(sources, None, k)) / full for k in range(n)})

    jobs: list[list[Any]] = []
    for lay in layers:
        s = lay.spec
        dw = lay.depthwise
        fixed_groups = s.get("groups", 1) if (s["kind"] == "conv" and not dw) else 1
        lay.in_grid = width_grid(lay.in_sources, s["cin"])
        lay.out_grid = [1.0] if dw else width_grid(lay.out_sources, s["cout"])
        in_min, out_min = lay.in_grid[0], (lay.in_grid[0] if dw else lay.out_grid[0])
        lay.table = [[math.nan] * len(lay.out_grid) for _ in lay.in_grid]
        cells: list[Any] = []

        def main_cell(i: int, j: int, lay: _Layer = lay, dw: bool = dw, g: int = fixed_groups) -> Any:
            s = lay.spec
            cin = _channels(s["cin"], lay.in_grid[i], g)
            cout = cin if dw else _channels(s["cout"], lay.out_grid[j], g)
            groups = cin if dw else g

            def run(prof: _Profiler) -> None:
                key = {"spec": s, "cin": cin, "cout": cout, "groups": groups, "part": "main"}
                lay.table[i][j] = prof.entry(key, s, cin, cout, groups=groups)

            return run

        for i in range(len(lay.in_grid)):
            for j in range(len(lay.out_grid)):
                cells.append(main_cell(i, j))

        rank_knob = knobs.get(lay.rank_point or "", {}).get(lay.rank_knob) if lay.rank_point else None
        if rank_knob is not None and s["kind"] == "rnn":
            cells += _plan_rnn_rank(lay, float(rank_knob.most_compressed), rank_points)
        elif rank_knob is not None and not dw and fixed_groups == 1:
            per_out = int(np.prod(s["kernel"])) if s["kind"] == "conv" else 1
            m, n = s["cout"], s["cin"] * per_out
            lo = float(rank_knob.most_compressed)
            r_lo = factorised_rank(max(1, round(m * out_min)), max(1, round(s["cin"] * in_min)) * per_out, lo) or 1
            r_hi = max(r_lo, int(m * n / (m + n)))
            lay.r_grid = sorted({int(round(v)) for v in np.linspace(r_lo, r_hi, rank_points)})
            lay.first = [[math.nan] * len(lay.r_grid) for _ in lay.in_grid]
            lay.second = [[math.nan] * len(lay.out_grid) for _ in lay.r_grid]

            def first_cell(i: int, k: int, lay: _Layer = lay) -> Any:
                s = lay.spec
                cin, r = _channels(s["cin"], lay.in_grid[i]), lay.r_grid[k]

                def run(prof: _Profiler) -> None:
                    key = {"spec": s, "cin": cin, "cout": r, "part": "first"}
                    lay.first[i][k] = prof.entry(key, s, cin, r, bias=False, bn=False, act=False)

                return run

            def second_cell(k: int, j: int, lay: _Layer = lay) -> Any:
                s = lay.spec
                r, cout = lay.r_grid[k], _channels(s["cout"], lay.out_grid[j])

                def run(prof: _Profiler) -> None:
                    key = {"spec": s, "cin": r, "cout": cout, "part": "second"}
                    lay.second[k][j] = prof.entry(key, s, r, cout, kernel_one=True)

                return run

            for i in range(len(lay.in_grid)):
                for k in range(len(lay.r_grid)):
                    cells.append(first_cell(i, k))
            for k in range(len(lay.r_grid)):
                for j in range(len(lay.out_grid)):
                    cells.append(second_cell(k, j))
        jobs.append(cells)
    return jobs



def _plan_rnn_rank(lay: _Layer, lowest: float, rank_points: int) -> list[Any]:
    """Cells of a recurrent layer's factorised entries: fractions of its rank knob (``rank`` or
    ``proj_rank``) from ``lowest`` up to the largest that still factorises a matrix at full
    width, at the extreme widths of each side.

    A factorised recurrent module runs its steps as separate nodes (``LowRankRNN``), not as one
    fused node, so its latency is not the sum of its factors' matrix products: each entry times
    the whole module, keyed by the ranks it keeps (fractions keeping the same ranks share one).
    """
    s, knob = lay.spec, lay.rank_knob
    grid = np.linspace(lowest, 1.0, 101)[:-1]
    factorising = [float(f) for f in grid
                   if _rnn_factorised(s, knob, s["cin"], s["cout"], float(f)) is not None]
    if not factorising:
        return []
    top = max(factorising)
    lay.f_grid = sorted({round(float(v), 6) for v in np.linspace(lowest, top, max(rank_points, 2))})
    lay.lr_in = sorted({lay.in_grid[0], lay.in_grid[-1]})
    lay.lr_out = sorted({lay.out_grid[0], lay.out_grid[-1]})
    lay.lowrank = [[[math.nan] * len(lay.f_grid) for _ in lay.lr_out] for _ in lay.lr_in]

    def cell(i: int, j: int, k: int) -> Any:
        cin, h = _channels(s["cin"], lay.lr_in[i]), _channels(s["cout"], lay.lr_out[j])
        f = lay.f_grid[k]

        def run(prof: _Profiler) -> None:
            # Only factorised modules are predicted from here; where ``f`` factorises nothing at
            # these widths, the largest fraction below it that does stands in (the step down
            # to the fused dense module is not interpolated across).
            g = f
            while g > lowest and _rnn_factorised(s, knob, cin, h, g) is None:
                g = max(lowest, g - 0.5 / max(h, cin))
            ranks = _rnn_factorised(s, knob, cin, h, g)
            if ranks is None:  # nothing factorises at these widths: the dense module
                key = {"spec": s, "cin": cin, "cout": h, "groups": 1, "part": "main"}
                lay.lowrank[i][j][k] = prof.entry(key, s, cin, h, groups=1)
            else:
                key = {"spec": s, "cin": cin, "cout": h, "ranks": ranks, "part": knob}
                lay.lowrank[i][j][k] = prof.entry(key, s, cin, h, rank=g, rank_knob=knob)

        return run

    return [cell(i, j, k) for i in range(len(lay.lr_in)) for j in range(len(lay.lr_out))
            for k in range(len(lay.f_grid))]
