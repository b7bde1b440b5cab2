"""What a search records and returns: trial statuses, the candidate record, progress and result.

One evaluated candidate is a ``rundir.Candidate`` everywhere (``TrialRecord`` is its name in the
search): the search builds it from a finished trial of its ledger here (``record_from_trial``), the
report reads it back from the run directory (``report.run.load_run``). ``SearchProgress`` is what
a progress display is fed during a search and ``SearchResult`` what ``run_search`` returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.compression.policy import CompressionPolicy
from autocompress.rundir import Candidate

if TYPE_CHECKING:
    from autocompress.evaluators import EvalResult
    from autocompress.search.ledger import LedgerTrial
    from autocompress.search.spec import SearchSpec

#: Statuses that count towards ``spec.trials`` (an evaluation was spent).
COUNTED_STATUSES = ("ok", "failed")
#: Every final status a trial can carry.
TRIAL_STATUSES = ("ok", "failed", "infeasible", "duplicate", "surplus", "interrupted")

#: One candidate of the ledger, as recorded (also a row of ``SearchResult.trials``): the search's
#: name for ``rundir.Candidate`` (``id`` is the ledger's trial number, an ``int``).
TrialRecord = Candidate


@dataclass(frozen=True)
class SearchProgress:
    """What a progress display needs after each step of the search.

    Attributes:
        phase: ``setup`` (building the problem), ``start`` (loop starts), ``trial`` (a candidate
            was recorded), ``done``.
        done: counted candidates in the study (all processes), ``total``: the target.
        feasible: successfully evaluated full-fidelity candidates that meet every hard budget.
        failed: failed candidates.
        best_acc: best accuracy among feasible candidates (None before the first).
        best_id: its trial id.
        elapsed_s: seconds since ``run_search`` started.
        eta_s: estimated seconds to ``total`` from this process's pace (None until known).
        message: a line for the user (setup steps, stop reason).
        last: the candidate just recorded (``phase == "trial"``).
    """

    phase: str
    done: int = 0
    total: int = 0
    feasible: int = 0
    failed: int = 0
    best_acc: float | None = None
    best_id: int | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    last: TrialRecord | None = None


ProgressCallback = Callable[[SearchProgress], None]


@dataclass(frozen=True)
class SearchResult:
    """What ``run_search`` returns (the same for every strategy and backend).

    Attributes:
        run_dir: the run directory (``spec.json``, ``trials.jsonl``, ``pareto.json``, ledger).
        spec: the spec that ran (the stored one under ``resume``).
        trials: every finished candidate of the ledger (evaluated ones and ``infeasible`` ones).
        front: the Pareto-optimal feasible full-fidelity candidates.
        pareto: the content of ``pareto.json``.
        base_metrics: the uncompressed model's metrics.
        hypervolume: of the front (see ``pareto.py`` for the normalised reference point); None
            for more than 3 objectives.
        knee: the knee point of the front.
        best: the feasible candidate with the highest accuracy.
        n_evaluated, n_feasible, n_failed: counts over the ledger.
        elapsed_s: seconds this call took.
        stop_reason: why the loop ended.
        n_screened: candidates scored at low fidelity only (multi-fidelity: not promoted); they
            are neither feasible nor infeasible, so the summary lists them apart.
        test_acc: front point id -> top-1 on the data's held-out test split (empty without one).
        base_test_acc: the uncompressed model's test top-1 (None without a test split).
        finetuned: ``FinetuneResult`` of the ``spec.finetune_top`` best front points, best first.
    """

    run_dir: Path
    spec: SearchSpec
    trials: tuple[TrialRecord, ...]
    front: tuple[TrialRecord, ...]
    pareto: dict[str, Any]
    base_metrics: dict[str, float]
    hypervolume: float | None
    knee: TrialRecord | None
    best: TrialRecord | None
    n_evaluated: int
    n_feasible: int
    n_failed: int
    elapsed_s: float
    stop_reason: str
    n_screened: int = 0
    test_acc: dict[str, float] = field(default_factory=dict)
    base_test_acc: float | None = None
    finetuned: tuple[Any, ...] = ()

    def summary(self) -> str:
        """One line for the user: ``80 evaluated, 44 screened out at low fidelity, 36 feasible,
        0 failed; completed`` (screened-out candidates are neither feasible nor infeasible)."""
        screened = f"{self.n_screened} screened out at low fidelity, " if self.n_screened else ""
        return (f"{self.n_evaluated} evaluated, {screened}{self.n_feasible} feasible, "
                f"{self.n_failed} failed; {self.stop_reason}")


def n_screened(records: Sequence[TrialRecord]) -> int:
    """Candidates evaluated successfully at low fidelity only (never promoted)."""
    return sum(r.status == "ok" and r.fidelity == "low" for r in records)


def finite(v: Any) -> bool:
    """Whether ``v`` is a number (or numeric text) that is not NaN or infinite."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def safe_evaluate(evaluate: Callable[[CompressionPolicy, str], EvalResult], policy: CompressionPolicy,
                  fidelity: str) -> EvalResult:
    """Evaluate, turning an exception or a NaN accuracy into a ``failed`` result."""
    from autocompress.evaluators import EvalResult

    t0 = time.perf_counter()
    try:
        result = evaluate(policy, fidelity)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the search
        return EvalResult.failure(f"{type(exc).__name__}: {exc}", fidelity=fidelity,
                                  timings={"total": time.perf_counter() - t0})
    if result.ok and not finite(result.metrics.get("acc")):
        return EvalResult.failure(f"accuracy is {result.metrics.get('acc')!r}", fidelity=fidelity,
                                  metrics={k: v for k, v in result.metrics.items() if k != "acc"},
                                  timings=result.timings, latency_info=result.latency_info)
    return result


