"""The evaluator interface: named, directed metrics, the ``EvalResult`` record, and the registry."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.errors import UserInputError
from autocompress.metrics import DIRECTIONS, Direction
from autocompress.registry import Registry

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy


__all__ = ["FIDELITIES", "METRICS", "STATUSES", "TIMING_PHASES", "BaseEvaluator", "Direction",
           "EvalResult", "check_fidelity", "create_evaluator", "evaluator_class", "list_evaluators",
           "register_evaluator"]

#: Every metric an evaluator may report, with its direction: the evaluated metrics of
#: ``autocompress.metrics.VOCABULARY`` (units, labels and sources are declared there).
METRICS: dict[str, Direction] = DIRECTIONS

FIDELITIES: tuple[str, ...] = ("low", "full")
STATUSES: tuple[str, ...] = ("ok", "failed")
TIMING_PHASES: tuple[str, ...] = (
    "compress", "recalibrate", "finetune", "evaluate", "latency", "bookkeeping", "total",
)


def check_fidelity(fidelity: str) -> str:
    """Validate a fidelity name (``low`` or ``full``)."""
    if fidelity not in FIDELITIES:
        raise UserInputError(f"fidelity={fidelity!r} is not supported; allowed: {', '.join(FIDELITIES)}")
    return fidelity


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation of a candidate produced.

    Args:
        metrics: metric name -> value (names from ``METRICS``); a failed result may still carry the
            cost metrics that were computed before the failure.
        latency_info: how ``latency_ms`` was obtained: ``backend``, ``batch``, ``threads``, ``kind``
            (``"measured"`` or ``"predicted"``); empty when latency was not asked for.
        timings: seconds per phase (``compress``, ``recalibrate``, ``finetune``, ``evaluate``,
            ``latency``, ``bookkeeping``, ``total``).
        fidelity: ``"low"`` or ``"full"``.
        status: ``"ok"`` or ``"failed"``.
        error: one line saying why a failed candidate failed.
        cached: True when the result came from the cache instead of being computed now.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    latency_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fidelity: str = "full"
    status: str = "ok"
    error: str | None = None
    cached: bool = False

    schema_version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_fidelity(self.fidelity)
        if self.status not in STATUSES:
            raise UserInputError(f"EvalResult.status={self.status!r}; allowed: {', '.join(STATUSES)}")
        if self.status == "failed" and not self.error:
            raise UserInputError("a failed EvalResult needs an error message")

    @property
    def ok(self) -> bool:
        """True when the candidate was evaluated successfully."""
        return self.status == "ok"

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]

    def with_cached(self, cached: bool = True) -> EvalResult:
        """A copy marked as coming from the cache (or not)."""
        return replace(self, cached=cached)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (non-finite metric values become ``None``)."""
        return {
            "_version": self.schema_version,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "latency_info": dict(self.latency_info),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "fidelity": self.fidelity,
            "status": self.status,
            "error": self.error,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Inverse of ``to_dict``; rejects another schema version."""
        if not isinstance(d, dict) or "metrics" not in d:
            raise UserInputError("not a serialised EvalResult: expected a dict with a 'metrics' key")
        if d.get("_version", cls.schema_version) != cls.schema_version:
            raise UserInputError(
                f"EvalResult schema _version {d.get('_version')!r} is not supported; "
                f"this autocompress reads version {cls.schema_version}"
            )
        return cls(
            metrics={k: (math.nan if v is None else float(v)) for k, v in d["metrics"].items()},
            latency_info=dict(d.get("latency_info") or {}),
            timings={k: float(v) for k, v in (d.get("timings") or {}).items()},
            fidelity=d.get("fidelity", "full"),
            status=d.get("status", "ok"),
            error=d.get("error"),
            cached=bool(d.get("cached", False)),
        )

    @classmethod
    def failure(
        cls, error: str, *, fidelity: str = "full", metrics: dict[str, float] | None = None,
        timings: dict[str, float] | None = None, latency_info: dict[str, Any] | None = None,
    ) -> EvalResult:
        """A ``failed`` result carrying a one-line error."""
        line = " ".join(str(error).split()) or "unknown error"
        return cls(
            metrics=dict(metrics or {}), latency_info=dict(latency_info or {}),
            timings=dict(timings or {}), fidelity=fidelity, status="failed", error=line,
        )


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class BaseEvaluator(abc.ABC):
    """Scores a ``CompressionPolicy`` on named, directed metrics.

    Subclasses set ``metrics`` (metric name -> ``Direction``) and implement ``evaluate``. An
    evaluator never raises for a bad *candidate*: a candidate whose compression or scoring fails
    comes back with ``status="failed"`` and a one-line ``error``, so a search keeps going. It does
    raise ``UserInputError`` for bad *settings* (unknown fidelity, bad config).

    Example:
        >>> result = evaluator.evaluate(space.uniform(prune=0.3), fidelity="low")  # doctest: +SKIP
        >>> result.metrics["acc"], result.metrics["macs"]  # doctest: +SKIP
    """

    #: Metric name -> direction, a subset of ``METRICS``.
    metrics: dict[str, Direction]

    @abc.abstractmethod
    def evaluate(self, policy: CompressionPolicy, fidelity: str = "full") -> EvalResult:
        """Score one policy at ``fidelity`` (``"low"`` is cheaper, ``"full"`` more faithful)."""

    def directions(self, names: Iterable[str] | None = None) -> dict[str, Direction]:
        """Directions of ``names`` (default: all declared metrics); unknown names raise."""
        names = list(self.metrics) if names is None else list(names)
        unknown = [n for n in names if n not in self.metrics]
        if unknown:
            raise UserInputError(
                f"metric {unknown[0]!r} is not reported by {type(self).__name__}; "
                f"allowed: {', '.join(self.metrics)}"
            )
        return {n: self.metrics[n] for n in names}


#: Evaluator name -> class.
_EVALUATORS: Registry[type[BaseEvaluator]] = Registry("evaluator", BaseEvaluator, set_name=False)


def register_evaluator(name: str) -> Callable[[type[BaseEvaluator]], type[BaseEvaluator]]:
    """Class decorator registering an evaluator under ``name``; a duplicate name raises."""
    return _EVALUATORS.register(name)


def list_evaluators(pattern: str = "*") -> list[str]:
    """Registered evaluator names matching a glob."""
    return _EVALUATORS.names(pattern)


def evaluator_class(name: str) -> type[BaseEvaluator]:
    """The class registered as ``name``; an unknown name lists the allowed ones."""
    return _EVALUATORS.lookup(name)


def create_evaluator(name: str, *args: Any, **kwargs: Any) -> BaseEvaluator:
    """Build a registered evaluator by name (arguments go to its constructor)."""
    return evaluator_class(name)(*args, **kwargs)
