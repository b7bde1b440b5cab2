"""Budget strings (``flops=50M``, ``latency=2ms``, ``size=1.5MB``, ``macs=50%``, ``acc-drop=1%``).

Units (all decimal unless the binary ``Ki``/``Mi``/``Gi`` prefixes are written out):

=============  =======================  ====================================================
budget         metric checked           accepted values
=============  =======================  ====================================================
``macs``       ``macs`` (per sample)    count: ``50M``, ``1.2G``, ``300K``, ``5e7``; or ``50%``
``flops``      ``flops`` (= 2 x MACs)   count as for ``macs``; or ``%`` of the base FLOPs
``params``     ``params``               count as for ``macs``; or ``%``
``bops``       ``bops``                 count as for ``macs``; or ``%``
``size``       ``size_bytes``           ``B``, ``KB``/``MB``/``GB`` (10^3, 10^6, 10^9 bytes),
                                        ``KiB``/``MiB``/``GiB`` (2^10, 2^20, 2^30); bare = bytes;
                                        or ``%``
``latency``    ``latency_ms``           ``us``, ``ms``, ``s``; bare = milliseconds; or ``%``
``acc-drop``   ``acc``                  ``1%`` = one accuracy point below the base model;
                                        a bare number is a fraction (``0.01`` = ``1%``)
=============  =======================  ====================================================

Count suffixes are ``K`` (10^3), ``M`` (10^6), ``G`` (10^9), ``T`` (10^12), case-insensitive.
A percentage of a cost is relative to the base (uncompressed) model: ``macs=50%`` means at most
half the base model's MACs. Every budget is an upper bound (``acc-drop`` bounds the drop).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autocompress.errors import UserInputError

#: User-facing budget name -> the ``EvalResult`` metric it bounds.
BUDGET_METRICS: dict[str, str] = {
    "macs": "macs",
    "flops": "flops",
    "params": "params",
    "bops": "bops",
    "size": "size_bytes",
    "latency": "latency_ms",
    "acc-drop": "acc",
}

_ALIASES: dict[str, str] = {
    "size_bytes": "size",
    "latency_ms": "latency",
    "acc_drop": "acc-drop",
    "accdrop": "acc-drop",
}

_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SIZE_SUFFIX = {
    "": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9,
    "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30,
}
_TIME_SUFFIX_MS = {"": 1.0, "ms": 1.0, "us": 1e-3, "s": 1e3}

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_VALUE_RE = re.compile(rf"^\s*(?P<sign>[-+]?)(?P<num>{_NUMBER})\s*(?P<unit>[A-Za-z%]*)\s*$")

_ALLOWED_TEXT = {
    "macs": "a count like 50M, 1.2G, 300K or a percentage of the base model like 50%",
    "flops": "a count like 100M, 1.2G or a percentage of the base model like 50%",
    "params": "a count like 100K, 1.5M or a percentage of the base model like 50%",
    "bops": "a count like 2G or a percentage of the base model like 50%",
    "size": "a size like 1.5MB, 500KB, 2MiB, 100000B or a percentage of the base model like 50%",
    "latency": "a time like 2ms, 500us, 0.01s or a percentage of the base model like 80%",
    "acc-drop": "a drop in accuracy points like 1% (or a fraction like 0.01)",
}


@dataclass(frozen=True)
class Budget:
    """An upper bound on one metric.

    Args:
        name: the user-facing budget name (``macs``, ``flops``, ``params``, ``bops``, ``size``,
            ``latency``, ``acc-drop``).
        value: the bound in the metric's unit (MACs, FLOPs, parameters, BOPs, bytes, ms), or the
            fraction of the base model when ``relative``; for ``acc-drop`` the drop as a fraction.
        relative: True when ``value`` is a fraction of the base model's value.
        text: the string the user wrote (for messages and ``spec.json``).
    """

    name: str
    value: float
    relative: bool = False
    text: str = ""

    def __post_init__(self) -> None:
        if self.name not in BUDGET_METRICS:
            raise UserInputError(
                f"unknown budget metric {self.name!r}; allowed: {', '.join(BUDGET_METRICS)}"
            )
        if not (isinstance(self.value, int | float) and math.isfinite(self.value)) or self.value < 0:
            raise UserInputError(f"budget {self.name}={self.value!r} must be a finite number >= 0")
        if self.name != "acc-drop" and self.value == 0:
            raise UserInputError(f"budget {self.describe()} must be > 0; allowed: {_ALLOWED_TEXT[self.name]}")
        object.__setattr__(self, "value", float(self.value))
        if not self.text:
            object.__setattr__(self, "text", self.describe())

    @property
    def metric(self) -> str:
        """The ``EvalResult`` metric this budget bounds."""
        return BUDGET_METRICS[self.name]

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
        if self.name == "acc-drop":
            return f"acc-drop={self.value * 100:g}%"
        if self.relative:
            return f"{self.name}={self.value * 100:g}%"
        unit = {"size": "B", "latency": "ms"}.get(self.name, "")
        return f"{self.name}={self.value:g}{unit}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the original text is enough to rebuild it)."""
        return {"name": self.name, "value": self.value, "relative": self.relative, "text": self.text}


def budget_name(name: str) -> str:
    """Canonical budget name for ``name`` (accepts ``size_bytes``, ``latency_ms``, ``acc_drop``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BUDGET_METRICS:
        raise UserInputError(f"unknown budget metric {name!r}; allowed: {', '.join(BUDGET_METRICS)}")
    return key


def parse_budget(text: str | Budget) -> Budget:
    """Parse ``"metric=value"`` into a :class:`Budget` (see the module docstring for units).

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
    allowed = _ALLOWED_TEXT[name]
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
    if name in ("macs", "flops", "params", "bops"):
        factor = _COUNT_SUFFIX.get(low)
    elif name == "size":
        factor = _SIZE_SUFFIX.get(low)
    elif name == "latency":
        factor = _TIME_SUFFIX_MS.get(low)
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
