"""The metric vocabulary and the ``Budget`` type: every metric is declared once, here.

Each :class:`Metric` says its name, direction, unit, table and axis labels, where its value comes
from (predicted by the space's cost model or measured on the compressed model) and, for the ones
a budget may bound, the user-facing budget name. Every list of metrics elsewhere (evaluator
metrics, objectives, budgets, cost columns, the env's budgetable costs) is a filter over
:data:`VOCABULARY`, so a new metric is added by one entry below plus the code that computes it.

This module imports nothing heavy (no torch, numpy or optuna): specs, reports and the CLI read it
freely.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autocompress.errors import UserInputError

__all__ = [
    "BUDGET_ALIASES",
    "BUDGET_METRICS",
    "COST_METRICS",
    "DIRECTIONS",
    "EVAL_METRICS",
    "MAXIMIZED",
    "PREDICTED_METRICS",
    "UNIT_SCALES",
    "VOCABULARY",
    "Budget",
    "Direction",
    "Metric",
    "Source",
    "budget_name",
    "flops_from_macs",
    "format_value",
    "macs_from_flops",
    "metric",
    "parse_budget",
    "parse_metric",
    "predicted_costs",
]


class Direction(enum.StrEnum):
    """Whether a metric is better when larger (``MAXIMIZE``) or smaller (``MINIMIZE``)."""

    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class Source(enum.StrEnum):
    """Where a metric's value comes from."""

    #: the space's cost model, exact and cheap (no model is built)
    PREDICTED = "predicted"
    #: scored on the compressed model
    MEASURED = "measured"
    #: latency: a per-layer lookup table or a timing, as ``EvalResult.latency_info["kind"]`` says
    PREDICTED_OR_MEASURED = "predicted or measured"


#: Units: ``fraction`` (0..1, shown as %), ``count`` (per input sample at batch 1), ``bytes``,
#: ``ms`` (milliseconds per forward pass).
UNITS: tuple[str, ...] = ("fraction", "count", "bytes", "ms")

#: Suffix (lower case) -> scale into the unit, for values written by users (budgets).
UNIT_SCALES: dict[str, dict[str, float]] = {
    "count": {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "bytes": {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9,
              "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30},
    "ms": {"": 1.0, "ms": 1.0, "us": 1e-3, "s": 1e3},
}
_UNIT_SYMBOL = {"bytes": "B", "ms": "ms"}


@dataclass(frozen=True)
class Metric:
    """One metric of the vocabulary.

    Args:
        name: the key in ``EvalResult.metrics``, objectives and run files.
        direction: maximise or minimise.
        unit: one of ``UNITS``.
        label: table column header.
        axis_label: plot axis title.
        source: predicted by the cost model, measured, or either (latency).
        budget: the user-facing budget name bounding it (``size`` for ``size_bytes``), or None.
        budget_hint: what a budget value may look like, for one-line errors.
        aliases: other spellings accepted for the metric (objectives).
        budget_aliases: other spellings accepted for the budget name.
        front_column: shown in the front table even when it is not an objective.
        axis_rank: preference as a plot's x axis when no objective names one (lower first).
        evaluated: an ``EvalResult`` may carry it (False for report-only metrics).
    """

    name: str
    direction: Direction
    unit: str
    label: str
    axis_label: str
    source: Source
    budget: str | None = None
    budget_hint: str = ""
    aliases: tuple[str, ...] = ()
    budget_aliases: tuple[str, ...] = ()
    front_column: bool = False
    axis_rank: int | None = None
    evaluated: bool = True

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name!r}: unit {self.unit!r}; allowed: {', '.join(UNITS)}")


_M, _MIN, _MAX = Source.MEASURED, Direction.MINIMIZE, Direction.MAXIMIZE
_P = Source.PREDICTED
_PCT = "or a percentage of the base model like 50%"

#: Every metric, in the order tables, messages and ``allowed:`` lists show them. Costs are per
#: input sample at batch 1; FLOPs = 2 x MACs (``flops_from_macs``); ``size_bytes`` is the weight
#: storage at the policy's bit-widths; ``latency_ms`` is per forward pass at the batch recorded in
#: ``EvalResult.latency_info``.
VOCABULARY: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", _MAX, "fraction", "top-1", "top-1 accuracy (%)", _M, budget="acc-drop",
           budget_hint="a drop in accuracy points like 1% (or a fraction like 0.01)",
           aliases=("accuracy", "top1"), budget_aliases=("acc_drop", "accdrop"), front_column=True),
    Metric("acc_top5", _MAX, "fraction", "top-5", "top-5 accuracy (%)", _M, aliases=("top5",)),
    Metric("macs", _MIN, "count", "MACs", "MACs per sample", _P, budget="macs",
           budget_hint=f"a count like 50M, 1.2G, 300K {_PCT}", front_column=True, axis_rank=0),
    Metric("flops", _MIN, "count", "FLOPs", "FLOPs per sample (2 x MACs)", _P, budget="flops",
           budget_hint=f"a count like 100M, 1.2G {_PCT}", axis_rank=1),
    Metric("params", _MIN, "count", "params", "parameters", _P, budget="params",
           budget_hint=f"a count like 100K, 1.5M {_PCT}", front_column=True, axis_rank=4),
    Metric("size_bytes", _MIN, "bytes", "size", "weight size (bytes)", _P, budget="size",
           budget_hint=f"a size like 1.5MB, 500KB, 2MiB, 100000B {_PCT}", aliases=("size",),
           budget_aliases=("size_bytes",), front_column=True, axis_rank=3),
    Metric("bops", _MIN, "count", "BOPs", "bit operations per sample", _P, budget="bops",
           budget_hint=f"a count like 2G {_PCT}", axis_rank=5),
    Metric("latency_ms", _MIN, "ms", "latency", "latency (ms)", Source.PREDICTED_OR_MEASURED,
           budget="latency", budget_hint="a time like 2ms, 500us, 0.01s or a percentage of the base model like 80%",
           aliases=("latency",), budget_aliases=("latency_ms",), front_column=True, axis_rank=2),
    Metric("test_acc", _MAX, "fraction", "test top-1", "test top-1 accuracy (%)", _M, evaluated=False),
)}

