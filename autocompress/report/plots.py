"""Pictures of a run: the Pareto plot (PNG and interactive HTML) and one point's per-layer chart.

PNGs are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch, no
display needed); the HTML is plotly with its JavaScript embedded so it opens offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from autocompress.compression.knobs import KNOB_TYPES
from autocompress.metrics import COST_METRICS, VOCABULARY
from autocompress.report.run import layer_order, load_run
from autocompress.report.tables import (
    METRIC_LABELS,
    finetune_table,
    format_metric,
    front_table,
    metric_names,
    ordered_layers,
    point_notes,
    policy_table,
)
from autocompress.rundir import PARETO_HTML, PARETO_PNG, Candidate, RunRecord, atomic_path

_AXIS_LABELS = {n: VOCABULARY[n].axis_label for n in COST_METRICS}


@dataclass(frozen=True)
class ReportPaths:
    """What ``write_report`` produced: the two files, the front's table, the run's warnings and
    the fine-tuned points' table.

    ``warnings`` are ``RunRecord.warnings`` (what was read but not trusted), for the caller to show.
    """

    png: Path
    html: Path
    table: Table
    warnings: tuple[str, ...] = ()
    #: Proxy vs fine-tuned accuracy of the fine-tuned front points (None when none is).
    finetuned: Table | None = None


def _axis_label(metric: str) -> str:
    if metric in ("acc", "acc_top5"):
        return f"{METRIC_LABELS[metric]} accuracy (%)"
    return _AXIS_LABELS.get(metric, metric)


def _y(metric: str, value: float) -> float:
    return 100.0 * value if metric in ("acc", "acc_top5") else value


def _xy(cands: Sequence[Candidate], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for c in cands:
        vx, vy = c.metrics.get(x), c.metrics.get(y)
        if vx is None or vy is None or not (math.isfinite(vx) and math.isfinite(vy)):
            continue
        xs.append(vx)
        ys.append(_y(y, vy))
    return xs, ys


def _use_log(values: Sequence[float]) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 20.0


def _groups(run: RunRecord) -> tuple[list[Candidate], list[Candidate], list[Candidate], list[Candidate]]:
    """(infeasible, low fidelity only, feasible but dominated, front) among evaluated candidates.

    Candidates scored only at low fidelity (not promoted) have a noisier accuracy and are never
    on the front, so they are drawn apart.
    """
    front_ids = set(run.front_ids)
    ok = [t for t in run.trials if t.ok and t.id not in front_ids]
    low = [t for t in ok if t.fidelity == "low"]
    full = [t for t in ok if t.fidelity != "low"]
    infeasible = [t for t in full if not t.feasible]
    feasible = [t for t in full if t.feasible]
    return infeasible, low, feasible, list(run.front)


def finetuned_pairs(run: RunRecord) -> list[tuple[Candidate, float, float, float]]:
    """``(point, cost, proxy y, fine-tuned y)`` of each fine-tuned front point, by cost.

    The y values are on the plot's scale (percent for accuracies); the fine-tuned y is the
    point's val top-1 after fine-tuning, the same split the proxy is scored on.
    """
    x, y = run.cost_metric, run.quality_metric
    if y not in ("acc",):
        return []  # fine-tuning records top-1: drawn only against a top-1 axis
    out = []
    for p in run.front:
        rec = run.finetuned.get(p.id)
        after = rec.get("acc_after") if rec is not None else None
        vx, vy = p.metrics.get(x), p.metrics.get(y)
        if (isinstance(after, int | float) and vx is not None and vy is not None
                and math.isfinite(after) and math.isfinite(vx) and math.isfinite(vy)):
            out.append((p, vx, _y(y, vy), _y(y, float(after))))
    return sorted(out, key=lambda t: (t[1], t[0].id))


def pareto_png(run: RunRecord, path: str | Path) -> Path:
    """Accuracy against the cost objective: every candidate, the front, budgets and the base model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, y = run.cost_metric, run.quality_metric
    infeasible, low, feasible, front = _groups(run)
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_x: list[float] = []
    for cands, style in (
        (infeasible, dict(color="0.7", marker="x", s=18, label=f"infeasible ({len(infeasible)})")),
        (low, dict(color="tab:cyan", marker=".", s=14, alpha=0.5,
                   label=f"low fidelity only ({len(low)})")),
        (feasible, dict(color="tab:blue", marker="o", s=16, alpha=0.55,
                        label=f"feasible ({len(feasible)})")),
    ):
        xs, ys = _xy(cands, x, y)
        all_x += xs
        if xs:
            ax.scatter(xs, ys, **style)
    fx, fy = _xy(sorted(front, key=lambda c: c.metrics.get(x, math.inf)), x, y)
    all_x += fx
    if fx:
        ax.plot(fx, fy, color="tab:red", marker="o", markersize=6, linewidth=1.5, drawstyle="steps-post",
                label=f"Pareto front ({len(fx)})", zorder=3)
        # Label every point of a short front; on a long one only the knee (labels would overlap).
        labelled = front if len(front) <= 20 else [c for c in front if c.id == run.knee_id]
        for c in labelled:
            if c.metrics.get(x) is not None and c.metrics.get(y) is not None:
                ax.annotate(c.id, (c.metrics[x], _y(y, c.metrics[y])), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color="tab:red")
    tuned = finetuned_pairs(run)
    if tuned:
        # The fine-tuned front beside the proxy one: each fine-tuned point with an arrow from
        # the accuracy the search scored to its accuracy after fine-tuning.
        for _, vx, before, after in tuned:
            ax.annotate("", xy=(vx, after), xytext=(vx, before), zorder=3,
                        arrowprops=dict(arrowstyle="->", color="darkorange", lw=1.0, alpha=0.8))
        ax.plot([t[1] for t in tuned], [t[3] for t in tuned], color="darkorange", marker="D",
                markersize=6, linewidth=1.2, linestyle="--",
                label=f"after fine-tuning ({len(tuned)})", zorder=4)
    knee = next((c for c in front if c.id == run.knee_id), None)
    if knee is not None and x in knee.metrics and y in knee.metrics:
        ax.scatter([knee.metrics[x]], [_y(y, knee.metrics[y])], s=160, facecolors="none",
                   edgecolors="black", linewidths=1.5, label=f"knee ({knee.id})", zorder=4)
    base = run.base_metrics
    if x in base and y in base:
        all_x.append(base[x])
        ax.scatter([base[x]], [_y(y, base[y])], marker="*", s=220, color="gold", edgecolors="black",
                   label="base model", zorder=5)
    if x in run.budgets:
        all_x.append(run.budgets[x])
        ax.axvline(run.budgets[x], color="tab:green", linestyle="--",
                   label=f"budget {format_metric(x, run.budgets[x])}")
    if y in run.budgets:
        ax.axhline(_y(y, run.budgets[y]), color="tab:purple", linestyle=":",
                   label=f"accuracy floor {format_metric(y, run.budgets[y])}")
    if _use_log(all_x):
        ax.set_xscale("log")
    if x != "latency_ms":
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    model = run.spec.get("model", "")
    ax.set_title(f"{model} {run.spec.get('data', '')}: {run.n_evaluated} evaluated candidates".strip())
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:  # a failed write (disk full) keeps the previous file whole
        fig.savefig(tmp, format="png")
    return out


