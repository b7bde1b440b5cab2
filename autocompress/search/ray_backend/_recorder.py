"""The driver's recording of Tune trials: result lines, trial attributes, progress, tells.

Both Tune searchers (``_searchers``) record through one ``_Recorder``, which also holds the
local loop's admission rule (``SearchLoop.admit``), so a Ray run writes the study,
``trials.jsonl`` and ``pareto.json`` exactly as a local run does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autocompress.search.loop import SearchLoop
from autocompress.search.ray_backend._reports import _result_from_report, _where
from autocompress.search.records import TrialRecord

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult
    from autocompress.search.ledger import Ledger
    from autocompress.search.session import SearchSession


class _Recorder:
    """Driver-side admission and recording shared by both Tune searchers."""

    def __init__(self, session: SearchSession, started: float) -> None:
        self.session = session
        self.loop = SearchLoop(session)  # its admission rule (Tune runs the loop itself)
        self.started = started
        self.done_here = 0
        self.logged_low: set[int] = set()

    def log_low(self, number: int, policy: CompressionPolicy, report: Mapping[str, Any]) -> None:
        if report.get("ac_fidelity") != "low" or number in self.logged_low or "ac_result" not in report:
            return
        res, status = _result_from_report(report, False)
        if status == "infeasible":
            return
        self.logged_low.add(number)
        s = self.session
        ok, viol = s.feasibility(policy, res)
        s.log_evaluation(number, policy, res, status=status, final=False, feasible=False, violations=viol,
                         where=_where(report))

    def record(self, trial: Any, policy: CompressionPolicy, report: Mapping[str, Any] | None,
               error: bool) -> tuple[EvalResult, str, list[float] | None]:
        """Write the final line and the trial's attributes; returns (result, status, values)."""
        from autocompress.evaluators import EvalResult

        s = self.session
        res, status = _result_from_report(report, error)
        if status == "infeasible":
            predicted = s.make_context().predicted_metrics(policy)
            shown = EvalResult(metrics=predicted, fidelity="low")
            viol = s.make_context().predicted_violations(policy)
            s.record_attrs(trial, policy, shown, "infeasible", False, viol, fidelity="predicted")
            s.log_evaluation(trial.number, policy, shown, status="infeasible", final=True,
                             feasible=False, violations=viol, fidelity="predicted", where=_where(report))
            return res, status, s.objective_values(res.metrics)
        feasible, viol = s.feasibility(policy, res)
        feasible = feasible and res.fidelity == "full"
        s.log_evaluation(trial.number, policy, res, status=status, final=True, feasible=feasible,
                         violations=viol, where=_where(report))
        s.record_attrs(trial, policy, res, status, feasible, viol)
        values = s.objective_values(res.metrics) if status == "ok" else None
        return res, status, values

    def after(self, last: TrialRecord | None) -> None:
        self.done_here += 1
        s = self.session
        view = s.view()
        s.write_pareto(view.records)
        if s.progress_cb is not None:
            s.progress_cb(s.progress_from_view(view, "trial", started=self.started,
                                               done_here=self.done_here, last=last))


def _trial_record(trial: Any, policy: CompressionPolicy, res: EvalResult, status: str,
                  session: SearchSession) -> TrialRecord:
    feasible, viol = session.feasibility(policy, res)
    return TrialRecord(id=int(trial.number), policy=policy, metrics=dict(res.metrics),
                       status=status, fidelity=res.fidelity,
                       feasible=feasible and res.fidelity == "full" and status == "ok",
                       violations=dict(viol), error=res.error, timings=dict(res.timings),
                       worker=session.worker.uuid)


class _TrialTeller:
    """``tell``/``discard`` for one Optuna trial that Tune's OptunaSearch asked (what
    ``SearchLoop.admit`` calls when the trial's model was evaluated already)."""

    def __init__(self, session: SearchSession, ledger: Ledger, trial: Any) -> None:
        self.session, self.ledger, self.trial = session, ledger, trial

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        values = self.session.objective_values(result.metrics) if result.ok else None
        if values is None:
            self.ledger.finish(self.trial, None)
            return
        self.ledger.finish(self.trial, values, self.session.constraints(policy, result.metrics))

    def discard(self, policy: CompressionPolicy) -> None:
        """Nothing to forget: admit finished the trial."""
