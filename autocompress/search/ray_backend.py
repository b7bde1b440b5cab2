"""Ray Tune backend (``backend="ray"``): the same strategies, run as Tune trials.

* ``nsga2``/``tpe``: Tune's ``OptunaSearch`` with our sampler on *our* study (same storage, same
  study name), the space defined by run (one parameter per point and knob, as locally); hard
  budgets are set as Optuna constraints on each trial before it is told.
* every other strategy: our ask/tell searcher behind a Tune ``Searcher`` adapter (RL agents keep
  learning in the driver; only evaluations run on the workers).
* multi-fidelity: each trial reports its low-fidelity result first and its full-fidelity result
  second; Tune's ``ASHAScheduler`` (``max_t=2``) stops the unpromising ones after the first.

Each Tune trial evaluates one candidate and asks Ray for ``threads`` CPUs (``SearchSpec.threads``,
default 1). The driver's built ``Problem`` (trained base model, data splits, space, evaluator with
its latency table) goes into Ray's object store once; each worker process fetches it on its first
trial and keeps it, so no worker trains, loads data or builds a table again (the set-up is paid once
per search, not per worker or trial; a node of another machine receives it over the object store).
Where the problem cannot be pickled, a worker builds it once from the payload instead: the spec as
a dict with its paths made absolute, the checkpoint and cache paths (the driver's ``PYTHONPATH``
goes along as the job's environment). The driver-side searchers, which hold the problem, the
storage and the progress bar, pickle to a :class:`DetachedSearcher` stub when Tune writes its
``tuner.pkl`` (resume goes through the study, never through Tune's checkpoints).
Each proposal passes the local loop's admission (``SearchLoop.admit``), so a Ray driver can share
a study with local processes on any machine: a model the study evaluated already (or another live
process is evaluating) is answered from its record instead of run again, and the driver stops
asking once the study holds ``trials`` counted candidates, whoever evaluated them. With
``OptunaSearch``, a proposal whose predicted costs break a hard budget is recorded ``infeasible``
without evaluation but takes a Tune sample, and the driver runs further Tune rounds until the study
holds ``trials`` counted candidates.
The driver records every result into the study, ``trials.jsonl`` and ``pareto.json`` exactly as
the local loop does. Ray runs on a local cluster of ``workers`` CPUs by default, or joins
``ray_address`` (``HOST:PORT`` or ``auto``); see DEPENDENCIES.md for loopback settings, which are
applied here as environment defaults.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.compression.policy import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.search import storage as st
from autocompress.search.base import BaseSearcher, create_searcher, searcher_class
from autocompress.search.ledger import Ledger, OptunaLedger
from autocompress.search.loop import SearchLoop
from autocompress.search.records import ProgressCallback, SearchResult, TrialRecord, safe_evaluate
from autocompress.search.resume import reconcile
from autocompress.search.session import SearchSession
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators import EvalResult
    from autocompress.problem import Problem

#: Environment defaults for a Ray that stays on loopback and talks to nobody.
RAY_ENV_DEFAULTS: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}

_WORKER_PROBLEMS: dict[str, Any] = {}


class DetachedSearcher:
    """What a pickled autocompress Tune searcher becomes when unpickled: a stub that says why.

    ``tune.Tuner`` pickles its search algorithm into ``tuner.pkl`` for ``Tuner.restore``. Our
    searchers hold driver-side objects (the problem, the study's storage, the CLI's progress bar
    with its locks) that neither can nor should travel; resume goes through the Optuna study
    instead, so a searcher pickles to this stub (workers only ever get the picklable ``payload``).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{self.name} lives in the autocompress driver and cannot be restored from "
                           "a pickle; re-run the same `autocompress search` command to resume")


def _detached(name: str) -> DetachedSearcher:
    return DetachedSearcher(name)