def _hover(c: Candidate, names: Sequence[str], order: Sequence[str] | None, max_layers: int = 60,
           notes: Sequence[str] = ()) -> str:
    lines = [f"<b>point {html.escape(c.id)}</b>"]
    lines += [f"{METRIC_LABELS.get(m, m)}: {format_metric(m, c.metrics.get(m))}" for m in names
              if m in c.metrics]
    lines += [html.escape(n) for n in notes]
    layers = ordered_layers(c.policy, order)
    shown = ["prune", "w_bits", "a_bits", "rank"]  # always; other knob types where some layer sets them
    shown += [k for k, kt in KNOB_TYPES.items() if k not in shown
              and any(getattr(c.policy[n], k) != kt.identity for n in layers)]
    lines.append("<i>layer: " + " / ".join(KNOB_TYPES[k].label for k in shown) + "</i>")
    for name in layers[:max_layers]:
        a = c.policy[name]
        cells = [f"{a.prune:.2f}", str(a.w_bits), str(a.a_bits), f"{a.rank:.2f}"]
        cells += [KNOB_TYPES[k].format(getattr(a, k)) for k in shown[4:]]
        lines.append(f"{html.escape(name)}: " + " / ".join(cells))
    if len(layers) > max_layers:
        lines.append(f"... {len(layers) - max_layers} more layers")
    return "<br>".join(lines)


