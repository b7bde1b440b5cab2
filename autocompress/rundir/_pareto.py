"""``pareto.json`` read on its own: checked for shape (``read_pareto``), and the point that
``--point knee|best|ID`` names (``resolve_point``), for ``show``, ``export`` and ``finetune``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocompress.errors import UserInputError
from autocompress.rundir._files import PARETO_FILE, read_json


def read_pareto(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/pareto.json`` checked for shape: a JSON object whose ``points`` is a list of objects.

    ``show``, ``export`` and ``finetune`` resolve ``--point knee|best`` through it, so a missing,
    empty, truncated or hand-broken file is a one-line ``UserInputError`` rather than a traceback.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise UserInputError(f"run directory {str(path)!r} does not exist")
    file = path / PARETO_FILE
    if not file.is_file():
        raise UserInputError(
            f"{str(path)!r} has no pareto.json: not a finished search run "
            "(run `autocompress search --out DIR` first)"
        )
    pareto = read_json(file, "the Pareto front (re-run the search with the same --out to rewrite it)")
    if not isinstance(pareto, Mapping):
        raise UserInputError(f"{str(file)!r} does not hold a JSON object")
    points = pareto.get("points", pareto.get("front", []))
    if points is None:
        points = []
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise UserInputError(f"{str(file)!r}: 'points' must be a list of objects")
    for i, p in enumerate(points):
        if p.get("policy") is None:
            raise UserInputError(f"{str(file)!r}: point #{i} ({p.get('id', '?')!r}) has no 'policy'")
        if not isinstance(p.get("metrics") or {}, Mapping):
            raise UserInputError(f"{str(file)!r}: point #{i} ({p.get('id', '?')!r}) has no metrics object")
    return dict(pareto)


POINT_ALIASES: tuple[str, ...] = ("knee", "best")


def resolve_point(run_dir: str | Path, point: str | int) -> str:
    """The point id meant by ``point``: ``knee``, ``best`` (highest accuracy on the front) or an id.

    Ids are returned as given (``RunRecord.point`` checks them); the aliases need the front, read
    through ``read_pareto`` (so a broken ``pareto.json`` is a one-line error).
    """
    key = str(point).strip()
    if key not in POINT_ALIASES:
        return key
    pareto = read_pareto(run_dir)
    points = pareto.get("points", pareto.get("front")) or []
    if not points:
        raise UserInputError(f"--point {key}: the Pareto front of {str(run_dir)!r} is empty")
    if key == "knee":
        knee = pareto.get("knee")
        if isinstance(knee, Mapping):
            knee = knee.get("id")
        if knee is not None:
            return str(knee)

    def acc(p: Mapping[str, Any]) -> float:
        v = (p.get("metrics") or {}).get("acc")
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) \
            else -math.inf

    best = max(points, key=acc)
    if "id" not in best:
        raise UserInputError(f"{str(Path(run_dir) / 'pareto.json')!r}: the front's points have no 'id'")
    return str(best["id"])
