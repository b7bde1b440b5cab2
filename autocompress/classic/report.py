"""Tables for classic runs (``search``, ``report``, ``show`` print these)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def classic_front_table(spec: Mapping[str, Any], pareto: Mapping[str, Any]) -> Any:
    """The Pareto front as a rich table: base row, then each point (``*`` = knee)."""
    from rich.table import Table

    base = spec.get("base_metrics", {})
    table = Table(title=f"Pareto front: {spec['model']} on {spec['data']} ({pareto.get('strategy')})",
                  caption=f"{len(pareto['points'])} Pareto points of {pareto.get('n_evaluated')} "
                          f"evaluated candidates; hypervolume {pareto.get('hypervolume', 0):.4f}; * = knee")
    for col in ("point", "val acc", "test acc", "bytes", "vs base", "nodes", "setting"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    table.add_row("base", f"{100 * base.get('acc', 0):.2f}%", f"{100 * spec.get('base_test_acc', 0):.2f}%",
                  f"{base.get('size_bytes', 0):.0f}", "1.00x", f"{base.get('params', 0):.0f}",
                  "uncompressed (float32)")
    for p in pareto["points"]:
        m = p["metrics"]
        table.add_row(f"{p['id']}{' *' if p.get('knee') else ''}", f"{100 * m['acc']:.2f}%",
                      f"{100 * p.get('test_acc', 0):.2f}%", f"{m['size_bytes']:.0f}",
                      f"{m['size_bytes'] / max(1.0, base.get('size_bytes', 1.0)):.2f}x",
                      f"{m['params']:.0f}", p.get("setting", ""))
    return table


def classic_point_lines(spec: Mapping[str, Any], point: Mapping[str, Any]) -> list[str]:
    """A front point's setting and measured metrics."""
    m = point["metrics"]
    base = spec.get("base_metrics", {})
    return [f"point {point['id']}: {point.get('setting', '')}",
            f"val acc {100 * m['acc']:.2f}% (base {100 * base.get('acc', 0):.2f}%); test acc "
            f"{100 * point.get('test_acc', 0):.2f}% (base {100 * spec.get('base_test_acc', 0):.2f}%)",
            f"artefact {m['size_bytes']:.0f} B (base {base.get('size_bytes', 0):.0f} B); nodes "
            f"{m['params']:.0f}; comparisons/sample {m['macs']:.0f}; latency "
            f"{1e3 * m['latency_ms']:.2f} us/sample (batched, measured)",
            f"artefact file: {point.get('artefact')}"]
