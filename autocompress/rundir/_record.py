"""``RunRecord``: everything a report needs from one run directory, as ``read_run`` reads it.

Also the names a reader of a run shares: ``PolicyReader`` (how a caller builds policies from run
files) and the metric directions a report sorts and plots by (``MAXIMIZED``, ``COST_METRICS``).
Standard library, ``errors`` and ``metrics`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.metrics import COST_METRICS as _COSTS
from autocompress.metrics import MAXIMIZED as _MAXIMIZED
from autocompress.metrics import VOCABULARY
from autocompress.rundir._files import Candidate

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy


#: Builds a policy from what a run file holds for one (a serialised dict, a JSON string, a bare
#: ``{layer: knobs}`` mapping); raises ``UserInputError`` / ``ValueError`` / ``TypeError`` when
#: it cannot.
PolicyReader = Callable[[Any], "CompressionPolicy"]

#: Metrics that are better when larger; every other metric is a cost (smaller is better).
MAXIMIZED: frozenset[str] = _MAXIMIZED
#: Cost metrics in the order a plot prefers them for its x axis when no objective names one.
COST_METRICS: tuple[str, ...] = tuple(sorted(_COSTS, key=lambda n: VOCABULARY[n].axis_rank or 0))


@dataclass(frozen=True)
class RunRecord:
    """Everything a report needs from one run directory.

    Args:
        path: the run directory.
        spec: ``spec.json`` as a dict.
        trials: every candidate of ``trials.jsonl`` in file order (failed ones included).
        front: the points of ``pareto.json`` (feasible, non-dominated), in file order.
        objectives: objective name -> ``"maximize"`` / ``"minimize"``.
        base_metrics: metrics of the uncompressed model (empty when the run does not record them).
        budgets: hard budgets as absolute upper bounds per cost metric (``acc`` as a lower bound).
        pareto: ``pareto.json`` as a dict (hypervolume, knee, ...).
        warnings: what was read but not trusted, one line each (a torn last line of
            ``trials.jsonl``, front points evaluated by processes logging elsewhere); reports
            print them.
        finetuned: front point id -> its latest fine-tune record (``RUN/finetune/point-<id>.json``
            of the same policy, with its weights next to it), for the points that have one.
    """

    path: Path
    spec: dict[str, Any]
    trials: list[Candidate]
    front: list[Candidate]
    objectives: dict[str, str]
    base_metrics: dict[str, float]
    budgets: dict[str, float]
    pareto: dict[str, Any]
    warnings: tuple[str, ...] = ()
    finetuned: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        """Candidates that cost an evaluation (status ``ok`` or ``failed``)."""
        return sum(t.status in ("ok", "failed") for t in self.trials)

    @property
    def front_ids(self) -> list[str]:
        """Ids of the Pareto points, in file order."""
        return [p.id for p in self.front]

    @property
    def knee_id(self) -> str | None:
        """Id of the knee point of the front, when the run names one."""
        knee = self.pareto.get("knee")
        if isinstance(knee, Mapping):
            knee = knee.get("id")
        return None if knee is None else str(knee)

    @property
    def cost_metric(self) -> str:
        """The cost objective a 2-D plot puts on its x axis (first minimised objective)."""
        for name, direction in self.objectives.items():
            if direction == "minimize":
                return name
        for name in COST_METRICS:
            if any(name in c.metrics for c in self.front or self.trials):
                return name
        return "macs"

    @property
    def quality_metric(self) -> str:
        """The accuracy objective a 2-D plot puts on its y axis."""
        for name, direction in self.objectives.items():
            if direction == "maximize":
                return name
        return "acc"

    @property
    def base_test_acc(self) -> float | None:
        """The uncompressed model's top-1 on the held-out test split, when the search measured it."""
        test = self.pareto.get("test")
        value = test.get("base") if isinstance(test, Mapping) else None
        return _finite_or_none(value)

    def test_acc(self, point: Candidate) -> float | None:
        """A front point's top-1 on the held-out test split (the searched model, not fine-tuned),
        when the search measured it (data with a test split only)."""
        return _finite_or_none(point.extra.get("test_acc"))

    @property
    def has_test(self) -> bool:
        """Whether any test top-1 is on record (search's front or a fine-tune record)."""
        return (self.base_test_acc is not None or any(self.test_acc(p) is not None for p in self.front)
                or any(_finite_or_none(r.get("test_before")) is not None for r in self.finetuned.values()))

    def by_proxy_rank(self) -> list[Candidate]:
        """The front's feasible points, best first: highest search accuracy (the quality
        objective, as scored during the search), ties broken by lower cost, then by id.

        This is the order ``--finetune-top K`` and ``finetune --top K`` take points in.
        """
        q, cost = self.quality_metric, self.cost_metric
        sign = -1.0 if self.objectives.get(q, "maximize") == "maximize" else 1.0

        def key(c: Candidate) -> tuple[float, float, int, str]:
            acc = c.metrics.get(q, math.nan)
            c_v = c.metrics.get(cost, math.nan)
            return (sign * acc if math.isfinite(acc) else math.inf,
                    c_v if math.isfinite(c_v) else math.inf,
                    int(c.id) if c.id.isdigit() else 1 << 62, c.id)

        return sorted((p for p in self.front if p.feasible and p.ok), key=key)

    def point(self, point_id: str | int) -> Candidate:
        """The front point with this id; any other id is a user error listing the valid ids."""
        key = str(point_id).strip()
        for p in self.front:
            if p.id == key:
                return p
        ids = sorted(self.front_ids, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))
        valid = ", ".join(ids) or "(the front is empty)"
        raise UserInputError(
            f"point {key!r} is not on the Pareto front of {str(self.path)!r}; valid points: {valid}"
        )


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
