"""Ray itself: the loopback environment, starting or joining Ray, what one trial reserves.

Also what travels to the workers: the driver's ``PYTHONPATH`` (absolute), the spec with absolute
paths, and the built problem in Ray's object store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
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


__all__ = [
    "RAY_ENV_DEFAULTS",
    "apply_ray_env",
    "init_ray",
    "trial_cpus",
    "trial_resources",
    "worker_env",
    "worker_spec_dict",
]
