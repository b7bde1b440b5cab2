"""Terminal tables of a run: the Pareto front, one point's per-layer policy, and metric formatting."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.table import Table

from autocompress.compression import CompressionPolicy
from autocompress.compression.knobs import KNOB_TYPES
from autocompress.metrics import VOCABULARY, format_value

if TYPE_CHECKING:
    from autocompress.rundir import Candidate, RunRecord

#: Column headers (``autocompress.metrics.VOCABULARY`` labels), so no number is shown without
#: saying what it counts.
METRIC_LABELS: dict[str, str] = {name: m.label for name, m in VOCABULARY.items()}
#: Order of metric columns in every table.
METRIC_ORDER: tuple[str, ...] = tuple(METRIC_LABELS)


def format_metric(name: str, value: float | None) -> str:
    """A metric value with its unit: ``98.61%``, ``12.30M``, ``1.230 ms``, ``45.2 KiB``."""
    return format_value(name, value)


def metric_names(candidates: Sequence[Candidate], base: Mapping[str, float] | None = None) -> list[str]:
    """Metric names present in any candidate, in the fixed table order, unknown ones last."""
    seen: set[str] = set(base or {})
    for c in candidates:
        seen.update(c.metrics)
    known = [m for m in METRIC_ORDER if m in seen]
    return known + sorted(seen - set(known))


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def policy_summary(policy: CompressionPolicy) -> str:
    """One short line: mean prune ratio and the bit-widths / ranks used."""
    acts = list(policy.layers.values())
    if not acts:
        return "identity"
    parts = [f"prune {sum(a.prune for a in acts) / len(acts):.2f} avg"]
    wb = sorted({a.w_bits for a in acts if a.w_bits < 32})
    ab = sorted({a.a_bits for a in acts if a.a_bits < 32})
    if wb:
        parts.append("w" + "/".join(map(str, wb)))
    if ab:
        parts.append("a" + "/".join(map(str, ab)))
    ranks = [a.rank for a in acts if a.rank < 1.0]
    if ranks:
        parts.append(f"rank {min(ranks):.2f}-{max(ranks):.2f} on {len(ranks)}")
    for k, kt in KNOB_TYPES.items():  # the storage knobs: range and count where set
        if k in ("prune", "w_bits", "a_bits", "rank"):
            continue
        vals = [getattr(a, k) for a in acts if getattr(a, k) != kt.identity]
        if vals:
            parts.append(f"{kt.label} {kt.format(min(vals))}-{kt.format(max(vals))} on {len(vals)}")
    return ", ".join(parts)


#: Columns of the front table besides the objectives (the vocabulary's ``front_column`` metrics;
#: top-5, FLOPs and BOPs only when they are objectives: ``show`` prints every metric of a point).
FRONT_COLUMNS: frozenset[str] = frozenset(n for n, m in VOCABULARY.items() if m.front_column)


def front_table(run: RunRecord) -> Table:
    """The Pareto front as a rich table, sorted by the cost objective, with the base model first.

    Columns: the objectives plus top-1, MACs, parameters, size and latency where recorded. The
    knee point is starred; ``QoM`` (quality of model) is shown where the run records it. When
    the data has a held-out test split, ``test top-1`` (the searched model on the whole test
    split) follows the metrics; without one there is no such column.
    """
    cost = run.cost_metric
    names = [m for m in metric_names(run.front, run.base_metrics)
             if m in FRONT_COLUMNS or m in run.objectives]
    hv = run.pareto.get("hypervolume")
    caption = f"{len(run.front)} Pareto points of {run.n_evaluated} evaluated candidates"
    if isinstance(hv, int | float):
        caption += f"; hypervolume {hv:.4f}"
    if run.knee_id is not None:
        caption += "; * = knee"
    table = Table(title=f"Pareto front: {run.path}", caption=caption)
    table.add_column("point", justify="right", style="bold")
    for m in names:
        table.add_column(METRIC_LABELS.get(m, m), justify="right")
    has_test = run.base_test_acc is not None or any(run.test_acc(p) is not None for p in run.front)
    if has_test:
        table.add_column(METRIC_LABELS["test_acc"], justify="right")
    if run.base_metrics.get(cost):
        table.add_column(f"{METRIC_LABELS.get(cost, cost)} vs base", justify="right")
    has_qom = any("qom" in p.extra or "qom" in p.metrics for p in run.front)
    if has_qom:
        table.add_column("QoM", justify="right")
    table.add_column("policy")
    if run.base_metrics:
        row = ["base"] + [format_metric(m, run.base_metrics.get(m)) for m in names]
        if has_test:
            row.append(format_metric("test_acc", run.base_test_acc))
        if run.base_metrics.get(cost):
            row.append("1.00x")
        if has_qom:
            row.append("")
        row.append("uncompressed")
        table.add_row(*row, style="dim")
    for p in sorted(run.front, key=lambda c: (c.metrics.get(cost, math.inf), c.id)):
        label = p.id + (" *" if p.id == run.knee_id else "")
        row = [label] + [format_metric(m, p.metrics.get(m)) for m in names]
        if has_test:
            row.append(format_metric("test_acc", run.test_acc(p)))
        if run.base_metrics.get(cost):
            v = p.metrics.get(cost)
            row.append(f"{v / run.base_metrics[cost]:.2f}x" if v is not None else "-")
        if has_qom:
            q = p.extra.get("qom", p.metrics.get("qom"))
            row.append(f"{q:.3f}" if isinstance(q, int | float) else "-")
        row.append(policy_summary(p.policy))
        table.add_row(*row)
    return table


def _rec_float(rec: Mapping[str, object], key: str) -> float | None:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def finetune_table(run: RunRecord) -> Table | None:
    """The proxy front next to the fine-tuned one: one row per fine-tuned front point.

    Columns: the cost, the accuracy the search scored (``proxy``: after BN recalibration and its
    short fine-tune), val top-1 before and after fine-tuning (latest record of the point), and,
    when the data has a held-out test split, test top-1 before and after. None when no front
    point has been fine-tuned.
    """
    if not run.finetuned:
        return None
    cost, q = run.cost_metric, run.quality_metric
    has_test = any(_rec_float(r, "test_before") is not None for r in run.finetuned.values())
    table = Table(title=f"Fine-tuned front: {run.path}",
                  caption=f"{len(run.finetuned)} of {len(run.front)} front points fine-tuned "
                          "(latest record of each, RUN/finetune/)")
    table.add_column("point", justify="right", style="bold")
    table.add_column(METRIC_LABELS.get(cost, cost), justify="right")
    table.add_column(f"proxy {METRIC_LABELS.get(q, q)}", justify="right")
    table.add_column("val before", justify="right")
    table.add_column("val after", justify="right")
    if has_test:
        table.add_column("test before", justify="right")
        table.add_column("test after", justify="right")
    table.add_column("epochs", justify="right")
    for p in run.by_proxy_rank():
        rec = run.finetuned.get(p.id)
        if rec is None:
            continue
        row = [p.id + (" *" if p.id == run.knee_id else ""), format_metric(cost, p.metrics.get(cost)),
               format_metric(q, p.metrics.get(q)),
               format_metric("acc", _rec_float(rec, "acc_before")),
               format_metric("acc", _rec_float(rec, "acc_after"))]
        if has_test:
            row += [format_metric("test_acc", _rec_float(rec, "test_before")),
                    format_metric("test_acc", _rec_float(rec, "test_after"))]
        epochs = rec.get("epochs")
        row.append(str(epochs) if isinstance(epochs, int) else "-")
        table.add_row(*row)
    return table


def point_notes(run: RunRecord, point: Candidate) -> list[str]:
    """What ``show`` adds to a point's metrics: its test top-1 (searched model; data with a
    held-out test split) and its latest fine-tune (val and test top-1 before -> after)."""
    notes = []
    test = run.test_acc(point)
    if test is not None:
        base = run.base_test_acc
        notes.append(f"test top-1 {format_metric('test_acc', test)}"
                     + (f" (base {format_metric('test_acc', base)})" if base is not None else ""))
    rec = run.finetuned.get(point.id)
    if rec is not None:
        line = (f"fine-tuned ({rec.get('epochs', '?')} epoch(s)): top-1 "
                f"{format_metric('acc', _rec_float(rec, 'acc_before'))} -> "
                f"{format_metric('acc', _rec_float(rec, 'acc_after'))}")
        if _rec_float(rec, "test_before") is not None:
            line += (f", test top-1 {format_metric('test_acc', _rec_float(rec, 'test_before'))} -> "
                     f"{format_metric('test_acc', _rec_float(rec, 'test_after'))}")
        notes.append(line)
    return notes


def ordered_layers(policy: CompressionPolicy, order: Sequence[str] | None = None) -> list[str]:
    """Layer names in model order when ``order`` is known, else in natural-sort order."""
    if order:
        pos = {n: i for i, n in enumerate(order)}
        return sorted(policy.layers, key=lambda n: (pos.get(n, len(pos)), _natural_key(n)))
    return sorted(policy.layers, key=_natural_key)


def policy_table(point: Candidate, *, base: Mapping[str, float] | None = None,
                 order: Sequence[str] | None = None, notes: Sequence[str] = ()) -> Table:
    """One point's per-layer policy (prune ratio, bit-widths, rank) with its metrics as caption;
    ``notes`` (test top-1, fine-tuned accuracy) are appended to the caption."""
    metrics = "; ".join([
        f"{METRIC_LABELS.get(m, m)} {format_metric(m, point.metrics.get(m))}"
        + (f" (base {format_metric(m, base[m])})" if base and m in base else "")
        for m in metric_names([point])
        if m in point.metrics
    ] + list(notes))
    table = Table(title=f"point {point.id}: per-layer policy", caption=metrics)
    acts = list(point.policy.layers.values())
    # One column per knob type some layer uses (e.g. no bits in a pruning-only search), shown as
    # the knob registry says; both bit-widths together; prune (and kept share) when nothing is set.
    used = {k for k, kt in KNOB_TYPES.items() if any(getattr(a, k) != kt.identity for a in acts)}
    if used & {"w_bits", "a_bits"}:
        used |= {"w_bits", "a_bits"}
    if not used - {"prune"}:
        used.add("prune")
    columns = [k for k in KNOB_TYPES if k in used]
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    for k in columns:
        table.add_column(KNOB_TYPES[k].label, justify="right")
        if k == "prune":
            table.add_column("kept", justify="right")
    for i, name in enumerate(ordered_layers(point.policy, order)):
        a = point.policy[name]
        row = [str(i), name]
        for k in columns:
            row.append(KNOB_TYPES[k].format(getattr(a, k)))
            if k == "prune":
                row.append(f"{1.0 - a.prune:.0%}")
        table.add_row(*row)
    return table