def apply_ray_env() -> None:
    """Set the loopback / no-telemetry defaults (values already set by the user win)."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def init_ray(cpus: int, address: str | None) -> bool:
    """Start a local Ray (``cpus`` CPUs, loopback, no dashboard) or join ``address``.

    Returns True when this call started Ray (the caller shuts it down).
    """
    apply_ray_env()
    import ray

    if ray.is_initialized():
        return False
    try:
        env = worker_env()
        runtime_env = {"env_vars": env} if env else None
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     runtime_env=runtime_env)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     object_store_memory=256 * 1024 * 1024, log_to_driver=False,
                     logging_level="ERROR", runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        line = " ".join(str(exc).split())[:240]
        raise UserInputError(f"cannot start or reach Ray at {address or 'a local node'}: {line}") from None
    return True


def worker_env() -> dict[str, str]:
    """Environment a Ray worker needs to import what the driver imports (``--model pkg.mod:fn``).

    Workers of a cluster started elsewhere (``ray start``) do not inherit the driver's
    ``PYTHONPATH``, and Tune runs each trial in its own directory, so relative entries are
    made absolute.
    """
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    return {"PYTHONPATH": os.pathsep.join(str(Path(e).resolve()) for e in entries)} if entries else {}


def worker_spec_dict(spec: SearchSpec) -> dict[str, Any]:
    """``spec.to_dict()`` with every path a worker reads made absolute.

    Tune runs each trial in its own directory (and a joined cluster's workers start wherever
    ``ray start`` ran), so a relative ``--checkpoint``, ``--data-root`` or ``imagefolder:PATH``
    would name a different file there.
    """
    out = spec.to_dict()
    for key in ("checkpoint", "data_root"):
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    if str(out.get("data", "")).startswith("imagefolder:"):
        out["data"] = "imagefolder:" + str(Path(out["data"].split(":", 1)[1]).expanduser().resolve())
    return out


# -- the worker side -------------------------------------------------------------------------------
def _worker_problem(payload: Mapping[str, Any]) -> tuple[Problem, str]:
    """This worker's problem and where it came from: ``"shipped"`` (the driver's, fetched from the
    object store on the worker's first trial) or ``"built"`` (rebuilt here from the settings)."""
    key = payload["key"]
    if key not in _WORKER_PROBLEMS:
        import torch

        spec = SearchSpec.from_dict(payload["spec"])
        torch.set_num_threads(spec.threads)
        ref = payload.get("problem_ref")
        if ref is not None:
            import ray

            shipped = ray.get(ref)
            # The driver resolved the device on its own machine; a trial resolves it on its node
            # (a GPU-less head ships the problem to GPU workers, or the other way round).
            from autocompress.devices import resolve_device

            shipped.evaluator.device = resolve_device(spec.device)
            _WORKER_PROBLEMS[key] = (shipped, "shipped")
        else:
            from autocompress.search.session import build_problem

            _WORKER_PROBLEMS[key] = (build_problem(spec, checkpoint=payload["checkpoint"],
                                                   cache_dir=payload["cache_dir"], progress=False), "built")
    return _WORKER_PROBLEMS[key]


def _report_dict(policy_json: str, result: EvalResult, objectives: list[str], status: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ac_policy": policy_json, "ac_result": json.dumps(result.to_dict()), "ac_status": status,
        "ac_fidelity": result.fidelity,
        "score": float(result.metrics["acc"]) if result.ok and _finite(result.metrics.get("acc")) else -1.0,
    }
    for name in objectives:
        v = result.metrics.get(name)
        out[name] = float(v) if _finite(v) else None
    return out


def evaluate_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """A Tune function trainable: evaluate one candidate (low, then full under multi-fidelity)."""
    from ray import tune

    from autocompress.search.optuna_searcher import policy_from_params

    problem, source = _worker_problem(payload)
    objectives = list(payload["objectives"])
    # What Tune reserved for this trial and the node it runs on, as the worker sees them
    # (in Tune's experiment state; the resource and cluster tests read them).
    import ray

    assigned = ray.get_runtime_context().get_assigned_resources()
    where = {"ac_problem": source, "ac_cpus": float(assigned.get("CPU", 0.0)),
             "ac_gpus": float(assigned.get("GPU", 0.0)),
             "ac_node": ray.get_runtime_context().get_node_id(), "ac_host": socket.gethostname()}
    if "ac_policy" in config:
        policy = CompressionPolicy.from_json(config["ac_policy"])
    else:
        params = {k: v for k, v in config.items() if not k.startswith("ac_")}
        policy = policy_from_params(problem.space, params)
    policy_json = policy.to_json()
    if config.get("ac_infeasible"):
        from autocompress.evaluators import EvalResult

        standin = EvalResult(metrics=dict(config["ac_standin"]), fidelity="low")
        tune.report({**_report_dict(policy_json, standin, objectives, "infeasible"), **where})
        return
    evaluate = problem.evaluator.evaluate
    if payload["multi_fidelity"]:
        low = safe_evaluate(evaluate, policy, "low")
        tune.report({**_report_dict(policy_json, low, objectives, "ok" if low.ok else "failed"), **where})
        if not low.ok:
            return
    full = safe_evaluate(evaluate, policy, "full")
    tune.report({**_report_dict(policy_json, full, objectives, "ok" if full.ok else "failed"), **where})


