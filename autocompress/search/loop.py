"""The search loop: admit a proposal, evaluate it, record it, tell the searcher.

``SearchLoop`` works on an open ``SearchSession`` (the run directory, the ledger, the recording).
Its admission rule (:meth:`SearchLoop.admit`: no model evaluated twice, the ledger's total shared
with every process) and its recording of one evaluated candidate are what both backends apply;
:meth:`SearchLoop.run` is the local backend's ask / evaluate / tell loop, and the Ray backend
(``ray_backend/``) drives Tune with the same admission. The rules themselves (counting,
duplicates, resume, multi-fidelity, failures) are described in ``runner.py``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from autocompress.search import storage as st
from autocompress.search._interrupts import Interrupts
from autocompress.search.base import BaseSearcher, create_searcher, searcher_class
from autocompress.search.ledger import Ledger, LedgerTrial, TrialHandle
from autocompress.search.records import (
    COUNTED_STATUSES,
    SearchResult,
    TrialRecord,
    finite,
    result_from_trial,
    safe_evaluate,
)
from autocompress.search.resume import reconcile
from autocompress.search.session import SearchSession, StudyView

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult


class SearchLoop:
    """Admits, evaluates and records the candidates of one process on an open session.

    Args:
        session: the open run (closed by its owner, not here).
    """

    def __init__(self, session: SearchSession) -> None:
        self.session = session
        self._abandoned: set[int] = set()  # untagged trials of killed processes (see _settle)

    def run(self) -> SearchResult:
        """Ask, evaluate, tell and record until the ledger holds ``spec.trials`` candidates."""
        spec = self.session.spec
        cls = searcher_class(spec.strategy)
        searcher = create_searcher(spec.strategy, self.session.make_context(),
                                   seed=self.session.searcher_seed(cls.uses_optuna_study),
                                   **dict(spec.strategy_settings))
        held = getattr(getattr(searcher, "projector", None), "held", ())
        if held:
            self.session.emit("setup", message=f"{', '.join(held)}: no objective or budget depends "
                                                "on it; held uncompressed (add bops or latency to search it)")
        tell_ledger = self.session.ledger.for_searcher(searcher)
        reconcile(self.session, tell_ledger, requeue=cls.uses_optuna_study)
        prescreen = bool(getattr(searcher, "prescreen", True)) and bool(spec.budgets)
        idle_cap = max(100, 5 * spec.trials)
        idle = 0
        done_here = 0
        started = time.perf_counter()
        view = self.session.view()
        self.session.emit("start", done=view.counted,
                          message=f"{spec.strategy}: {view.counted}/{spec.trials} done")
        stop_reason = "completed"
        guard = Interrupts()
        try:
            guard.__enter__()
            while True:
                with guard.critical():
                    view = self.session.view()
                    if view.counted >= spec.trials:
                        break
                    if idle >= idle_cap:
                        stop_reason = f"the strategy proposed {idle} candidates in a row that were already evaluated"
                        break
                    policy = searcher.ask()
                    if policy is None:
                        stop_reason = f"{spec.strategy} has nothing more to propose"
                        break
                    otrial = searcher.optuna_trial(policy)
                    verdict, trial = self.admit(policy, searcher, view, tell_ledger, otrial=otrial,
                                                prescreen=prescreen)
                    if verdict == "surplus":
                        break
                    if verdict != "evaluate":
                        idle += 1
                        continue
                    with guard.allowed():  # an evaluation may take long: Ctrl-C at once
                        result, evaluations = self.evaluate_candidate(policy, trial)
                    record = self.finish(trial, policy, result, evaluations, searcher,
                                         optuna_owned=otrial is not None)
                    idle = 0
                    done_here += 1
                    self.session.worker = st.heartbeat(self.session.ledger, self.session.worker)
                    view = self.session.view()
                    self.session.write_pareto(view.records)
                    if self.session.progress_cb is not None:
                        self.session.progress_cb(self.session.progress_from_view(
                            view, "trial", started=started, done_here=done_here, last=record))
        except KeyboardInterrupt:
            guard.depth += 1  # no second interrupt while the ledger is tidied up
            # Leave a consistent ledger: this process's open trial is finished from its final
            # trials.jsonl line if it got that far, else marked interrupted (and re-queued).
            searcher.close()
            for t in searcher.open_trials():  # asked but not tagged yet: make them ours
                if "worker" not in t.user_attrs:
                    t.set_user_attr("worker", self.session.worker.uuid)
            reconcile(self.session, tell_ledger, requeue=cls.uses_optuna_study, own=True)
            self.session.write_pareto()
            raise
        finally:
            guard.__exit__(None, None, None)
        searcher.close()
        self._wait_for_others()
        out = self.session.result(stop_reason)
        view = self.session.view()
        self._finish_progress(view, started, done_here, stop_reason)
        return out

    def _wait_for_others(self) -> None:
        """Wait for the candidates other live processes are still evaluating (a full ledger
        stops this one while they finish their last), so the front this run writes covers the
        whole shared ledger, not only the part that was final when this process stopped."""
        me = self.session.worker.uuid
        for t in self.session.ledger.trials(running=True):
            if t.user_attrs.get("worker") not in (None, me):
                self._wait_for(t.number)

    def _finish_progress(self, view: StudyView, started: float, done_here: int, reason: str) -> None:
        if self.session.progress_cb is not None:
            self.session.progress_cb(self.session.progress_from_view(
                view, "done", started=started, done_here=done_here, message=reason))

    def admit(self, policy: CompressionPolicy, searcher: Any, view: StudyView,
              tell_ledger: Ledger, *, otrial: TrialHandle | None = None, prescreen: bool = False
              ) -> tuple[str, TrialHandle | None]:
        """Whether a proposed ``policy`` is evaluated: the rule both backends apply.

        Every process sharing the ledger (local loops, a Ray driver, on any machine) decides
        here, so the ledger ends with ``spec.trials`` counted candidates, each model once.

        Args:
            policy: the proposal.
            searcher: what proposed it: told the recorded result of a model evaluated already
                (or the predicted stand-in of an infeasible one), or that it is discarded
                (``tell``/``discard``, as ``BaseSearcher``).
            view: the ledger as the caller last read it.
            tell_ledger: what finishes ``otrial`` (``Ledger.for_searcher``).
            otrial: the Optuna trial the searcher created for the proposal (Optuna strategies);
                None: a trial is created here.
            prescreen: record a proposal whose predicted costs break a hard budget as
                ``infeasible`` without evaluating it.

        Returns:
            ``("evaluate", trial)``: a new candidate, its trial created and tagged.
            ``("skip", None)``: evaluated already (or being evaluated by another live process),
            or infeasible on its predicted costs; the searcher was told or the proposal discarded.
            ``("surplus", None)``: the ledger holds ``spec.trials`` counted candidates already
            (another process got there first); stop asking.
        """
        spec = self.session.spec
        ledger = self.session.ledger
        one_at_a_time = searcher_class(spec.strategy).max_pending == 1
        key = self.session.structure_key(policy)

        # 1. already evaluated in the ledger: answer from the record.
        prev = view.final_by_key.get(key)
        if prev is None and key in view.running_by_key and one_at_a_time:
            prev = self._wait_for(view.running_by_key[key].number)
        elif prev is None and key in view.running_by_key:
            if otrial is not None:
                otrial.set_user_attr("duplicate_of", view.running_by_key[key].number)
                otrial.set_user_attr("status", "duplicate")
                tell_ledger.finish(otrial, None)
                searcher.discard(policy)
            return "skip", None
        if prev is not None:
            if otrial is not None:
                otrial.set_user_attr("duplicate_of", prev.number)
                otrial.set_user_attr("status", "duplicate")
            searcher.tell(policy, result_from_trial(prev))
            return "skip", None

        # 2. predicted to break a hard budget: record without evaluating.
        if prescreen and not self.session.make_context().predicted_feasible(policy):
            from autocompress.evaluators import EvalResult

            trial = otrial if otrial is not None else ledger.ask()
            standin, predicted = self.session.standin_result(policy)
            shown = EvalResult(metrics=predicted, fidelity="low")
            violations = self.session.make_context().predicted_violations(policy)
            self._tag(trial, policy)
            self.session.record_attrs(trial, policy, shown, "infeasible", False, violations,
                                      fidelity="predicted")
            self.session.log_evaluation(trial.number, policy, shown, status="infeasible",
                                        final=True, feasible=False, violations=violations,
                                        fidelity="predicted")
            if otrial is None:
                ledger.finish(trial, None)
            searcher.tell(policy, standin)
            return "skip", None

        # 3. a new candidate, unless another process filled the ledger or took this model
        # between the view and the trial's creation (the lower-numbered trial wins).
        trial = otrial if otrial is not None else ledger.ask()
        self._tag(trial, policy)
        self._settle(trial.number)
        if self.session.counted_before(trial.number) >= spec.trials:
            trial.set_user_attr("status", "surplus")
            tell_ledger.finish(trial, None)
            searcher.discard(policy)
            return "surplus", None
        twin = self.earlier_twin(trial.number, key)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("status", "duplicate")
            tell_ledger.finish(trial, None)
            searcher.discard(policy)
            if one_at_a_time:  # it needs this result before it can go on
                done = (twin if twin.user_attrs.get("status") in COUNTED_STATUSES
                        else self._wait_for(twin.number))
                searcher.tell(policy, result_from_trial(done) if done is not None else _lost(policy))
            return "skip", None
        return "evaluate", trial

    #: Seconds a new trial waits for lower-numbered ones to be tagged (see ``_settle``).
    SETTLE_S = 5.0

    def _settle(self, number: int, poll_s: float = 0.02) -> None:
        """Wait until every running trial numbered below ``number`` names its model (or has a
        status).

        A process tags its trial right after creating it. Without this wait, a process checking
        for an earlier twin could read a lower-numbered trial of the same model before it was
        tagged, while that trial's process, checking only lower numbers, misses this one: both
        would evaluate the model. A trial still untagged after ``SETTLE_S`` belongs to a process
        killed between creating and tagging it; it is not waited for again.
        """
        deadline = time.monotonic() + self.SETTLE_S
        while True:
            running = self.session.ledger.trials(running=True)
            untagged = {t.number for t in running
                        if t.number < number and t.number not in self._abandoned
                        and "structure_key" not in t.user_attrs and t.user_attrs.get("status") is None}
            if not untagged:
                return
            if time.monotonic() >= deadline:
                self._abandoned |= untagged
                return
            time.sleep(poll_s)

    def earlier_twin(self, number: int, key: str) -> LedgerTrial | None:
        """A lower-numbered trial of the same policy that is final or running in a live process.

        Closes the race of two processes creating trials for one policy at the same moment:
        the higher-numbered trial backs off.
        """
        workers = st.study_workers(self.session.ledger)
        for t in self.session.ledger.trials():
            if t.number >= number or key not in (t.user_attrs.get("structure_key"),
                                                 t.user_attrs.get("policy_key")):
                continue
            status = t.user_attrs.get("status")
            if status in COUNTED_STATUSES:
                return t
            if status is None and t.running:
                w = workers.get(t.user_attrs.get("worker", ""))
                if w is not None and w.alive():
                    return t
        return None

    def _tag(self, trial: TrialHandle, policy: CompressionPolicy) -> None:
        trial.set_user_attr("worker", self.session.worker.uuid)
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("policy_key", policy.key())
        trial.set_user_attr("structure_key", self.session.structure_key(policy))
        trial.set_user_attr("strategy", self.session.spec.strategy)

    def _wait_for(self, number: int, poll_s: float = 0.25) -> LedgerTrial | None:
        """Wait until trial ``number`` (another live process's) is final; the trial, or
        None when it ended without a result (then this process evaluates the candidate)."""
        while True:
            t = self.session.ledger.trial(number)
            status = t.user_attrs.get("status")
            if status in COUNTED_STATUSES:
                return t
            if status is not None:
                return None
            owner = st.study_workers(self.session.ledger).get(t.user_attrs.get("worker", ""))
            if owner is None or not owner.alive():
                return None
            time.sleep(poll_s)

    def evaluate_candidate(self, policy: CompressionPolicy, trial: TrialHandle
                           ) -> tuple[EvalResult, list[EvalResult]]:
        """Evaluate at full fidelity, or low first and full only when promoted."""
        evaluate = self.session.problem.evaluator.evaluate
        if not self.session.spec.multi_fidelity:
            full = safe_evaluate(evaluate, policy, "full")
            return full, [full]
        low = safe_evaluate(evaluate, policy, "low")
        score = self.low_score(low)
        trial.set_user_attr("low_score", score)
        if score is None:
            return low, [low]
        rung = self.session.view().low_scores  # includes this trial's score (just stored)
        better = sum(s > score for s in rung)
        if better < math.ceil(self.session.spec.promote_fraction * len(rung)):
            full = safe_evaluate(evaluate, policy, "full")
            return full, [low, full]
        return low, [low]

    def low_score(self, result: EvalResult) -> float | None:
        """The scalar ranking low-fidelity candidates (accuracy, or the first maximised objective)."""
        if not result.ok:
            return None
        name = "acc"
        if "acc" not in [o.name for o in self.session.spec.objectives]:
            name = next((o.name for o in self.session.spec.objectives
                         if o.direction == "maximize"), "acc")
        v = result.metrics.get(name)
        return float(v) if finite(v) else None

    def finish(self, trial: TrialHandle, policy: CompressionPolicy, result: EvalResult,
               evaluations: list[EvalResult], searcher: BaseSearcher, *, optuna_owned: bool
               ) -> TrialRecord:
        """Record the evaluations (``trials.jsonl`` first, then the ledger) and tell the searcher
        (an Optuna strategy finishes the trial it asked itself)."""
        status = "ok" if result.ok else "failed"
        feasible, violations = self.session.feasibility(policy, result)
        feasible = feasible and result.fidelity == "full"
        for ev in evaluations[:-1]:
            f_ok, f_viol = self.session.feasibility(policy, ev)
            self.session.log_evaluation(trial.number, policy, ev,
                                        status="ok" if ev.ok else "failed", final=False,
                                        feasible=f_ok and ev.fidelity == "full", violations=f_viol)
        self.session.log_evaluation(trial.number, policy, result, status=status, final=True,
                                    feasible=feasible, violations=violations)
        self.session.record_attrs(trial, policy, result, status, feasible, violations)
        if optuna_owned:
            searcher.tell(policy, result)
        else:
            values = self.session.objective_values(result.metrics)
            if status == "ok" and values is not None:
                self.session.ledger.finish(trial, values,
                                           self.session.constraints(policy, result.metrics))
            else:
                self.session.ledger.finish(trial, None)
            searcher.tell(policy, result)
        return TrialRecord(
            id=int(trial.number), policy=policy, metrics=dict(result.metrics), status=status,
            fidelity=result.fidelity, feasible=feasible, violations=dict(violations),
            error=result.error, timings=dict(result.timings), worker=self.session.worker.uuid,
        )


def _lost(policy: CompressionPolicy) -> EvalResult:
    from autocompress.evaluators import EvalResult

    return EvalResult.failure("the process evaluating this candidate stopped before it finished")


__all__ = ["SearchLoop"]