#: Metrics an ``EvalResult`` may carry (every one may be an objective), with their directions.
DIRECTIONS: dict[str, Direction] = {n: m.direction for n, m in VOCABULARY.items() if m.evaluated}
EVAL_METRICS: tuple[str, ...] = tuple(DIRECTIONS)
#: Evaluated metrics that are better when larger.
MAXIMIZED: frozenset[str] = frozenset(n for n, d in DIRECTIONS.items() if d is Direction.MAXIMIZE)
#: Evaluated costs (minimised), in vocabulary order: what the env clips to and projections aim at.
COST_METRICS: tuple[str, ...] = tuple(n for n, d in DIRECTIONS.items() if d is Direction.MINIMIZE)
#: Costs the compression space predicts without building a model (cheap, monotone).
PREDICTED_METRICS: tuple[str, ...] = tuple(
    n for n in EVAL_METRICS if VOCABULARY[n].source is Source.PREDICTED
)
#: User-facing budget name -> the ``EvalResult`` metric it bounds (costs first, ``acc-drop`` last).
BUDGET_METRICS: dict[str, str] = {
    m.budget: m.name
    for m in sorted(VOCABULARY.values(), key=lambda m: m.direction is Direction.MAXIMIZE)
    if m.budget
}
#: Other spellings of budget names -> the canonical name.
BUDGET_ALIASES: dict[str, str] = {
    alias: m.budget for m in VOCABULARY.values() if m.budget for alias in m.budget_aliases
}


def metric(name: str) -> Metric:
    """The declared metric ``name`` (exact name); an unknown one raises naming the allowed ones."""
    if name not in VOCABULARY:
        raise UserInputError(f"unknown metric {name!r}; allowed: {', '.join(VOCABULARY)}")
    return VOCABULARY[name]


def parse_metric(name: str, *, what: str = "metric", allowed: Iterable[str] | None = None) -> str:
    """Canonical metric name of ``name`` (case-insensitive; ``size``, ``latency``, ``top1`` ...).

    Args:
        what: how the message names the value (``objective``, ``reward_weights metric`` ...).
        allowed: the metrics allowed here (default: every evaluated metric).
    """
    allowed = list(EVAL_METRICS if allowed is None else allowed)
    key = str(name).strip().lower()
    for m in VOCABULARY.values():
        if key in m.aliases:
            key = m.name
            break
    if key not in allowed:
        raise UserInputError(f"unknown {what} {name!r}; allowed: {', '.join(allowed)}")
    return key


def flops_from_macs(macs: float) -> float:
    """FLOPs of ``macs`` multiply-accumulates (one multiply plus one add each): the one place
    this convention is written."""
    return 2.0 * float(macs)


def macs_from_flops(flops: float) -> float:
    """Inverse of :func:`flops_from_macs`."""
    return float(flops) / 2.0


def predicted_costs(costs: Mapping[str, float]) -> dict[str, float]:
    """Every ``PREDICTED_METRICS`` value from the space's four costs (``macs``, ``params``,
    ``size_bytes``, ``bops``): FLOPs follow from MACs."""
    out = {n: float(costs[n]) for n in PREDICTED_METRICS if n != "flops"}
    out["flops"] = flops_from_macs(out["macs"])
    return {n: out[n] for n in PREDICTED_METRICS}


