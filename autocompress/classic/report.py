"""Tables for classic runs (``search``, ``report``, ``show`` print these)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def classic_front_table(spec: Mapping[str, Any], pareto: Mapping[str, Any]) -> Any:
    """The Pareto front as a rich table: base row, then each point (``*`` = knee)."""
    from rich.table import Table

    base = spec.get("base_metrics", {})
    q = _quality(spec)
    table = Table(title=f"Pareto front: {spec['model']} on {spec['data']} ({pareto.get('strategy')})",
                  caption=f"{len(pareto['points'])} Pareto points of {pareto.get('n_evaluated')} "
                          f"evaluated candidates; hypervolume {pareto.get('hypervolume', 0):.4f}; * = knee")
    names = ("val R²", "test R²") if spec.get("task") == "regression" else ("val acc", "test acc")
    for col in ("point", *names, "bytes", "vs base", "params", "setting"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    table.add_row("base", q(base.get("acc", 0)), q(spec.get("base_test_acc", 0)),
                  f"{base.get('size_bytes', 0):.0f}", "1.00x", f"{base.get('params', 0):.0f}",
                  "uncompressed (float32)")
    for p in pareto["points"]:
        m = p["metrics"]
        table.add_row(f"{p['id']}{' *' if p.get('knee') else ''}", q(m["acc"]),
                      q(p.get("test_acc", 0)), f"{m['size_bytes']:.0f}",
                      f"{m['size_bytes'] / max(1.0, base.get('size_bytes', 1.0)):.2f}x",
                      f"{m['params']:.0f}", p.get("setting", ""))
    return table


def _quality(spec: Mapping[str, Any]) -> Any:
    """Formats the quality metric: accuracy in percent, R² as a number."""
    if spec.get("task") == "regression":
        return lambda v: f"{v:.4f}"
    return lambda v: f"{100 * v:.2f}%"


def classic_point_lines(spec: Mapping[str, Any], point: Mapping[str, Any]) -> list[str]:
    """A front point's setting and measured metrics."""
    m = point["metrics"]
    base = spec.get("base_metrics", {})
    q = _quality(spec)
    name = "R²" if spec.get("task") == "regression" else "acc"
    return [f"point {point['id']}: {point.get('setting', '')}",
            f"val {name} {q(m['acc'])} (base {q(base.get('acc', 0))}); test {name} "
            f"{q(point.get('test_acc', 0))} (base {q(spec.get('base_test_acc', 0))})",
            f"artefact {m['size_bytes']:.0f} B (base {base.get('size_bytes', 0):.0f} B); params "
            f"{m['params']:.0f} (nodes, or stored numbers); comparisons or multiply-adds/sample "
            f"{m['macs']:.0f}; latency "
            f"{1e3 * m['latency_ms']:.2f} us/sample (batched, measured)",
            f"artefact file: {point.get('artefact')}"]
