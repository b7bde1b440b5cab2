"""Reading a classic-ML run directory (``autocompress search --model sklearn:...``).

A classic run writes ``spec.json`` (``"kind": "classic"``) and ``pareto.json`` as plain JSON
objects (``classic.search``); ``report``, ``show`` and ``export`` read them here, as dicts, so
this package stays below ``classic`` and knows none of its types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocompress.errors import UserInputError
from autocompress.rundir._files import PARETO_FILE, SPEC_FILE

#: ``spec.json``'s ``kind`` of a classic-ML run.
CLASSIC_KIND = "classic"


def read_classic_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(spec.json, pareto.json)`` of a classic run, None when ``run_dir`` is not one."""
    run = Path(run_dir)
    try:
        spec = json.loads((run / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict) or spec.get("kind") != CLASSIC_KIND:
        return None
    try:
        pareto = json.loads((run / PARETO_FILE).read_text())
    except (OSError, ValueError):
        raise UserInputError(f"{str(run)!r} holds no pareto.json; the search did not finish") from None
    return spec, pareto


def resolve_classic_point(pareto: Mapping[str, Any], point: str) -> dict[str, Any]:
    """The front point named by an id, ``knee`` or ``best`` (highest validation accuracy)."""
    points = list(pareto.get("points", []))
    if not points:
        raise UserInputError("the run has no Pareto points (no feasible candidate)")
    if point == "knee":
        want = pareto.get("knee")
    elif point == "best":
        want = max(points, key=lambda p: (p["metrics"]["acc"], -p["metrics"]["size_bytes"]))["id"]
    else:
        try:
            want = int(point)
        except ValueError:
            raise UserInputError(f"--point {point!r}; allowed: a front point id, knee, best") from None
    for p in points:
        if p["id"] == want:
            return dict(p)
    raise UserInputError(f"--point {point!r} is not on the front; front ids: "
                         f"{', '.join(str(p['id']) for p in points)}")