def _si(value: float, suffix: str = "") -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}{suffix}"
    return f"{value:.0f}{suffix}"


def format_value(name: str, value: float | None) -> str:
    """A metric value with its unit: ``98.61%``, ``12.30M``, ``1.230 ms``, ``45.2 KiB``; ``-`` for
    a missing or non-finite value; an undeclared metric is shown as a count."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    unit = VOCABULARY[name].unit if name in VOCABULARY else "count"
    if unit == "fraction":
        return f"{100.0 * value:.2f}%"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "bytes":
        for scale, sym in ((1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")):
            if value >= scale:
                return f"{value / scale:.1f} {sym}"
        return f"{value:.0f} B"
    return _si(value)


# --- budgets -----------------------------------------------------------------------------------
def _budget_metric(name: str) -> Metric:
    return VOCABULARY[BUDGET_METRICS[name]]


@dataclass(frozen=True, init=False)
class Budget:
    """An upper bound on one metric (``acc-drop``: on the accuracy drop), absolute or relative.

    Two forms, one type:

    - ``Budget(name, value, relative=False, text="")``: a named budget, as parsed from
      ``macs=50%`` by :func:`parse_budget`. ``value`` is in the metric's unit (MACs, FLOPs,
      parameters, BOPs, bytes, ms), or the fraction of the base model when ``relative``; for
      ``acc-drop`` the drop as a fraction.
    - ``Budget(fraction)``: a fraction of the base model's value of whichever metric it is keyed
      to, e.g. ``CompressionEnv(budgets={"macs": Budget(0.5)})``; ``name`` is None until
      :meth:`bind` names the metric.

    Args:
        name: the budget name (``macs``, ``flops``, ``params``, ``bops``, ``size``, ``latency``,
            ``acc-drop``), or a fraction for the unnamed form.
        value: the bound (see above).
        relative: True when ``value`` is a fraction of the base model's value.
        text: the string the user wrote (for messages and ``spec.json``).
    """

    name: str | None
    value: float
    relative: bool
    text: str

    def __init__(self, name: str | float | None, value: float | None = None, relative: bool = False,
                 text: str = "") -> None:
        if value is None and name is not None:
            f = name
            if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or f <= 0:
                raise UserInputError(f"Budget fraction {f!r} is not allowed; allowed: a number > 0")
            name, value, relative = None, float(f), True
        elif name is None:
            if value is None or isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0 or not relative:
                raise UserInputError(f"Budget fraction {value!r} is not allowed; allowed: a number > 0")
        elif name not in BUDGET_METRICS:
            raise UserInputError(f"unknown budget metric {name!r}; allowed: {', '.join(BUDGET_METRICS)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "relative", relative)
        object.__setattr__(self, "text", text)
        if name is not None:
            if not (isinstance(value, int | float) and math.isfinite(value)) or value < 0:
                raise UserInputError(f"budget {name}={value!r} must be a finite number >= 0")
            if name != "acc-drop" and value == 0:
                raise UserInputError(
                    f"budget {self.describe()} must be > 0; allowed: {_budget_metric(name).budget_hint}"
                )
        object.__setattr__(self, "value", float(value))
        if not self.text:
            object.__setattr__(self, "text", self.describe())

    @property
    def metric(self) -> str:
        """The ``EvalResult`` metric this budget bounds."""
        if self.name is None:
            raise UserInputError(
                f"Budget({self.value:g}) names no metric; key it by one ({', '.join(COST_METRICS)})"
            )
        return BUDGET_METRICS[self.name]

    @property
    def fraction(self) -> float | None:
        """The fraction of the base model's value for a relative budget, else None."""
        return self.value if self.relative else None

    def bind(self, metric_name: str) -> Budget:
        """This budget on ``metric_name`` (a metric or budget name): names an unnamed
        ``Budget(fraction)``; a named budget on another metric raises."""
        name = budget_name(metric_name)
        if self.name is None:
            return Budget(name, self.value, relative=True)
        if self.name != name:
            raise UserInputError(
                f"budget {self.text!r} bounds {self.metric!r}, not {metric_name!r}; key it by {self.metric!r}"
            )
        return self

    def resolve(self, base_value: float) -> float:
        """The absolute bound for a base model whose value of the metric is ``base_value``."""
        return self.value * float(base_value) if self.relative else self.value

    def limit(self, base: Mapping[str, float] | None) -> float:
        """The absolute bound on ``metric`` (``acc-drop``: the lowest allowed accuracy).

        Args:
            base: the base model's metrics (needed for relative budgets and ``acc-drop``).
        """
        if self.name == "acc-drop":
            if base is None or "acc" not in base:
                raise UserInputError("budget acc-drop needs the base model's accuracy")
            return float(base["acc"]) - self.value
        if not self.relative:
            return self.value
        if base is None or self.metric not in base or not math.isfinite(float(base[self.metric])):
            raise UserInputError(
                f"budget {self.text} is relative but the base model has no {self.metric!r} value"
            )
        return self.value * float(base[self.metric])

    def violation(self, metrics: Mapping[str, float], base: Mapping[str, float] | None) -> float:
        """Normalised violation (> 0 infeasible, <= 0 feasible) of ``metrics`` against this budget.

        Missing or non-finite values count as a violation of 1.
        """
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(float(v)):
            return 1.0
        lim = self.limit(base)
        if self.name == "acc-drop":
            return (lim - float(v)) / max(abs(lim), 1e-12)
        return (float(v) - lim) / max(abs(lim), 1e-12)

    def describe(self) -> str:
        """Canonical text, e.g. ``macs=50%`` or ``flops=5e+07``."""
        if self.name is None:
            return f"{self.value * 100:g}% of the base model"
        if self.name == "acc-drop":
            return f"acc-drop={self.value * 100:g}%"
        if self.relative:
            return f"{self.name}={self.value * 100:g}%"
        unit = _UNIT_SYMBOL.get(_budget_metric(self.name).unit, "")
        return f"{self.name}={self.value:g}{unit}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the original text is enough to rebuild it)."""
        return {"name": self.name, "value": self.value, "relative": self.relative, "text": self.text}