def pareto_html(run: RunRecord, path: str | Path) -> Path:
    """Interactive Pareto plot; hovering a point shows its metrics and per-layer policy.

    The plotly library is embedded in the file (``include_plotlyjs=True``) so it works offline.
    """
    import plotly.graph_objects as go

    x, y = run.cost_metric, run.quality_metric
    order = layer_order(run)
    infeasible, low, feasible, front = _groups(run)
    front_ids = set(run.front_ids)
    names = metric_names(run.trials + run.front, run.base_metrics)
    fig = go.Figure()
    all_x: list[float] = []
    for label, cands, marker, mode in (
        ("infeasible", infeasible, dict(color="lightgray", symbol="x", size=7), "markers"),
        ("low fidelity only", low, dict(color="lightskyblue", size=5, opacity=0.5), "markers"),
        ("feasible", feasible, dict(color="royalblue", size=7, opacity=0.6), "markers"),
        ("Pareto front", sorted(front, key=lambda c: c.metrics.get(x, math.inf)),
         dict(color="crimson", size=10), "lines+markers"),
    ):
        pts = [c for c in cands if c.metrics.get(x) is not None and c.metrics.get(y) is not None
               and math.isfinite(c.metrics[x]) and math.isfinite(c.metrics[y])]
        if not pts:
            continue
        xs = [c.metrics[x] for c in pts]
        all_x += xs
        fig.add_trace(go.Scatter(
            x=xs, y=[_y(y, c.metrics[y]) for c in pts], mode=mode, name=f"{label} ({len(pts)})",
            marker=marker, line=dict(shape="hv") if mode != "markers" else None,
            text=[c.id for c in pts], customdata=[c.id for c in pts],
            hovertext=[_hover(c, names, order, notes=point_notes(run, c) if c.id in front_ids else ())
                       for c in pts], hoverinfo="text",
        ))
    tuned = finetuned_pairs(run)
    if tuned:
        def tuned_hover(p: Candidate) -> str:
            return "<br>".join([f"<b>point {html.escape(p.id)} after fine-tuning</b>",
                                *(html.escape(n) for n in point_notes(run, p))])

        fig.add_trace(go.Scatter(
            x=[t[1] for t in tuned], y=[t[3] for t in tuned], mode="lines+markers",
            name=f"after fine-tuning ({len(tuned)})",
            marker=dict(color="seagreen", size=10, symbol="diamond"), line=dict(dash="dash"),
            text=[t[0].id for t in tuned], customdata=[t[0].id for t in tuned],
            hovertext=[tuned_hover(t[0]) for t in tuned], hoverinfo="text",
        ))
        for _, vx, before, after in tuned:
            fig.add_annotation(x=vx, y=after, ax=vx, ay=before, xref="x", yref="y", axref="x",
                               ayref="y", showarrow=True, arrowhead=2, arrowcolor="seagreen",
                               text="")
    base = run.base_metrics
    if x in base and y in base:
        all_x.append(base[x])
        fig.add_trace(go.Scatter(
            x=[base[x]], y=[_y(y, base[y])], mode="markers", name="base model",
            marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)),
            hovertext=["<b>base model</b><br>" + "<br>".join(
                f"{METRIC_LABELS.get(m, m)}: {format_metric(m, base[m])}" for m in names if m in base)],
            hoverinfo="text",
        ))
    if x in run.budgets:
        all_x.append(run.budgets[x])
        fig.add_vline(x=run.budgets[x], line_dash="dash", line_color="green",
                      annotation_text=f"budget {format_metric(x, run.budgets[x])}")
    if y in run.budgets:
        fig.add_hline(y=_y(y, run.budgets[y]), line_dash="dot", line_color="purple",
                      annotation_text=f"accuracy floor {format_metric(y, run.budgets[y])}")
    fig.update_layout(
        title=f"{run.spec.get('model', '')} {run.spec.get('data', '')}: Pareto front of "
              f"{run.n_evaluated} evaluated candidates".strip(),
        xaxis_title=_axis_label(x), yaxis_title=_axis_label(y), template="plotly_white",
        hoverlabel=dict(align="left", font_size=11),
    )
    if _use_log(all_x):
        fig.update_xaxes(type="log")
    out = Path(path)
    with atomic_path(out) as tmp:  # a failed write (disk full) keeps the previous file whole
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return out