# -- the driver side -------------------------------------------------------------------------------
def _ship(problem: Problem) -> Any:
    """The driver's problem in Ray's object store, or None (each worker then rebuilds it once) when
    it does not pickle, e.g. a user's model holding an open file; a warning says so."""
    import pickle
    import warnings

    import ray

    try:
        return ray.put(problem)
    except (TypeError, AttributeError, ValueError, pickle.PicklingError) as exc:
        warnings.warn(f"the problem does not pickle ({type(exc).__name__}: {exc}); each Ray worker "
                      "builds it once from the settings", RuntimeWarning, stacklevel=2)
        return None


def trial_cpus(spec: SearchSpec) -> float:
    """CPUs one trial reserves: ``cpus_per_trial``, else its torch ``threads``."""
    return float(spec.cpus_per_trial) if spec.cpus_per_trial is not None else float(spec.threads)


def trial_resources(spec: SearchSpec) -> dict[str, float]:
    """The Tune resources of one trial: its CPUs and, when asked for, its (fraction of a) GPU."""
    out = {"cpu": trial_cpus(spec)}
    if spec.gpus_per_trial > 0:
        out["gpu"] = float(spec.gpus_per_trial)
    return out


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _result_from_report(report: Mapping[str, Any] | None, error: bool) -> tuple[EvalResult, str]:
    from autocompress.evaluators import EvalResult

    if not report or "ac_result" not in report:
        why = "the Ray trial errored" if error else "the Ray trial ended without a result"
        return EvalResult.failure(why), "failed"
    res = EvalResult.from_dict(json.loads(report["ac_result"]))
    return res, str(report.get("ac_status", "ok" if res.ok else "failed"))