# -- ledger trial -> record / result ----------------------------------------------------------------
def record_from_trial(t: LedgerTrial) -> TrialRecord | None:
    """The ``TrialRecord`` of a finished trial (None for trials without a final record); reads
    only ``number`` and ``user_attrs``, so an Optuna ``FrozenTrial`` works too."""
    a = t.user_attrs
    status = a.get("status")
    if status not in ("ok", "failed", "infeasible") or "policy" not in a:
        return None
    metrics = {k: (math.nan if v is None else float(v)) for k, v in (a.get("metrics") or {}).items()}
    return TrialRecord(
        id=int(t.number), policy=CompressionPolicy.from_dict(a["policy"]), metrics=metrics,
        status=str(status), fidelity=str(a.get("fidelity", "full")),
        feasible=bool(a.get("feasible", False)),
        violations={k: float(v) for k, v in (a.get("violations") or {}).items() if v is not None},
        error=a.get("error"), timings={k: float(v) for k, v in (a.get("timings") or {}).items()},
        worker=a.get("worker"),
    )


def result_from_trial(t: LedgerTrial) -> EvalResult:
    """Rebuild the ``EvalResult`` a finished trial recorded (for duplicates and replays)."""
    from autocompress.evaluators import EvalResult

    a = t.user_attrs
    metrics = {k: (math.nan if v is None else float(v)) for k, v in (a.get("metrics") or {}).items()}
    fidelity = a.get("fidelity", "full")
    fidelity = fidelity if fidelity in ("low", "full") else "full"
    if a.get("status") == "ok":
        return EvalResult(metrics=metrics, timings=dict(a.get("timings") or {}), fidelity=fidelity,
                          cached=True)
    return EvalResult(metrics=metrics, fidelity=fidelity, status="failed",
                      error=str(a.get("error") or "failed"), cached=True)


__all__ = [
    "COUNTED_STATUSES",
    "TRIAL_STATUSES",
    "ProgressCallback",
    "SearchProgress",
    "SearchResult",
    "TrialRecord",
    "finite",
    "n_screened",
    "record_from_trial",
    "result_from_trial",
    "safe_evaluate",
]
