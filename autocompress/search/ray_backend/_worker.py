"""The worker side: the Tune function trainable that evaluates one candidate on a Ray worker.

A worker process fetches the driver's problem from the object store on its first trial (or builds
it once from the payload when it does not pickle) and keeps it for the trials after.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autocompress.compression.policy import CompressionPolicy
from autocompress.search.ray_backend._reports import _report_dict
from autocompress.search.records import safe_evaluate
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    from autocompress.problem import Problem

_WORKER_PROBLEMS: dict[str, Any] = {}


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


__all__ = ["evaluate_trial"]