def policy_png(point: Candidate, path: str | Path, *, order: Sequence[str] | None = None,
               title: str | None = None) -> Path:
    """Per-layer bars (AMC-style): channels kept (1 - prune) and rank kept above, bit-widths below.

    The rank bars and the bit-width panel are drawn only when some layer uses those knobs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = ordered_layers(point.policy, order)
    acts = [point.policy[n] for n in layers]
    idx = list(range(len(layers)))
    show_bits = any(a.w_bits < 32 or a.a_bits < 32 for a in acts)
    show_rank = any(a.rank < 1.0 for a in acts)
    width = max(6.0, min(24.0, 0.35 * len(layers) + 2.0))
    fig = Figure(figsize=(width, 6.5 if show_bits else 4.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if show_bits else 1, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    bar_w = 0.4 if show_rank else 0.8
    top.bar([i - (0.2 if show_rank else 0.0) for i in idx], [1.0 - a.prune for a in acts],
            width=bar_w, color="tab:blue", label="channels kept (1 - prune)")
    if show_rank:
        top.bar([i + 0.2 for i in idx], [a.rank for a in acts], width=0.4, color="tab:orange",
                label="rank kept")
    top.set_ylim(0, 1.05)
    top.set_ylabel("fraction kept")
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, fontsize=8, frameon=False)
    top.grid(True, axis="y", alpha=0.3)
    if show_bits:
        bottom = axes[1]
        bottom.bar([i - 0.2 for i in idx], [a.w_bits for a in acts], width=0.4, color="tab:green",
                   label="weight bits")
        bottom.bar([i + 0.2 for i in idx], [a.a_bits for a in acts], width=0.4, color="tab:purple",
                   label="activation bits")
        bottom.set_yscale("log", base=2)
        bottom.set_yticks([1, 2, 4, 8, 16, 32], labels=["1", "2", "4", "8", "16", "32"])
        bottom.set_ylabel("bit-width")
        bottom.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, fontsize=8, frameon=False)
        bottom.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xticks(idx, labels=layers, rotation=75, ha="right", fontsize=7)
    metrics = ", ".join(f"{METRIC_LABELS.get(m, m)} {format_metric(m, point.metrics[m])}"
                        for m in metric_names([point]) if m in point.metrics)
    fig.suptitle(title or f"point {point.id}: {metrics}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:  # a failed write (disk full) keeps the previous file whole
        fig.savefig(tmp, format="png")
    return out


def write_report(run_dir: str | Path) -> ReportPaths:
    """Write ``RUN/pareto.png`` and ``RUN/pareto.html`` and return them with the front's table.

    Example:
        >>> paths = write_report("runs/demo")  # doctest: +SKIP
        >>> rich.print(paths.table)  # doctest: +SKIP
    """
    run = load_run(run_dir)
    png = pareto_png(run, run.path / PARETO_PNG)
    page = pareto_html(run, run.path / PARETO_HTML)
    return ReportPaths(png=png, html=page, table=front_table(run), warnings=run.warnings,
                       finetuned=finetune_table(run))


def point_png_path(run: RunRecord, point_id: str) -> Path:
    """Where ``show_point`` writes a point's per-layer chart."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in point_id)
    return run.path / "points" / f"point-{safe}.png"


def show_point(run_dir: str | Path, point_id: str | int) -> tuple[Table, Path]:
    """One front point: its per-layer policy table (metrics in the caption) and a bar-chart PNG.

    Raises:
        UserInputError: ``point_id`` is not on the front (the message lists the valid ids).
    """
    run = load_run(run_dir)
    point = run.point(point_id)
    order = layer_order(run)
    table = policy_table(point, base=run.base_metrics, order=order, notes=point_notes(run, point))
    png = policy_png(point, point_png_path(run, point.id), order=order)
    return table, png
