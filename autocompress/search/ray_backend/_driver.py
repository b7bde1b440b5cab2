"""The driver: one search run as rounds of Tune trials on the session and ledger of a local run."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.search import storage as st
from autocompress.search.base import BaseSearcher, create_searcher, searcher_class
from autocompress.search.ray_backend._cluster import (
    _ship,
    init_ray,
    trial_cpus,
    trial_resources,
    worker_spec_dict,
)
from autocompress.search.ray_backend._recorder import _Recorder
from autocompress.search.ray_backend._searchers import _asktell_search, _optuna_search
from autocompress.search.ray_backend._worker import evaluate_trial
from autocompress.search.records import ProgressCallback, SearchResult
from autocompress.search.resume import reconcile
from autocompress.search.session import SearchSession
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    from autocompress.problem import Problem


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


__all__ = ["run_ray"]
