"""A search run as the report sees it: ``load_run`` reads the run directory through
``autocompress.rundir`` with compression policies, and ``layer_order`` orders a model's layers.

Every run file is read and checked in ``autocompress.rundir`` (``read_run``, ``read_pareto``,
``resolve_point``, ``latest_finetune``): an empty, truncated or malformed file is a one-line
``UserInputError``, a torn last line of ``trials.jsonl`` (a killed search) is skipped with a
warning, and a front point the log does not hold is refused. The names below are re-exported
so that ``report`` callers keep one place to import them from.
"""

from __future__ import annotations

from pathlib import Path

from autocompress.compression.policy import read_policy  # noqa: F401 - re-exported
from autocompress.rundir import (  # noqa: F401 - the reading side of the run directory, re-exported
    COST_METRICS,
    MAXIMIZED,
    POINT_ALIASES,
    Candidate,
    RunRecord,
    finetune_record_files,
    latest_finetune,
    parse_budget_value,
    read_pareto,
    read_run,
    resolve_point,
    safe_point_name,
)


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``RUN/spec.json``, ``RUN/trials.jsonl`` and ``RUN/pareto.json`` (``rundir.read_run``
    with compression policies).

    A missing directory or ``pareto.json``, and an empty, truncated or malformed run file are
    user errors saying what is wrong. A torn last line of ``trials.jsonl`` (a killed search) is
    skipped with a warning (``RunRecord.warnings``); a front point that the log does not hold is
    an error.
    """
    return read_run(run_dir, read_policy)


def layer_order(run: RunRecord) -> list[str] | None:
    """Module names of the run's model in definition order (for per-layer tables and charts).

    Builds the architecture only (random init, nothing loaded); None when it cannot be built, in
    which case callers fall back to a natural sort of the layer names.
    """
    name = run.spec.get("model")
    if not isinstance(name, str):
        return None
    try:
        from autocompress.models import create_model

        model = create_model(name, num_classes=int(run.spec.get("num_classes", 10) or 10))
    except Exception:  # noqa: BLE001 - ordering is cosmetic; never fail a report over it
        return None
    return [n for n, _ in model.named_modules() if n]