def _where(report: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The host and Ray node a trial reported it ran on (None when it reported nothing)."""
    if not report or "ac_node" not in report:
        return None
    return {"host": str(report.get("ac_host", "")), "node": str(report["ac_node"])}


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
            for k, v in s.trial_attrs(policy, shown, "infeasible", False, viol, fidelity="predicted").items():
                trial.set_user_attr(k, v)
            s.log_evaluation(trial.number, policy, shown, status="infeasible", final=True,
                             feasible=False, violations=viol, fidelity="predicted", where=_where(report))
            return res, status, s.objective_values(res.metrics)
        feasible, viol = s.feasibility(policy, res)
        feasible = feasible and res.fidelity == "full"
        s.log_evaluation(trial.number, policy, res, status=status, final=True, feasible=feasible,
                         violations=viol, where=_where(report))
        for k, v in s.trial_attrs(policy, res, status, feasible, viol).items():
            trial.set_user_attr(k, v)
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


def _optuna_search(session: SearchSession, recorder: _Recorder, seed: int) -> Any:
    """Tune's OptunaSearch on our study with our sampler, recording every completed trial."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from autocompress.search._projection import make_projector
    from autocompress.search.optuna_searcher import (
        policy_from_params,
        space_distributions,
        suggest_policy,
    )

    loop = recorder.loop
    spec = session.spec
    cls = searcher_class(spec.strategy)
    context = session.make_context()
    sampler = cls.build_sampler(context, seed, **dict(spec.strategy_settings))  # type: ignore[attr-defined]
    projector = (make_projector(context) if spec.strategy_settings.get("budget_projection", True)
                 else None)
    dists = space_distributions(context.space, projector)
    space = context.space
    idle_cap = max(100, 5 * spec.trials)

    def define_space(trial: Any) -> dict[str, Any] | None:
        suggest_policy(trial, space, dists, projector)
        return None

    class RecordingOptunaSearch(OptunaSearch):
        """OptunaSearch that admits (``SearchLoop.admit``: no repeat of an evaluated model, the
        study's total shared with every process), pre-screens and records each trial."""

        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return _detached, ("RecordingOptunaSearch",)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the state lives in the Optuna study (resume goes through it)."""

        def restore(self, checkpoint_path: str) -> None:
            """See ``save``."""

        full = False  # the study holds spec.trials candidates (with other processes')

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.full:
                return Searcher.FINISHED
            for _ in range(idle_cap):
                view = session.view()
                if view.counted >= spec.trials:  # other processes sharing the study count too
                    self.full = True
                    return Searcher.FINISHED
                config = super().suggest(trial_id)
                if config is None:
                    return None
                ot = self._ot_trials[trial_id]
                policy = policy_from_params(space, ot.params, projector)
                ledger = OptunaLedger(self._ot_study, session.storage)
                verdict, _ = loop.admit(policy, _TrialTeller(session, ledger, ot), view, ledger,
                                        otrial=ot)
                if verdict == "evaluate":
                    break
                del self._ot_trials[trial_id]  # finished by admit; the next ask is a new trial
                if verdict == "surplus":
                    self.full = True
                    return Searcher.FINISHED
            else:  # only repeats of evaluated models: end this round (the next gets a new seed)
                self.full = True
                return Searcher.FINISHED
            if spec.budgets and not context.predicted_feasible(policy):
                standin, _ = session.standin_result(policy)
                return {**config, "ac_infeasible": True, "ac_standin": dict(standin.metrics)}
            if projector is not None:  # the worker evaluates the projected policy, not raw params
                return {**config, "ac_policy": policy.to_json()}
            return config

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            ot = self._ot_trials.get(trial_id)
            if ot is not None and "ac_policy" in result:
                recorder.log_low(ot.number, policy_from_params(space, ot.params, projector), result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            ot = self._ot_trials[trial_id]
            policy = policy_from_params(space, ot.params, projector)
            res, status, values = recorder.record(ot, policy, result, error)
            ledger = OptunaLedger(self._ot_study, session.storage)
            if values is not None and status in ("ok", "infeasible"):
                ledger.finish(ot, values, session.constraints(policy, res.metrics))
            else:
                ledger.finish(ot, None)
            self._completed_trials.add(trial_id)
            if status != "infeasible":
                recorder.after(_trial_record(ot, policy, res, status, session))

    return RecordingOptunaSearch(
        space=define_space, metric=spec.objective_names,
        mode=["max" if d == "maximize" else "min" for d in spec.directions],
        sampler=sampler, study_name=spec.study_name, storage=session.storage,
    )


def _asktell_search(session: SearchSession, recorder: _Recorder, searcher: BaseSearcher) -> Any:
    """A Tune ``Searcher`` driving one of our ask/tell searchers."""
    from ray.tune.search import Searcher

    loop = recorder.loop
    spec = session.spec
    prescreen = bool(getattr(searcher, "prescreen", True)) and bool(spec.budgets)
    idle_cap = max(100, 5 * spec.trials)

    class AskTellSearcher(Searcher):
        """Tune searcher over an autocompress ``BaseSearcher`` (suggest = ask, complete = tell)."""

        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return _detached, ("AskTellSearcher",)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the state lives in the Optuna study (resume goes through it)."""

        def restore(self, checkpoint_path: str) -> None:
            """See ``save``."""

        def __init__(self) -> None:
            super().__init__(metric=spec.objective_names[0],
                             mode="max" if spec.directions[0] == "maximize" else "min")
            self.pending: dict[str, tuple[Any, CompressionPolicy]] = {}
            self.finished = False  # the searcher has nothing more to propose
            self.full = False  # the study holds spec.trials candidates (with other processes')

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.finished or self.full:
                return Searcher.FINISHED
            if type(searcher).max_pending <= len(self.pending):
                return None
            idle = 0
            while idle < idle_cap:
                view = session.view()
                if view.counted >= spec.trials:  # other processes sharing the study count too
                    self.full = True
                    return Searcher.FINISHED
                policy = searcher.ask()
                if policy is None:
                    self.finished = True
                    return Searcher.FINISHED
                verdict, trial = loop.admit(policy, searcher, view, session.ledger,
                                            prescreen=prescreen)
                if verdict == "surplus":
                    self.full = True
                    return Searcher.FINISHED
                if verdict != "evaluate":
                    idle += 1
                    continue
                self.pending[trial_id] = (trial, policy)
                return {"ac_policy": policy.to_json(), "ac_trial": trial.number}
            self.finished = True
            return Searcher.FINISHED

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self.pending:
                trial, policy = self.pending[trial_id]
                recorder.log_low(trial.number, policy, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id not in self.pending:
                return
            trial, policy = self.pending.pop(trial_id)
            res, status, values = recorder.record(trial, policy, result, error)
            if values is not None and status == "ok":
                session.ledger.finish(trial, values, session.constraints(policy, res.metrics))
            else:
                session.ledger.finish(trial, None)
            searcher.tell(policy, res)
            recorder.after(_trial_record(trial, policy, res, status, session))

    return AskTellSearcher()


def run_ray(spec: SearchSpec, progress: ProgressCallback | None = None, *,
            problem: Problem | None = None) -> SearchResult:
    """Run ``spec`` with Ray Tune; results land in the same study and files as a local run."""
    session = SearchSession(spec, progress, problem=problem)
    spec = session.spec
    started_ray = init_ray(math.ceil(spec.workers * trial_cpus(spec)), spec.ray_address)
    searcher: BaseSearcher | None = None
    try:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search import ConcurrencyLimiter

        cls = searcher_class(spec.strategy)
        seed = session.searcher_seed(cls.uses_optuna_study)
        reconcile(session, session.ledger, requeue=cls.uses_optuna_study)
        started = time.perf_counter()
        recorder = _Recorder(session, started)
        from autocompress.training import cache_dir

        cache_root = getattr(session.problem.evaluator.cache, "path", None)
        checkpoint = session.problem.checkpoint_path
        payload = {
            "key": f"{spec.identity_hash()}-{checkpoint}",
            "spec": worker_spec_dict(spec),
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "cache_dir": str(Path(cache_root).parent.parent.resolve()) if cache_root else str(cache_dir()),
            "objectives": spec.objective_names, "multi_fidelity": spec.multi_fidelity,
            "problem_ref": _ship(session.problem),
        }
        if not cls.uses_optuna_study:
            searcher = create_searcher(spec.strategy, session.make_context(), seed=seed,
                                       **dict(spec.strategy_settings))
        trainable = tune.with_resources(tune.with_parameters(evaluate_trial, payload=payload),
                                        trial_resources(spec))
        session.emit("start", done=session.view().counted, message=f"{spec.strategy} on Ray")
        stop_reason = "completed"
        for _round in range(10):
            remaining = spec.trials - session.view().counted
            if remaining <= 0:
                break
            if cls.uses_optuna_study:
                # A later round gets a fresh sampler seed (a new sampler object, never shared).
                round_seed = seed if _round == 0 else st.derive_seed(seed, "round", _round)
                search_alg = _optuna_search(session, recorder, round_seed)
            else:
                assert searcher is not None
                search_alg = _asktell_search(session, recorder, searcher)
            scheduler: Any = FIFOScheduler()
            if spec.multi_fidelity:
                scheduler = ASHAScheduler(
                    time_attr="training_iteration", metric="score", mode="max", max_t=2,
                    grace_period=1, reduction_factor=max(2.0, 1.0 / spec.promote_fraction),
                )
            before = session.view().counted
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(search_alg, max_concurrent=spec.workers),
                    scheduler=scheduler, num_samples=remaining, reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{spec.study_name}-{int(time.time())}",
                    storage_path=str((session.run_dir / "ray").resolve()), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            tuner.fit()
            if searcher is not None and getattr(search_alg, "finished", False):
                stop_reason = f"{spec.strategy} has nothing more to propose"
                break
            if session.view().counted == before:
                stop_reason = "no new candidates in a round"
                break
        out = session.result(stop_reason)
        if progress is not None:
            progress(session.progress_from_view(session.view(), "done", started=started,
                                                done_here=recorder.done_here, message=stop_reason))
        return out
    finally:
        if searcher is not None:
            searcher.close()
        session.close()
        if started_ray:
            import ray

            ray.shutdown()


__all__ = [
    "RAY_ENV_DEFAULTS",
    "DetachedSearcher",
    "apply_ray_env",
    "evaluate_trial",
    "init_ray",
    "run_ray",
    "trial_resources",
    "worker_env",
    "worker_spec_dict",
]