def budget_name(name: str) -> str:
    """Canonical budget name for ``name`` (accepts ``size_bytes``, ``latency_ms``, ``acc_drop``)."""
    key = str(name).strip().lower()
    key = BUDGET_ALIASES.get(key, key)
    if key not in BUDGET_METRICS:
        raise UserInputError(f"unknown budget metric {name!r}; allowed: {', '.join(BUDGET_METRICS)}")
    return key


_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_VALUE_RE = re.compile(rf"^\s*(?P<sign>[-+]?)(?P<num>{_NUMBER})\s*(?P<unit>[A-Za-z%]*)\s*$")


def parse_budget(text: str | Budget) -> Budget:
    """Parse ``"metric=value"`` into a :class:`Budget` (units: ``autocompress.search.budgets``).

    Raises:
        UserInputError: one line naming the value and what is allowed, e.g.
            ``budget 'flops=fifty': 'fifty' is not allowed; expected a count like 100M ...``.
    """
    if isinstance(text, Budget):
        return text
    if not isinstance(text, str) or "=" not in text:
        raise UserInputError(
            f"budget {text!r} is not of the form METRIC=VALUE (e.g. macs=50%, flops=50M, "
            f"latency=2ms, size=1.5MB, params=100K, acc-drop=1%); metrics: {', '.join(BUDGET_METRICS)}"
        )
    raw_name, raw_value = text.split("=", 1)
    name = budget_name(raw_name)
    value_text = raw_value.strip()
    allowed = _budget_metric(name).budget_hint
    m = _VALUE_RE.match(value_text)
    if not m:
        raise UserInputError(f"budget {text!r}: {value_text!r} is not allowed; expected {allowed}")
    if m.group("sign") == "-":
        raise UserInputError(f"budget {text!r}: a budget cannot be negative; expected {allowed}")
    num = float(m.group("num"))
    unit = m.group("unit")
    if unit == "%":
        if name == "acc-drop":
            if num > 100:
                raise UserInputError(f"budget {text!r}: an accuracy drop above 100% is meaningless; expected {allowed}")
            return Budget(name, num / 100.0, relative=False, text=text.strip())
        if num <= 0:
            raise UserInputError(f"budget {text!r}: must be > 0%; expected {allowed}")
        return Budget(name, num / 100.0, relative=True, text=text.strip())
    low = unit.lower()
    scales = UNIT_SCALES.get(_budget_metric(name).unit)
    if scales is not None:
        factor = scales.get(low)
    else:  # acc-drop: a bare fraction
        factor = 1.0 if low == "" else None
        if factor is not None and num > 1:
            raise UserInputError(
                f"budget {text!r}: a bare acc-drop is a fraction in [0, 1]; expected {allowed} "
                f"(write {num:g}% for points)"
            )
    if factor is None:
        raise UserInputError(f"budget {text!r}: unit {unit!r} is not allowed; expected {allowed}")
    value = num * factor
    if value <= 0 and name != "acc-drop":
        raise UserInputError(f"budget {text!r}: must be > 0; expected {allowed}")
    return Budget(name, value, relative=False, text=text.strip())
