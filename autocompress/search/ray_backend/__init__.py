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

Modules: ``_cluster`` (the loopback environment, starting or joining Ray, the resources a trial
reserves, what travels to the workers), ``_worker`` (the trial run on a worker), ``_reports``
(what a trial reports and the driver reads back), ``_recorder`` (the driver's recording of each
trial), ``_searchers`` (the two Tune searchers), ``_driver`` (``run_ray``: rounds of Tune trials).
The backend depends on the session, the ledger and the loop, which never import it (the runner
hands a ``ray`` spec to ``run_ray``).
"""

from __future__ import annotations

from autocompress.search.ray_backend._cluster import (
    RAY_ENV_DEFAULTS,
    apply_ray_env,
    init_ray,
    trial_cpus,
    trial_resources,
    worker_env,
    worker_spec_dict,
)
from autocompress.search.ray_backend._driver import run_ray
from autocompress.search.ray_backend._recorder import _Recorder  # noqa: F401 - the tests reach it
from autocompress.search.ray_backend._searchers import (  # noqa: F401 - tests reach the privates
    DetachedSearcher,
    _asktell_search,
    _optuna_search,
)
from autocompress.search.ray_backend._worker import (  # noqa: F401 - tests reach the privates
    _WORKER_PROBLEMS,
    _worker_problem,
    evaluate_trial,
)

__all__ = [
    "RAY_ENV_DEFAULTS",
    "DetachedSearcher",
    "apply_ray_env",
    "evaluate_trial",
    "init_ray",
    "run_ray",
    "trial_cpus",
    "trial_resources",
    "worker_env",
    "worker_spec_dict",
]
