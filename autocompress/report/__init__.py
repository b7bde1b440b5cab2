"""Reports of a search run: Pareto plots and tables, per-point views, export and fine-tuning."""

from __future__ import annotations

from autocompress.report.plots import (
    ReportPaths,
    pareto_html,
    pareto_png,
    policy_png,
    show_point,
    write_report,
)
from autocompress.report.run import Candidate, RunRecord, load_run
from autocompress.report.tables import format_metric, front_table, policy_table

__all__ = [
    "Candidate",
    "ReportPaths",
    "RunRecord",
    "format_metric",
    "front_table",
    "load_run",
    "pareto_html",
    "pareto_png",
    "policy_png",
    "policy_table",
    "show_point",
    "write_report",
]
