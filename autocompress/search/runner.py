"""The search loop: ask, evaluate (cached), tell, record; resumable, shareable, multi-fidelity.

``run_search(spec, progress=None)`` is the one public entry point (the CLI calls it). One trial of
the Optuna study is one evaluated candidate, whatever the strategy; the study is the ledger that
several processes (or a resumed process) share:

* **Counting.** ``spec.trials`` counts evaluated candidates (status ``ok`` or ``failed``) plus
  candidates being evaluated right now by live processes. A candidate rejected before evaluation
  because its *predicted* costs break a hard budget is recorded as ``infeasible`` and does not
  count. A process whose new trial would exceed the count (a race with another process) marks it
  ``surplus`` and stops, so the study ends with exactly ``trials`` candidates.
* **No duplicates.** A proposal that builds a model already evaluated in the study (the same
  ``CompressionSpace.structure_key``: kept channel counts, bits and ranks after rounding, so
  ratios that round alike count as one model) is answered with the recorded result and not
  evaluated again, and ``pareto.json`` lists each model once; one that another live process is
  evaluating right now is skipped (or, for strategies that need every result in order, waited
  for).
* **Resume.** Re-running the same command continues to ``spec.trials``. A ``RUNNING`` trial of a
  killed process is finished from its final ``trials.jsonl`` line, or marked ``interrupted``
  (Optuna strategies get its parameters re-queued); a deterministic strategy restarted with the
  same seed replays its proposals and gets the recorded results back, so it continues where it
  was killed without re-evaluating anything.
* **Multi-fidelity** (``spec.multi_fidelity``): asynchronous successive halving. Every candidate
  is scored at low fidelity; it is promoted to full fidelity when its low-fidelity score (its
  ``acc``, or first maximised objective) ranks in the top ``promote_fraction`` of all
  low-fidelity scores in the study so far (ASHA's rule with one rung). The searcher is told the
  highest-fidelity result; only full-fidelity candidates can be on the Pareto front.
* **Failures.** A candidate whose compression or evaluation raises, or whose accuracy is NaN, is
  recorded as ``failed`` (it counts) and the search goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.search import storage as st
from autocompress.search._interrupts import Interrupts
from autocompress.search.base import (
    PREDICTED_METRICS,
    BaseSearcher,
    SearchContext,
    create_searcher,
    searcher_class,
)
from autocompress.search.pareto import pareto_report
from autocompress.search.records import (  # noqa: F401 - re-exported: the records used to live here
    COUNTED_STATUSES,
    TRIAL_STATUSES,
    ProgressCallback,
    SearchProgress,
    SearchResult,
    TrialRecord,
    n_screened,
    record_from_trial,
    result_from_trial,
    safe_evaluate,
)
from autocompress.search.records import finite as _finite
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    import optuna

    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult
    from autocompress.problem import Problem


# -- helpers -----------------------------------------------------------------------------------
def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017


def _fmt(metric: str, value: float) -> str:
    if metric == "size_bytes":
        for unit, f in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if value >= f:
                return f"{value / f:.4g}{unit}"
        return f"{value:.4g}B"
    if metric == "latency_ms":
        return f"{value:.4g}ms"
    for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= f:
            return f"{value / f:.4g}{unit}"
    return f"{value:.4g}"


@dataclass
class _View:
    """A snapshot of the study for one loop step."""

    counted: int
    final_by_key: dict[str, Any]
    running_by_key: dict[str, Any]
    low_scores: list[float]
    records: list[TrialRecord]


def build_problem(spec: SearchSpec, *, checkpoint: str | None = None,
                  cache_dir: str | None = None, progress: bool | None = None,
                  device: str | None = None) -> Problem:
    """The ``Problem`` a spec describes (trains or reuses the base model; see ``Problem.build``).

    Args:
        spec: the search spec (model, data, knobs, evaluator settings, seed).
        checkpoint: weights to load instead of ``spec.checkpoint`` (Ray workers load the
            driver's trained base model).
        cache_dir: cache root (default ``$AUTOCOMPRESS_CACHE`` or ``~/.cache/autocompress``).
        progress: show training / lookup-table progress bars (default: on a terminal).
        device: the device to use instead of ``spec.device`` (``export`` and ``finetune`` of a
            stored run name their own).
    """
    from autocompress.problem import Problem

    kwargs: dict[str, Any] = {
        "checkpoint": checkpoint if checkpoint is not None else spec.checkpoint,
        "data": spec.data, "data_root": spec.data_root, "seed": spec.seed, "knobs": spec.knobs,
        "max_prune": spec.max_prune, "round_to": spec.round_to, "importance": spec.importance,
        "evaluator": spec.evaluator,
        "cache_dir": cache_dir, "progress": progress,
        "device": device if device is not None else spec.device,
    }
    if spec.train_epochs is not None:
        kwargs["train_epochs"] = spec.train_epochs
    problem = Problem.build(spec.model, **kwargs)
    if not spec.cache:
        problem.evaluator.cache = None
    return problem


# -- the session: everything both backends share -------------------------------------------------
def _same_search(stored_identity: Any, identity_hash: str) -> bool:
    """Whether a study's stored settings, with settings added since filled in by their defaults,
    are the search of ``identity_hash`` (so a newer autocompress resumes an older run)."""
    if not isinstance(stored_identity, Mapping):
        return False
    fields = set(SearchSpec.field_names())
    if not set(stored_identity) <= fields:
        return False
    try:
        return SearchSpec.from_dict(dict(stored_identity)).identity_hash() == identity_hash
    except (UserInputError, TypeError, ValueError):
        return False


class SearchSession:
    """Builds the problem, the storage and the context of a spec, and records candidates.

    The local loop (:meth:`run_local`) and the Ray backend share it, so both write the same
    study, ``trials.jsonl`` and ``pareto.json``.
    """

    def __init__(self, spec: SearchSpec, progress: ProgressCallback | None = None, *,
                 problem: Problem | None = None) -> None:
        self.t_start = time.perf_counter()
        self.progress_cb = progress
        before = st.read_spec(spec.run_dir) if spec.run_dir.is_dir() else None
        self.spec = st.prepare_run_dir(spec)
        self.run_dir = self.spec.run_dir
        # Held while this process uses the run directory: --force elsewhere is refused meanwhile.
        self.run_lock = st.RunLock(self.run_dir)
        self.run_lock.acquire(create=False)
        applied = st.applied_changes(before, self.spec) if self.spec.run_dir == spec.run_dir else []
        if applied:
            self._emit("setup", message=f"continuing the stored search with {', '.join(applied)} "
                                        "(recorded in spec.json)")
        searcher_class(self.spec.strategy)  # import the strategy early (bad installs fail fast)
        self._emit("setup", message=f"building {self.spec.model} on {self.spec.data}")
        self.problem = problem if problem is not None else self._build_problem()
        self._emit("setup", message="scoring the base model")
        base = self.problem.base
        if not base.ok:
            raise UserInputError(f"the base model could not be evaluated: {base.error}")
        self.base_metrics = {k: float(v) for k, v in base.metrics.items() if _finite(v)}
        self.predict_latency = self._latency_predictor()
        self.limits = self._resolve_budgets()
        # The run directory is written only once the problem builds and the budgets are sane.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_lock.acquire(create=True)
        self.log = st.TrialLog(self.run_dir / st.TRIALS_FILE)
        self.log.repair()
        self.storage = st.open_storage(self.spec)
        self.study = self._open_study()
        st.write_spec(self.run_dir, self.spec, {"num_classes": self.problem.num_classes,
                                                "input_shape": list(self.problem.input_shape),
                                                # what round_to "auto" resolved to on this machine
                                                "round_to_used": self.problem.space.round_to})
        st.atomic_write_text(self.run_dir / st.BASE_FILE, _json({
            "metrics": self.base_metrics, "latency_info": dict(base.latency_info),
            "timings": dict(base.timings), "model": self.spec.model, "data": self.spec.data,
            "checkpoint": str(self.problem.checkpoint_path) if self.problem.checkpoint_path else None,
        }))
        self.worker = st.register_worker(self.study)
        self._abandoned: set[int] = set()  # untagged trials of killed processes (see _settle)

    # -- setup ------------------------------------------------------------------------------
    def _emit(self, phase: str, **kw: Any) -> None:
        if self.progress_cb is not None:
            self.progress_cb(SearchProgress(phase=phase, total=self.spec.trials,
                                            elapsed_s=time.perf_counter() - self.t_start, **kw))

    def _build_problem(self) -> Problem:
        return build_problem(self.spec)

    def _latency_predictor(self) -> Callable[[CompressionPolicy], float] | None:
        if self.spec.evaluator.latency != "predicted":
            return None
        lut = self.problem.evaluator.get_lut()
        return lambda policy: float(lut.predict(policy))

    def _resolve_budgets(self) -> dict[str, float]:
        """Absolute limits of the hard budgets; an unreachable one raises with the floor value."""
        space = self.problem.space
        most = space.most_compressed()
        ctx = self.make_context()
        floor = ctx.predicted_metrics(most)
        limits: dict[str, float] = {}
        for b in (*self.spec.budgets, *self.spec.soft_budgets):
            if b.name != "acc-drop" and b.metric not in self.base_metrics and b.relative:
                raise UserInputError(
                    f"budget {b.text} is relative, but the evaluator reports no {b.metric!r} for the "
                    "base model" + (" (turn latency on in the evaluator settings)" if b.name == "latency" else "")
                )
            limit = b.limit(self.base_metrics)
            if b in self.spec.budgets:
                limits[b.name] = limit
            lowest = floor.get(b.metric)
            if lowest is None and b.metric == "latency_ms" and b in self.spec.budgets:
                # Measured latency: time the most compressed model once.
                res = safe_evaluate(self.problem.evaluator.evaluate, most, "low")
                lowest = res.metrics.get("latency_ms")
            if b.name != "acc-drop" and _finite(lowest) and limit < float(lowest) * (1 - 1e-9):
                base_v = self.base_metrics.get(b.metric)
                share = f" ({float(lowest) / base_v:.1%} of the base model's {_fmt(b.metric, base_v)})" if base_v else ""
                raise UserInputError(
                    f"budget {b.text} is unreachable: no policy in this space gets {b.metric} below "
                    f"{_fmt(b.metric, limit)}; the smallest reachable value is "
                    f"{b.name}={_fmt(b.metric, float(lowest))}{share}"
                )
        return limits

    def make_context(self) -> SearchContext:
        """The searcher's view of the problem."""
        return SearchContext(
            space=self.problem.space, objectives=self.spec.objectives, budgets=self.spec.budgets,
            soft_budgets=self.spec.soft_budgets, base_metrics=self.base_metrics,
            limits=getattr(self, "limits", {}), problem=self.problem,
            storage=getattr(self, "storage", None), study_name=self.spec.study_name,
            trials=self.spec.trials, run_dir=self.run_dir,
            predict_latency=getattr(self, "predict_latency", None),
            owner=getattr(getattr(self, "worker", None), "uuid", None),
        )

    def _open_study(self) -> optuna.Study:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.spec
        directions = spec.directions
        try:
            study = optuna.create_study(storage=self.storage, study_name=spec.study_name,
                                        directions=directions, load_if_exists=True)
        except ValueError as exc:
            raise UserInputError(
                f"study {spec.study_name!r} in storage {st.storage_url_for(spec)!r} cannot be used: {exc}"
            ) from None
        if [d.name.lower() for d in study.directions] != directions:
            raise UserInputError(
                f"study {spec.study_name!r} in {st.storage_url_for(spec)!r} optimises "
                f"{[d.name.lower() for d in study.directions]}, not {directions}; use another "
                "--study-name or storage"
            )
        stored = study.user_attrs.get("autocompress_identity")
        mine = spec.identity_hash()
        if stored is None:
            study.set_user_attr("autocompress_identity", mine)
            study.set_user_attr("autocompress_spec", st.jsonable(spec.identity()))
        elif stored != mine and _same_search(study.user_attrs.get("autocompress_spec"), mine):
            # Written by a version without some newer setting, all of them at their defaults.
            study.set_user_attr("autocompress_identity", mine)
            study.set_user_attr("autocompress_spec", st.jsonable(spec.identity()))
        elif stored != mine and not spec.resume:
            if spec.force:
                optuna.delete_study(study_name=spec.study_name, storage=self.storage)
                return self._open_study()
            raise UserInputError(
                f"study {spec.study_name!r} in {st.storage_url_for(spec)!r} belongs to a different "
                "search; use another --study-name, --resume to continue it, or --force to replace it"
            )
        return study

    # -- the study view ---------------------------------------------------------------------
    def view(self) -> _View:
        from optuna.trial import TrialState

        workers = st.study_workers(self.study)
        alive: dict[str, bool] = {}

        def owner_alive(uid: str | None) -> bool:
            if uid is None:
                return False
            if uid not in alive:
                w = workers.get(uid)
                alive[uid] = uid == self.worker.uuid or (w is not None and w.alive())
            return alive[uid]

        counted = 0
        final: dict[str, Any] = {}
        running: dict[str, Any] = {}
        low: list[float] = []
        records: list[TrialRecord] = []
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            status = a.get("status")
            if a.get("low_score") is not None:
                low.append(float(a["low_score"]))
            # Indexed by policy key and by structure key (the model it builds): a proposal
            # matching either was evaluated already.
            keys = [a[k] for k in ("policy_key", "structure_key") if k in a]
            if status in COUNTED_STATUSES:
                counted += 1
                for k in keys:
                    final.setdefault(k, t)
            elif t.state == TrialState.RUNNING and status is None and owner_alive(a.get("worker")):
                counted += 1
                for k in keys:
                    running.setdefault(k, t)
            rec = record_from_trial(t) if status in ("ok", "failed", "infeasible") else None
            if rec is not None:
                records.append(rec)
        return _View(counted, final, running, low, records)

    def counted_before(self, number: int) -> int:
        """Counted trials numbered below ``number`` (the race check after creating a trial)."""
        from optuna.trial import TrialState

        workers = st.study_workers(self.study)
        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.number >= number:
                continue
            a = t.user_attrs
            if a.get("status") in COUNTED_STATUSES:
                n += 1
            elif t.state == TrialState.RUNNING and a.get("status") is None:
                w = workers.get(a.get("worker", ""))
                if w is not None and (w.uuid == self.worker.uuid or w.alive()):
                    n += 1
        return n

    # -- recording --------------------------------------------------------------------------
    def feasibility(self, policy: CompressionPolicy, result: EvalResult) -> tuple[bool, dict[str, float]]:
        """(feasible, violations) of an evaluated candidate against the hard budgets."""
        ctx = self.make_context()
        violations = ctx.violations(result.metrics, policy) if self.spec.budgets else {}
        ok = result.ok and all(v <= 0.0 for v in violations.values())
        return ok, violations

    def log_evaluation(self, number: int, policy: CompressionPolicy, result: EvalResult, *,
                       status: str, final: bool, feasible: bool, violations: Mapping[str, float],
                       fidelity: str | None = None) -> None:
        """Append one line to ``trials.jsonl``."""
        self.log.append({
            "v": st.TRIAL_RECORD_VERSION, "id": number, "trial": number,
            "study": self.spec.study_name, "worker": self.worker.uuid,
            "strategy": self.spec.strategy, "policy": policy.to_dict(), "policy_key": policy.key(),
            "fidelity": fidelity or result.fidelity, "status": status, "metrics": dict(result.metrics),
            "timings": dict(result.timings), "latency_info": dict(result.latency_info),
            "error": result.error, "cached": result.cached, "feasible": feasible,
            "violations": dict(violations), "final": final, "time": _now_iso(),
        })

    def trial_attrs(self, policy: CompressionPolicy, result: EvalResult, status: str,
                    feasible: bool, violations: Mapping[str, float], fidelity: str | None = None
                    ) -> dict[str, Any]:
        """The user attributes a finished trial carries."""
        return st.jsonable({
            "status": status, "metrics": dict(result.metrics), "fidelity": fidelity or result.fidelity,
            "feasible": feasible, "violations": dict(violations),
            "error": result.error, "timings": dict(result.timings), "cached": result.cached,
        })

    def objective_values(self, metrics: Mapping[str, float]) -> list[float] | None:
        """Objective values in order, None when one is missing or not finite."""
        vals = [metrics.get(o.name) for o in self.spec.objectives]
        if all(_finite(v) for v in vals):
            return [float(v) for v in vals]  # type: ignore[arg-type]
        return None

    def standin_result(self, policy: CompressionPolicy) -> tuple[EvalResult, dict[str, float]]:
        """(stand-in result, predicted metrics) for a candidate rejected on predicted costs.

        Optuna needs objective values for a completed trial: the predicted costs are real, and
        maximised objectives that were not measured stand in as 0. The trial's constraints
        (predicted violations) mark it infeasible, so samplers rank it behind every feasible
        trial whatever those values are.
        """
        from autocompress.evaluators import EvalResult

        predicted = self.make_context().predicted_metrics(policy)
        values = dict(predicted)
        for o in self.spec.objectives:
            if o.name not in values:
                values[o.name] = 0.0 if o.direction == "maximize" else float(
                    self.base_metrics.get(o.name, 0.0))
        return EvalResult(metrics=values, fidelity="low"), predicted

    def set_constraints(self, trial: Any, policy: CompressionPolicy, metrics: Mapping[str, float]
                        ) -> None:
        """Hard budgets as Optuna constraints on ``trial`` (``<= 0`` feasible)."""
        if self.spec.budgets:
            from autocompress.search.optuna_searcher import constraint_values, set_constraints

            set_constraints(trial, constraint_values(self.make_context(), policy, metrics))

    # -- results ----------------------------------------------------------------------------
    def write_pareto(self, records: list[TrialRecord] | None = None) -> dict[str, Any]:
        """Compute the front over the study's feasible full-fidelity candidates; write it."""
        if records is None:
            records = self.view().records
        feasible = [r for r in records if r.feasible and r.status == "ok" and r.fidelity == "full"]
        # One point per distinct model: candidates that build the same model (ratios rounding to
        # the same channel counts, bits and ranks) are listed once, under the earliest id.
        seen: set[str] = set()
        distinct = []
        for r in sorted(feasible, key=lambda r: r.id):
            skey = self.structure_key(r.policy)
            if skey not in seen:
                seen.add(skey)
                distinct.append(r)
        feasible = distinct
        cands = [{"id": r.id, "policy": r.policy.to_dict(), "metrics": r.metrics,
                  "fidelity": r.fidelity, "status": r.status, "feasible": True} for r in feasible]
        objectives = [(o.name, o.direction) for o in self.spec.objectives]
        n_failed = sum(r.status == "failed" for r in records)
        report = pareto_report(cands, objectives, base_metrics=self.base_metrics, extra={
            "base": self.base_metrics,
            "budgets": [b.text for b in self.spec.budgets],
            "budget_limits": {k: v for k, v in self.limits.items()},
            "soft_budgets": [b.text for b in self.spec.soft_budgets],
            "strategy": self.spec.strategy, "seed": self.spec.seed,
            "study_name": self.spec.study_name, "storage": st.storage_url_for(self.spec),
            "n_candidates": sum(r.status in COUNTED_STATUSES for r in records),
            "n_failed": n_failed, "n_infeasible_predicted": sum(r.status == "infeasible" for r in records),
            "n_screened_low_fidelity": n_screened(records),
            "updated": _now_iso(),
        })
        if len(objectives) > 3:
            report["hypervolume"] = None
            report["hypervolume_note"] = "exact hypervolume is reported for 2 or 3 objectives"
        st.atomic_write_text(self.run_dir / st.PARETO_FILE, _json(report))
        return report

    def progress_from_view(self, view: _View, phase: str, *, started: float, done_here: int,
                           message: str = "", last: TrialRecord | None = None) -> SearchProgress:
        """Progress numbers from a study snapshot."""
        feas = [r for r in view.records if r.feasible and r.status == "ok" and r.fidelity == "full"]
        best = max(feas, key=lambda r: r.metrics.get("acc", -math.inf), default=None)
        elapsed = time.perf_counter() - self.t_start
        remaining = max(0, self.spec.trials - view.counted)
        pace = (time.perf_counter() - started) / done_here if done_here else None
        return SearchProgress(
            phase=phase, done=view.counted, total=self.spec.trials, feasible=len(feas),
            failed=sum(r.status == "failed" for r in view.records),
            best_acc=None if best is None else best.metrics.get("acc"),
            best_id=None if best is None else best.id, elapsed_s=elapsed,
            eta_s=None if pace is None else pace * remaining, message=message, last=last,
        )

    def result(self, stop_reason: str) -> SearchResult:
        """The ``SearchResult`` of the study as it stands (and ``pareto.json`` written), with the
        front's test top-1 and the ``finetune_top`` fine-tunes (``report.finetune.finish_search``)."""
        from autocompress.report.finetune import finish_search

        records = self.view().records
        report = self.write_pareto(records)
        done = sum(r.status in COUNTED_STATUSES for r in records)
        finish = finish_search(self.run_dir, self.problem, finetune_top=self.spec.finetune_top,
                               finetune_epochs=self.spec.finetune_epochs, seed=self.spec.seed,
                               on_message=lambda m: self._emit("finetune", done=done, message=m))
        if finish.test_acc:  # each point now carries its test_acc
            import json

            report = json.loads((self.run_dir / st.PARETO_FILE).read_text())
        by_id = {r.id: r for r in records}
        front = tuple(by_id[p["id"]] for p in report["points"] if p["id"] in by_id)
        feas = [r for r in records if r.feasible and r.status == "ok" and r.fidelity == "full"]
        best = max(feas, key=lambda r: r.metrics.get("acc", -math.inf), default=None)
        knee = by_id.get(report["knee"]) if report.get("knee") is not None else None
        return SearchResult(
            run_dir=self.run_dir, spec=self.spec, trials=tuple(records), front=front,
            pareto=report, base_metrics=dict(self.base_metrics), hypervolume=report.get("hypervolume"),
            knee=knee, best=best,
            n_evaluated=sum(r.status in COUNTED_STATUSES for r in records),
            n_feasible=len(feas), n_failed=sum(r.status == "failed" for r in records),
            elapsed_s=time.perf_counter() - self.t_start, stop_reason=stop_reason,
            n_screened=n_screened(records), test_acc=dict(finish.test_acc),
            base_test_acc=finish.base_test_acc, finetuned=finish.finetuned,
        )

    # -- stale trials -----------------------------------------------------------------------
    def reconcile(self, tell_study: optuna.Study, requeue: bool, own: bool = False) -> list[int]:
        """Finish ``RUNNING`` trials of dead processes (and this one's with ``own``); returns
        their numbers.

        From its final ``trials.jsonl`` line when the killed process got that far (nothing is
        lost), else ``interrupted`` (the candidate is evaluated again later: Optuna strategies get
        its parameters re-queued; deterministic ones re-propose it).
        """
        import optuna
        from optuna.trial import TrialState

        workers = st.study_workers(self.study)
        now = time.time()
        finals: dict[int, dict[str, Any]] | None = None
        fixed = []
        others_alive = any(w.uuid != self.worker.uuid and w.alive(now) for w in workers.values())
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("worker")
            if owner is None:
                # Killed between creating the trial and tagging it. With no other live process
                # on the study nobody can still own it; otherwise give its owner time to tag it.
                started = t.datetime_start.timestamp() if t.datetime_start else now
                if others_alive and now - started < st.OWNERLESS_AFTER_S:
                    continue
            else:
                w = workers.get(owner)
                if owner == self.worker.uuid:
                    if not own:
                        continue
                elif w is not None and w.alive(now):
                    continue
            if finals is None:
                finals = {}
                for rec in self.log.read():
                    if rec.get("final") and rec.get("study") == self.spec.study_name:
                        finals[int(rec["trial"])] = rec
            rec = finals.get(t.number)
            # NOTE: the trial belongs to a dead process; Optuna has no public handle on another
            # process's running trial, so one is made from its id.
            trial = optuna.trial.Trial(tell_study, t._trial_id)  # noqa: SLF001
            if rec is not None and rec.get("status") in ("ok", "failed", "infeasible"):
                policy = _policy(rec["policy"])
                metrics = {k: (math.nan if v is None else float(v))
                           for k, v in (rec.get("metrics") or {}).items()}
                attrs = st.jsonable({
                    "status": rec["status"], "metrics": metrics,
                    "fidelity": rec.get("fidelity", "full"), "feasible": bool(rec.get("feasible")),
                    "violations": rec.get("violations") or {}, "error": rec.get("error"),
                    "timings": rec.get("timings") or {}, "recovered": True,
                })
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)
                if rec["status"] == "infeasible":
                    metrics = self.standin_result(policy)[0].metrics
                values = self.objective_values(metrics)
                if rec["status"] in ("ok", "infeasible") and values is not None and (
                        rec["status"] == "ok" or requeue):
                    self.set_constraints(trial, policy, metrics)
                    tell_study.tell(trial, values)
                else:
                    tell_study.tell(trial, state=TrialState.FAIL)
            else:
                trial.set_user_attr("status", "interrupted")
                tell_study.tell(trial, state=TrialState.FAIL)
                if requeue and t.params:
                    _requeue(tell_study, dict(t.params), t.number)
            fixed.append(t.number)
        return fixed

    def close(self) -> None:
        """Unregister this worker, release the run's lock and the evaluator's cache connection."""
        try:
            st.unregister_worker(self.study, self.worker)
        except Exception:  # noqa: BLE001 - best effort: a dead worker is detected by pid anyway
            pass
        self.run_lock.release()
        cache = getattr(self.problem.evaluator, "cache", None)
        if cache is not None and hasattr(cache, "close"):
            cache.close()

    # -- the local loop ---------------------------------------------------------------------
    def searcher_seed(self, uses_study: bool) -> int:
        """The searcher's seed for this process (see ``storage.register_worker``)."""
        rank = self.worker.rank
        if uses_study:
            n = len(self.study.get_trials(deepcopy=False))
            return self.spec.seed if rank == 0 and n == 0 else st.derive_seed(self.spec.seed, rank, n)
        return self.spec.seed if rank == 0 else st.derive_seed(self.spec.seed, rank)

    def run_local(self) -> SearchResult:
        """Ask, evaluate, tell and record until the study holds ``spec.trials`` candidates."""
        spec = self.spec
        cls = searcher_class(spec.strategy)
        searcher = create_searcher(spec.strategy, self.make_context(),
                                   seed=self.searcher_seed(cls.uses_optuna_study),
                                   **dict(spec.strategy_settings))
        held = getattr(getattr(searcher, "projector", None), "held", ())
        if held:
            self._emit("setup", message=f"{', '.join(held)}: no objective or budget depends on it; "
                                        "held uncompressed (add bops or latency to search it)")
        tell_study = getattr(searcher, "study", None) or self.study
        self.reconcile(tell_study, requeue=cls.uses_optuna_study)
        prescreen = bool(getattr(searcher, "prescreen", True)) and bool(spec.budgets)
        idle_cap = max(100, 5 * spec.trials)
        idle = 0
        done_here = 0
        started = time.perf_counter()
        view = self.view()
        self._emit("start", done=view.counted, message=f"{spec.strategy}: {view.counted}/{spec.trials} done")
        stop_reason = "completed"
        guard = Interrupts()
        try:
            guard.__enter__()
            while True:
                with guard.critical():
                    view = self.view()
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
                    verdict, trial = self.admit(policy, searcher, view, tell_study, otrial=otrial,
                                                prescreen=prescreen)
                    if verdict == "surplus":
                        break
                    if verdict != "evaluate":
                        idle += 1
                        continue
                    with guard.allowed():  # an evaluation may take long: Ctrl-C at once
                        result, evaluations = self.evaluate_candidate(policy, trial)
                    record = self.finish(trial, policy, result, evaluations, searcher, tell_study,
                                         optuna_owned=otrial is not None)
                    idle = 0
                    done_here += 1
                    self.worker = st.heartbeat(self.study, self.worker)
                    view = self.view()
                    self.write_pareto(view.records)
                    if self.progress_cb is not None:
                        self.progress_cb(self.progress_from_view(view, "trial", started=started,
                                                                 done_here=done_here, last=record))
        except KeyboardInterrupt:
            guard.depth += 1  # no second interrupt while the study is tidied up
            # Leave a consistent study: this process's open trial is finished from its final
            # trials.jsonl line if it got that far, else marked interrupted (and re-queued).
            searcher.close()
            for t in searcher.open_trials():  # asked but not tagged yet: make them ours
                if "worker" not in t.user_attrs:
                    t.set_user_attr("worker", self.worker.uuid)
            self.reconcile(tell_study, requeue=cls.uses_optuna_study, own=True)
            self.write_pareto()
            raise
        finally:
            guard.__exit__(None, None, None)
        searcher.close()
        out = self.result(stop_reason)
        view = self.view()
        self._finish_progress(view, started, done_here, stop_reason)
        return out

    def _finish_progress(self, view: _View, started: float, done_here: int, reason: str) -> None:
        if self.progress_cb is not None:
            self.progress_cb(self.progress_from_view(view, "done", started=started,
                                                     done_here=done_here, message=reason))

    def admit(self, policy: CompressionPolicy, searcher: Any, view: _View,
              tell_study: optuna.Study, *, otrial: Any = None, prescreen: bool = False
              ) -> tuple[str, Any]:
        """Whether a proposed ``policy`` is evaluated: the rule both backends apply.

        Every process sharing the study (local loops, a Ray driver, on any machine) decides
        here, so the study ends with ``spec.trials`` counted candidates, each model once.

        Args:
            policy: the proposal.
            searcher: what proposed it: told the recorded result of a model evaluated already
                (or the predicted stand-in of an infeasible one), or that it is discarded
                (``tell``/``discard``, as ``BaseSearcher``).
            view: the study as the caller last read it.
            tell_study: the study object that finishes ``otrial``.
            otrial: the Optuna trial the searcher created for the proposal (Optuna strategies);
                None: a trial is created here.
            prescreen: record a proposal whose predicted costs break a hard budget as
                ``infeasible`` without evaluating it.

        Returns:
            ``("evaluate", trial)``: a new candidate, its trial created and tagged.
            ``("skip", None)``: evaluated already (or being evaluated by another live process),
            or infeasible on its predicted costs; the searcher was told or the proposal discarded.
            ``("surplus", None)``: the study holds ``spec.trials`` counted candidates already
            (another process got there first); stop asking.
        """
        from optuna.trial import TrialState

        spec = self.spec
        one_at_a_time = searcher_class(spec.strategy).max_pending == 1
        key = self.structure_key(policy)

        # 1. already evaluated in the study: answer from the record.
        prev = view.final_by_key.get(key)
        if prev is None and key in view.running_by_key and one_at_a_time:
            prev = self._wait_for(view.running_by_key[key].number)
        elif prev is None and key in view.running_by_key:
            if otrial is not None:
                otrial.set_user_attr("status", "duplicate")
                otrial.set_user_attr("duplicate_of", view.running_by_key[key].number)
                tell_study.tell(otrial, state=TrialState.FAIL)
                searcher.discard(policy)
            return "skip", None
        if prev is not None:
            if otrial is not None:
                otrial.set_user_attr("status", "duplicate")
                otrial.set_user_attr("duplicate_of", prev.number)
            searcher.tell(policy, result_from_trial(prev))
            return "skip", None

        # 2. predicted to break a hard budget: record without evaluating.
        if prescreen and not self.make_context().predicted_feasible(policy):
            from autocompress.evaluators import EvalResult

            trial = otrial if otrial is not None else self.study.ask()
            standin, predicted = self.standin_result(policy)
            shown = EvalResult(metrics=predicted, fidelity="low")
            violations = self.make_context().predicted_violations(policy)
            self._tag(trial, policy)
            for k, v in self.trial_attrs(policy, shown, "infeasible", False, violations,
                                         fidelity="predicted").items():
                trial.set_user_attr(k, v)
            self.log_evaluation(trial.number, policy, shown, status="infeasible", final=True,
                                feasible=False, violations=violations, fidelity="predicted")
            if otrial is None:
                self.study.tell(trial, state=TrialState.FAIL)
            searcher.tell(policy, standin)
            return "skip", None

        # 3. a new candidate, unless another process filled the study or took this model
        # between the view and the trial's creation (the lower-numbered trial wins).
        trial = otrial if otrial is not None else self.study.ask()
        self._tag(trial, policy)
        self._settle(trial.number)
        if self.counted_before(trial.number) >= spec.trials:
            trial.set_user_attr("status", "surplus")
            tell_study.tell(trial, state=TrialState.FAIL)
            searcher.discard(policy)
            return "surplus", None
        twin = self.earlier_twin(trial.number, key)
        if twin is not None:
            trial.set_user_attr("status", "duplicate")
            trial.set_user_attr("duplicate_of", twin.number)
            tell_study.tell(trial, state=TrialState.FAIL)
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
        from optuna.trial import TrialState

        deadline = time.monotonic() + self.SETTLE_S
        while True:
            untagged = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if t.number < number and t.number not in self._abandoned
                        and "structure_key" not in t.user_attrs and t.user_attrs.get("status") is None}
            if not untagged:
                return
            if time.monotonic() >= deadline:
                self._abandoned |= untagged
                return
            time.sleep(poll_s)

    def earlier_twin(self, number: int, key: str) -> Any:
        """A lower-numbered trial of the same policy that is final or running in a live process.

        Closes the race of two processes creating trials for one policy at the same moment:
        the higher-numbered trial backs off.
        """
        from optuna.trial import TrialState

        workers = st.study_workers(self.study)
        for t in self.study.get_trials(deepcopy=False):
            if t.number >= number or key not in (t.user_attrs.get("structure_key"),
                                                 t.user_attrs.get("policy_key")):
                continue
            status = t.user_attrs.get("status")
            if status in COUNTED_STATUSES:
                return t
            if status is None and t.state == TrialState.RUNNING:
                w = workers.get(t.user_attrs.get("worker", ""))
                if w is not None and w.alive():
                    return t
        return None

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Key of the model ``policy`` builds: equal for policies that compress to the same
        channel counts, bits and ranks (they are evaluated once; see ``CompressionSpace.structure``)."""
        try:
            return self.problem.space.structure_key(policy)
        except UserInputError:  # not a policy of this space: it fails on evaluation anyway
            return policy.key()

    def _tag(self, trial: Any, policy: CompressionPolicy) -> None:
        trial.set_user_attr("worker", self.worker.uuid)
        trial.set_user_attr("policy", policy.to_dict())
        trial.set_user_attr("policy_key", policy.key())
        trial.set_user_attr("structure_key", self.structure_key(policy))
        trial.set_user_attr("strategy", self.spec.strategy)

    def _wait_for(self, number: int, poll_s: float = 0.25) -> Any:
        """Wait until trial ``number`` (another live process's) is final; its frozen trial, or
        None when it ended without a result (then this process evaluates the candidate)."""
        while True:
            t = self.study.get_trials(deepcopy=False)[number]
            status = t.user_attrs.get("status")
            if status in COUNTED_STATUSES:
                return t
            if status is not None:
                return None
            owner = st.study_workers(self.study).get(t.user_attrs.get("worker", ""))
            if owner is None or not owner.alive():
                return None
            time.sleep(poll_s)

    def evaluate_candidate(self, policy: CompressionPolicy, trial: Any
                           ) -> tuple[EvalResult, list[EvalResult]]:
        """Evaluate at full fidelity, or low first and full only when promoted."""
        evaluate = self.problem.evaluator.evaluate
        if not self.spec.multi_fidelity:
            full = safe_evaluate(evaluate, policy, "full")
            return full, [full]
        low = safe_evaluate(evaluate, policy, "low")
        score = self.low_score(low)
        trial.set_user_attr("low_score", score)
        if score is None:
            return low, [low]
        rung = self.view().low_scores  # includes this trial's score (just stored)
        better = sum(s > score for s in rung)
        if better < math.ceil(self.spec.promote_fraction * len(rung)):
            full = safe_evaluate(evaluate, policy, "full")
            return full, [low, full]
        return low, [low]

    def low_score(self, result: EvalResult) -> float | None:
        """The scalar ranking low-fidelity candidates (accuracy, or the first maximised objective)."""
        if not result.ok:
            return None
        name = "acc"
        if "acc" not in [o.name for o in self.spec.objectives]:
            name = next((o.name for o in self.spec.objectives if o.direction == "maximize"), "acc")
        v = result.metrics.get(name)
        return float(v) if _finite(v) else None

    def finish(self, trial: Any, policy: CompressionPolicy, result: EvalResult,
               evaluations: list[EvalResult], searcher: BaseSearcher, tell_study: optuna.Study,
               *, optuna_owned: bool) -> TrialRecord:
        """Record the evaluations (``trials.jsonl`` first, then the study) and tell the searcher."""
        from optuna.trial import TrialState

        status = "ok" if result.ok else "failed"
        feasible, violations = self.feasibility(policy, result)
        feasible = feasible and result.fidelity == "full"
        for ev in evaluations[:-1]:
            f_ok, f_viol = self.feasibility(policy, ev)
            self.log_evaluation(trial.number, policy, ev, status="ok" if ev.ok else "failed",
                                final=False, feasible=f_ok and ev.fidelity == "full", violations=f_viol)
        self.log_evaluation(trial.number, policy, result, status=status, final=True,
                            feasible=feasible, violations=violations)
        for k, v in self.trial_attrs(policy, result, status, feasible, violations).items():
            trial.set_user_attr(k, v)
        if optuna_owned:
            searcher.tell(policy, result)
        else:
            values = self.objective_values(result.metrics)
            if status == "ok" and values is not None:
                self.set_constraints(trial, policy, result.metrics)
                self.study.tell(trial, values)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
            searcher.tell(policy, result)
        return TrialRecord(
            id=int(trial.number), policy=policy, metrics=dict(result.metrics), status=status,
            fidelity=result.fidelity, feasible=feasible, violations=dict(violations),
            error=result.error, timings=dict(result.timings), worker=self.worker.uuid,
        )


def _requeue(study: optuna.Study, params: dict[str, Any], number: int) -> None:
    """Queue ``params`` for evaluation again unless they are queued already.

    Not ``enqueue_trial(skip_if_exists=True)``: that matches any trial with these parameters,
    the interrupted one included, so the candidate would never be evaluated.
    """
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.system_attrs.get("fixed_params", t.params) == params:
            return
    study.enqueue_trial(params, user_attrs={"requeued_from": number})


def _lost(policy: CompressionPolicy) -> EvalResult:
    from autocompress.evaluators import EvalResult

    return EvalResult.failure("the process evaluating this candidate stopped before it finished")


def _policy(d: Mapping[str, Any]) -> CompressionPolicy:
    from autocompress.compression import CompressionPolicy

    return CompressionPolicy.from_dict(d)


def _json(obj: Any) -> str:
    import json

    return json.dumps(st.jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


# -- public entry ---------------------------------------------------------------------------------
def run_search(spec: SearchSpec, progress: ProgressCallback | None = None, *,
               problem: Problem | None = None) -> SearchResult:
    """Run (or resume) the search ``spec`` describes; returns the Pareto front and all candidates.

    Args:
        spec: what to search (``SearchSpec.from_cli`` / ``from_yaml`` build one).
        progress: called with a :class:`SearchProgress` during setup, after every recorded
            candidate and at the end (the CLI draws its progress bar from it).
        problem: an already built ``Problem`` for exactly this spec's model, data and space
            settings (saves rebuilding it in tests and notebooks); by default it is built.

    Returns:
        A :class:`SearchResult`; ``RUN/pareto.json``, ``RUN/trials.jsonl``, ``RUN/spec.json`` and
        the study are on disk.

    Raises:
        UserInputError: bad settings, an unreachable budget, or a run directory holding another
            search (see ``SearchSpec.resume`` / ``force``).

    Example:
        >>> spec = SearchSpec.from_cli(None, {"budget": ["macs=50%"], "trials": 20})  # doctest: +SKIP
        >>> result = run_search(spec)  # doctest: +SKIP
        >>> [p.metrics["acc"] for p in result.front]  # doctest: +SKIP
    """
    if not isinstance(spec, SearchSpec):
        raise UserInputError(f"run_search needs a SearchSpec, got {type(spec).__name__}")
    spec.preflight()  # paths, run directory and storage checked before anything is written
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        if spec.backend == "ray":
            from autocompress.search.ray_backend import run_ray

            return run_ray(spec, progress, problem=problem)
        session = SearchSession(spec, progress, problem=problem)
        try:
            return session.run_local()
        finally:
            session.close()
    finally:
        torch.set_num_threads(before)


__all__ = [
    "COUNTED_STATUSES",
    "PREDICTED_METRICS",
    "SearchProgress",
    "SearchResult",
    "SearchSession",
    "TrialRecord",
    "record_from_trial",
    "result_from_trial",
    "run_search",
    "safe_evaluate",
]
