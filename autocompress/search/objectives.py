"""Objectives: a metric and its direction, parsed from ``acc``, ``macs:min`` or a mapping.

The vocabulary is ``autocompress.metrics`` (every evaluated metric, with its natural direction).
``SearchSpec.objectives`` holds these, and a searcher's ``SearchContext`` carries them; this
module imports nothing of the search, so a context can be built without a spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autocompress.errors import UserInputError
from autocompress.metrics import DIRECTIONS, parse_metric

#: Metrics that may be objectives (every evaluated metric of ``autocompress.metrics``), with their
#: natural direction.
OBJECTIVE_METRICS: dict[str, str] = {name: d.value for name, d in DIRECTIONS.items()}
_DIRECTION_ALIASES = {"max": "maximize", "maximize": "maximize", "min": "minimize",
                      "minimize": "minimize"}


@dataclass(frozen=True)
class Objective:
    """A metric to optimise and its direction (``maximize`` / ``minimize``)."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVE_METRICS:
            raise UserInputError(
                f"unknown objective {self.name!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
            )
        if self.direction not in ("maximize", "minimize"):
            raise UserInputError(
                f"objective {self.name!r} direction {self.direction!r}; allowed: maximize, minimize"
            )

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"name": self.name, "direction": self.direction}


def parse_objective(value: str | Mapping[str, Any] | Objective) -> Objective:
    """``"acc"``, ``"macs:min"``, ``"latency"`` or ``{"name": ..., "direction": ...}`` -> Objective."""
    if isinstance(value, Objective):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"name", "direction"}
        if unknown or "name" not in value:
            raise UserInputError(
                f"objective {dict(value)!r}: expected keys 'name' and optional 'direction'"
            )
        name, direction = str(value["name"]), value.get("direction")
    elif isinstance(value, str):
        name, _, direction = value.partition(":")
        direction = direction or None
    else:
        raise UserInputError(f"objective {value!r} is not a metric name; allowed: {', '.join(OBJECTIVE_METRICS)}")
    key = parse_metric(name, what="objective", allowed=OBJECTIVE_METRICS)
    if direction is None:
        return Objective(key, OBJECTIVE_METRICS[key])
    d = _DIRECTION_ALIASES.get(str(direction).strip().lower())
    if d is None:
        raise UserInputError(f"objective {name!r} direction {direction!r}; allowed: max, min")
    return Objective(key, d)


__all__ = ["OBJECTIVE_METRICS", "Objective", "parse_objective"]
