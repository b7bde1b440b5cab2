"""Reports of a search run: Pareto plots and tables, per-point views, export and fine-tuning.

Public surface::

    from autocompress.report import write_report, show_point, export_point, finetune_point
    paths = write_report("runs/NAME")                  # RUN/pareto.png, RUN/pareto.html, .table
    table, png = show_point("runs/NAME", 7)            # per-layer policy table and bar chart
    info = export_point("runs/NAME", 7, "onnx", "m.onnx")   # checked against PyTorch; int8 too
    result = finetune_point("runs/NAME", 7, epochs=3)  # KD fine-tune, recorded in RUN/finetune/
    results = finetune_front("runs/NAME", top=3)       # the 3 best front points, same schedule
    run = load_run("runs/NAME")                        # spec, trials, front (validated)
    model = load_finetuned(run, run.point(7), latest_finetune(run.path, 7))  # weights-only load

Run files are validated as they are read (``load_run``, ``read_pareto``): a damaged file is a
one-line ``UserInputError``; every file a report writes is replaced atomically.

Export and fine-tuning (torch, ONNX Runtime) load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from autocompress.report.plots import (
    ReportPaths,
    pareto_html,
    pareto_png,
    policy_png,
    show_point,
    write_report,
)
from autocompress.report.run import load_run
from autocompress.report.tables import format_metric, front_table, policy_table
from autocompress.rundir import Candidate, RunRecord, read_pareto, resolve_point

_LAZY: dict[str, str] = {
    "ExportInfo": "autocompress.report.export",
    "ExportMismatchError": "autocompress.report.export",
    "FORMATS": "autocompress.report.export",
    "export_point": "autocompress.report.export",
    "FinetuneResult": "autocompress.report.finetune",
    "finetune_point": "autocompress.report.finetune",
    "finetune_front": "autocompress.report.finetune",
    "latest_finetune": "autocompress.report.finetune",
    "load_finetuned": "autocompress.report.finetune",
}

__all__ = [
    "FORMATS",
    "Candidate",
    "ExportInfo",
    "ExportMismatchError",
    "FinetuneResult",
    "ReportPaths",
    "RunRecord",
    "export_point",
    "finetune_front",
    "finetune_point",
    "format_metric",
    "front_table",
    "latest_finetune",
    "load_finetuned",
    "load_run",
    "pareto_html",
    "pareto_png",
    "policy_png",
    "policy_table",
    "read_pareto",
    "resolve_point",
    "show_point",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
