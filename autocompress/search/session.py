"""The search session: one process's open run, set up, resumed and recorded.

``SearchSession(spec)`` checks the run directory (``storage.prepare_run_dir``), builds the
problem (``build_problem``), resolves the hard budgets (an unreachable one is refused before
anything is written), opens the run's ledger (``resume.open_ledger``: ``ledger.jsonl`` or
the Optuna study, refusing one of another search), writes ``spec.json`` and ``base.json`` and registers this
process as a worker. It then reads the ledger (``view``), records candidates (``trials.jsonl``
lines, trial attributes, ``pareto.json``) and builds the ``SearchResult``. Trials of killed
processes are finished by ``resume.reconcile``; the loop that asks, evaluates and tells is
``loop.SearchLoop``; the Ray backend uses the same session, so both write the same ledger and
files.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.point_finetune import finish_search
from autocompress.search import storage as st
from autocompress.search.base import SearchContext, searcher_class
from autocompress.search.ledger import Ledger, LedgerTrial
from autocompress.search.pareto import pareto_report
from autocompress.search.records import (
    COUNTED_STATUSES,
    ProgressCallback,
    SearchProgress,
    SearchResult,
    TrialRecord,
    finite,
    n_screened,
    record_from_trial,
    safe_evaluate,
)
from autocompress.search.resume import open_ledger, requested_ledger
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
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
class StudyView:
    """A snapshot of the ledger for one loop step (``SearchSession.view``)."""

    counted: int
    final_by_key: dict[str, LedgerTrial]
    running_by_key: dict[str, LedgerTrial]
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


# -- the session ---------------------------------------------------------------------------------
class SearchSession:
    """Builds the problem, the storage and the context of a spec, and records candidates.

    The local loop (``loop.SearchLoop``) and the Ray backend share it, so both write the same
    ledger, ``trials.jsonl`` and ``pareto.json``.
    """

    def __init__(self, spec: SearchSpec, progress: ProgressCallback | None = None, *,
                 problem: Problem | None = None) -> None:
        self.t_start = time.perf_counter()
        self.progress_cb = progress
        requested_ledger()  # a bad AUTOCOMPRESS_LEDGER is refused before anything is written
        before = st.read_spec(spec.run_dir) if spec.run_dir.is_dir() else None
        self.spec = st.prepare_run_dir(spec)
        self.run_dir = self.spec.run_dir
        # Held while this process uses the run directory: --force elsewhere is refused meanwhile.
        self.run_lock = st.RunLock(self.run_dir)
        self.run_lock.acquire(create=False)
        applied = st.applied_changes(before, self.spec) if self.spec.run_dir == spec.run_dir else []
        if applied:
            self.emit("setup", message=f"continuing the stored search with {', '.join(applied)} "
                                        "(recorded in spec.json)")
        searcher_class(self.spec.strategy)  # import the strategy early (bad installs fail fast)
        self.emit("setup", message=f"building {self.spec.model} on {self.spec.data}")
        self.problem = problem if problem is not None else self._build_problem()
        self.emit("setup", message="scoring the base model")
        base = self.problem.base
        if not base.ok:
            raise UserInputError(f"the base model could not be evaluated: {base.error}")
        self.base_metrics = {k: float(v) for k, v in base.metrics.items() if finite(v)}
        self.predict_latency = self._latency_predictor()
        self.limits = self._resolve_budgets()
        # The run directory is written only once the problem builds and the budgets are sane.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_lock.acquire(create=True)
        self.log = st.TrialLog(self.run_dir / st.TRIALS_FILE)
        self.log.repair()
        self.ledger: Ledger = open_ledger(self.spec)
        self.storage = self.ledger.storage  # the Optuna storage (None for a file ledger)
        st.write_spec(self.run_dir, self.spec, {"num_classes": self.problem.num_classes,
                                                "input_shape": list(self.problem.input_shape),
                                                # what round_to "auto" resolved to on this machine
                                                "round_to_used": self.problem.space.round_to})
        st.atomic_write_text(self.run_dir / st.BASE_FILE, _json({
            "metrics": self.base_metrics, "latency_info": dict(base.latency_info),
            "timings": dict(base.timings), "model": self.spec.model, "data": self.spec.data,
            "checkpoint": str(self.problem.checkpoint_path) if self.problem.checkpoint_path else None,
        }))
        self.worker = st.register_worker(self.ledger)

    # -- setup ------------------------------------------------------------------------------
    def emit(self, phase: str, **kw: Any) -> None:
        """Tell the progress callback (if any) about a step of the search."""
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

    def _latency_table(self) -> Callable[[CompressionPolicy], float] | None:
        # The evaluator's lookup table, built only when a searcher first asks for a prediction
        # (profiling every layer once): searchers never see the evaluator itself.
        get_lut = getattr(self.problem.evaluator, "get_lut", None)
        if get_lut is None:
            return None
        return lambda policy: float(get_lut().predict(policy))

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
            if b.name != "acc-drop" and finite(lowest) and limit < float(lowest) * (1 - 1e-9):
                base_v = self.base_metrics.get(b.metric)
                share = f" ({float(lowest) / base_v:.1%} of the base model's {_fmt(b.metric, base_v)})" if base_v else ""
                raise UserInputError(
                    f"budget {b.text} is unreachable: no policy in this space gets {b.metric} below "
                    f"{_fmt(b.metric, limit)}; the smallest reachable value is "
                    f"{b.name}={_fmt(b.metric, float(lowest))}{share}"
                )
        return limits

    def make_context(self) -> SearchContext:
        """The searcher's view of the problem: space, objectives, budgets and base metrics (never
        the problem or its evaluator)."""
        return SearchContext(
            space=self.problem.space, objectives=self.spec.objectives, budgets=self.spec.budgets,
            soft_budgets=self.spec.soft_budgets, base_metrics=self.base_metrics,
            limits=getattr(self, "limits", {}),
            storage=getattr(self, "storage", None), study_name=self.spec.study_name,
            trials=self.spec.trials, run_dir=self.run_dir,
            predict_latency=getattr(self, "predict_latency", None),
            latency_table=self._latency_table(),
            owner=getattr(getattr(self, "worker", None), "uuid", None),
        )

    # -- the ledger view --------------------------------------------------------------------
    def view(self) -> StudyView:
        """The ledger as the loop needs it: counted candidates, models evaluated (or being
        evaluated by a live process) by key, low-fidelity scores and the finished records."""
        if not hasattr(self, "_view_memo"):
            self._view_memo: dict[int, tuple[Any, TrialRecord | None]] = {}
        return study_view(self.ledger, self.worker.uuid, self._view_memo)

    def counted_before(self, number: int) -> int:
        """Counted trials numbered below ``number`` (the race check after creating a trial)."""
        workers = st.study_workers(self.ledger)
        n = 0
        for t in self.ledger.trials():
            if t.number >= number:
                continue
            a = t.user_attrs
            if a.get("status") in COUNTED_STATUSES:
                n += 1
            elif t.running and a.get("status") is None:
                w = workers.get(a.get("worker", ""))
                if w is not None and (w.uuid == self.worker.uuid or w.alive()):
                    n += 1
        return n

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Key of the model ``policy`` builds: equal for policies that compress to the same
        channel counts, bits and ranks (they are evaluated once; see ``CompressionSpace.structure``)."""
        try:
            return self.problem.space.structure_key(policy)
        except UserInputError:  # not a policy of this space: it fails on evaluation anyway
            return policy.key()

    # -- recording --------------------------------------------------------------------------
    def feasibility(self, policy: CompressionPolicy, result: EvalResult) -> tuple[bool, dict[str, float]]:
        """(feasible, violations) of an evaluated candidate against the hard budgets."""
        ctx = self.make_context()
        violations = ctx.violations(result.metrics, policy) if self.spec.budgets else {}
        ok = result.ok and all(v <= 0.0 for v in violations.values())
        return ok, violations

    def log_evaluation(self, number: int, policy: CompressionPolicy, result: EvalResult, *,
                       status: str, final: bool, feasible: bool, violations: Mapping[str, float],
                       fidelity: str | None = None, where: Mapping[str, str] | None = None) -> None:
        """Append one line to ``trials.jsonl``.

        ``where`` names the machine that evaluated it (``host``, and ``node``: the Ray node id for
        a Ray trial); by default this process's host.
        """
        self.log.append({
            **(dict(where) if where else {"host": socket.gethostname()}),
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
        """The user attributes a finished trial carries, ``status`` last (see ``record_attrs``)."""
        return st.jsonable({
            "metrics": dict(result.metrics), "fidelity": fidelity or result.fidelity,
            "feasible": feasible, "violations": dict(violations),
            "error": result.error, "timings": dict(result.timings), "cached": result.cached,
            "status": status,
        })

    def record_attrs(self, trial: Any, policy: CompressionPolicy, result: EvalResult, status: str,
                     feasible: bool, violations: Mapping[str, float], fidelity: str | None = None
                     ) -> None:
        """Write a finished trial's attributes, one ledger write each, ``status`` last.

        Other processes on a shared ledger treat a trial as final as soon as its status is
        counted (they stop waiting for it and write their front): written first, a reader in
        between would see a final trial without metrics and leave it off its front.
        """
        attrs = self.trial_attrs(policy, result, status, feasible, violations, fidelity)
        status_value = attrs.pop("status")
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("status", status_value)

    def objective_values(self, metrics: Mapping[str, float]) -> list[float] | None:
        """Objective values in order, None when one is missing or not finite."""
        vals = [metrics.get(o.name) for o in self.spec.objectives]
        if all(finite(v) for v in vals):
            return [float(v) for v in vals]  # type: ignore[arg-type]
        return None

    def standin_result(self, policy: CompressionPolicy) -> tuple[EvalResult, dict[str, float]]:
        """(stand-in result, predicted metrics) for a candidate rejected on predicted costs.

        The ledger needs objective values for a completed trial: the predicted costs are real, and
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

    def constraints(self, policy: CompressionPolicy, metrics: Mapping[str, float]
                    ) -> dict[str, float] | None:
        """The hard budgets as a completed trial's constraints (``<= 0`` feasible; None without
        hard budgets), read by Optuna's constrained samplers."""
        if not self.spec.budgets:
            return None
        from autocompress.search.optuna_searcher import constraint_values

        return constraint_values(self.make_context(), policy, metrics)

    # -- results ----------------------------------------------------------------------------
    def write_pareto(self, records: list[TrialRecord] | None = None) -> dict[str, Any]:
        """Compute the front over the ledger's feasible full-fidelity candidates; write it."""
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
            "study_name": self.spec.study_name, "storage": self.ledger.where,
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

    def progress_from_view(self, view: StudyView, phase: str, *, started: float, done_here: int,
                           message: str = "", last: TrialRecord | None = None) -> SearchProgress:
        """Progress numbers from a ledger snapshot."""
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
        """The ``SearchResult`` of the ledger as it stands (and ``pareto.json`` written), with the
        front's test top-1 and the ``finetune_top`` fine-tunes (``point_finetune.finish_search``)."""
        records = self.view().records
        report = self.write_pareto(records)
        done = sum(r.status in COUNTED_STATUSES for r in records)
        finish = finish_search(self.run_dir, self.problem, finetune_top=self.spec.finetune_top,
                               finetune_epochs=self.spec.finetune_epochs, seed=self.spec.seed,
                               on_message=lambda m: self.emit("finetune", done=done, message=m))
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

    def close(self) -> None:
        """Unregister this worker, release the run's lock and the evaluator's cache connection."""
        try:
            st.unregister_worker(self.ledger, self.worker)
        except Exception:  # noqa: BLE001 - best effort: a dead worker is detected by pid anyway
            pass
        self.run_lock.release()
        cache = getattr(self.problem.evaluator, "cache", None)
        if cache is not None and hasattr(cache, "close"):
            cache.close()

    # -- this process ------------------------------------------------------------------------
    def searcher_seed(self, uses_study: bool) -> int:
        """The searcher's seed for this process (see ``storage.register_worker``)."""
        rank = self.worker.rank
        if uses_study:
            n = len(self.ledger.trials())
            return self.spec.seed if rank == 0 and n == 0 else st.derive_seed(self.spec.seed, rank, n)
        return self.spec.seed if rank == 0 else st.derive_seed(self.spec.seed, rank)

def _json(obj: Any) -> str:
    import json

    return json.dumps(st.jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def study_view(ledger: Ledger, me: str, memo: dict[int, tuple[Any, TrialRecord | None]] | None = None
               ) -> StudyView:
    """The snapshot behind ``SearchSession.view``, read before every admission decision.

    Every proposal reads the whole ledger, so its cost grows with the study; ``memo`` (kept by the
    session between calls) holds the record of each finished trial, rebuilt only when the trial's
    status, fidelity, metrics or number of attributes change, which makes a read of a large study
    several times cheaper (benchmarks/README.md, "Scale").

    Args:
        ledger: the run's ledger.
        me: this process's worker uuid (its own running trials count as alive).
        memo: trial number -> (fingerprint, record), updated in place; None: no reuse.
    """
    workers = st.study_workers(ledger)
    alive: dict[str, bool] = {}

    def owner_alive(uid: str | None) -> bool:
        if uid is None:
            return False
        if uid not in alive:
            w = workers.get(uid)
            alive[uid] = uid == me or (w is not None and w.alive())
        return alive[uid]

    counted = 0
    final: dict[str, LedgerTrial] = {}
    running: dict[str, LedgerTrial] = {}
    low: list[float] = []
    records: list[TrialRecord] = []
    for t in ledger.trials():
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
        elif t.running and status is None and owner_alive(a.get("worker")):
            counted += 1
            for k in keys:
                running.setdefault(k, t)
        if status not in ("ok", "failed", "infeasible"):
            continue
        if memo is None:
            rec = record_from_trial(t)
        else:
            metrics = a.get("metrics") or {}
            fp = (status, a.get("fidelity"), len(a), tuple(sorted(metrics.items())) if isinstance(metrics, Mapping)
                  else repr(metrics))
            hit = memo.get(t.number)
            if hit is not None and hit[0] == fp:
                rec = hit[1]
            else:
                rec = record_from_trial(t)
                memo[t.number] = (fp, rec)
        if rec is not None:
            records.append(rec)
    return StudyView(counted, final, running, low, records)


__all__ = ["SearchSession", "StudyView", "build_problem", "study_view"]
