"""The Ray Tune backend against a real Ray: a local one it starts, and a head started with `ray start`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _ray import RayNodes

from autocompress.problem import Problem
from autocompress.search import run_search
from autocompress.search.ray_backend import RAY_ENV_DEFAULTS
from autocompress.search.resume import run_ledger
from autocompress.search.spec import SearchSpec
from autocompress.search.storage import TRIALS_FILE, TrialLog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head on loopback with 2 CPUs (``ray start --block`` in its own process group); that
    group, and nothing else, is stopped afterwards."""
    nodes = RayNodes()
    words = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port=6379", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    try:
        yield nodes.start(words, "6379", {**os.environ, **RAY_ENV_DEFAULTS}, tmp_path / "ray-head.log")
    finally:
        nodes.stop()


def _check_run(spec_out: Path, trials: int, study_name: str = "autocompress") -> list[dict]:
    """The run's ledger (``ledger.jsonl``, or the Optuna study of an Optuna sampler) and its log
    agree, each trial ran on a Ray node, and the front is written."""
    finals = [r for r in TrialLog(spec_out / TRIALS_FILE).read()
              if r["final"] and r["status"] in ("ok", "failed")]
    ledger = run_ledger(SearchSpec(out=str(spec_out), study_name=study_name))  # found by its file
    counted = [t for t in ledger.trials() if t.user_attrs.get("status") in ("ok", "failed")]
    assert len(counted) == trials
    assert sorted(r["id"] for r in finals) == sorted(t.number for t in counted)
    for r in finals:  # where each trial ran: this machine's host name and a Ray node id
        assert r["host"] == socket.gethostname() and re.fullmatch("[0-9a-f]{16,}", r["node"]), r
    assert json.loads((spec_out / "pareto.json").read_text())["points"]
    return finals


def test_ray_backend_on_a_local_ray_with_two_workers(search_problem: Problem, tmp_path: Path,
                                                     tiny_spec: Callable) -> None:
    spec = tiny_spec(tmp_path / "run", strategy="random", trials=3, backend="ray", workers=2)
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 3 and result.front
    finals = _check_run(spec.run_dir, 3)
    assert all(r["status"] == "ok" for r in finals)
    limit = 0.5 * search_problem.space.macs(search_problem.space.identity())
    assert all(r["metrics"]["macs"] <= limit for r in finals)
    import ray

    assert not ray.is_initialized()  # the Ray it started is shut down
    # Every trial ran on the driver's problem, shipped through the object store (no worker rebuilt it).
    # (Tune's experiment state holds each trial's last report, JSON inside JSON.)
    states = "".join(f.read_text() for f in (spec.run_dir / "ray").rglob("experiment_state*.json"))
    sources = re.findall(r'ac_problem\\*"\s*:\s*\\*"(\w+)', states)
    assert len(sources) == 3 and set(sources) == {"shipped"}, sources


def test_a_worker_without_a_shipped_problem_builds_it_once(search_problem: Problem, tmp_path: Path,
                                                          tiny_spec: Callable) -> None:
    """The fallback when the problem does not pickle: the worker rebuilds it from the settings,
    once per worker process, and it scores a policy as the driver's problem does."""
    from autocompress.search import ray_backend

    spec = tiny_spec(tmp_path / "run", strategy="random", trials=1)
    payload = {"key": "fallback-test", "spec": ray_backend.worker_spec_dict(spec),
               "checkpoint": str(search_problem.checkpoint_path) if search_problem.checkpoint_path else None,
               "cache_dir": str(tmp_path / "cache"), "problem_ref": None}
    try:
        built, source = ray_backend._worker_problem(payload)
        again, _ = ray_backend._worker_problem(payload)
    finally:
        ray_backend._WORKER_PROBLEMS.pop("fallback-test", None)
    assert source == "built" and again is built
    policy = search_problem.space.uniform(prune=0.5)
    assert built.space.macs(policy) == search_problem.space.macs(policy)


def test_ray_backend_joins_an_existing_cluster_with_optuna_and_asha(
        ray_head: str, search_problem: Problem, tmp_path: Path, tiny_spec: Callable) -> None:
    spec = tiny_spec(tmp_path / "run", strategy="nsga2", trials=4, backend="ray", workers=2,
                     ray_address=ray_head, multi_fidelity=True, promote_fraction=0.5,
                     strategy_settings={"population_size": 4})
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 4
    finals = _check_run(spec.run_dir, 4)
    lines = TrialLog(spec.run_dir / TRIALS_FILE).read()
    assert {r["fidelity"] for r in lines} <= {"low", "full", "predicted"}
    assert any(r["fidelity"] == "full" for r in finals)  # ASHA let at least one through
    assert all(p.fidelity == "full" and p.feasible for p in result.front)
    # the same storage as a local run: a local resume continues the very same study
    more = run_search(spec.replace(backend="local", trials=5), problem=search_problem)
    assert more.n_evaluated == 5


def test_tune_pickles_our_searchers_without_the_driver_state(search_problem: Problem, tmp_path: Path,
                                                             tiny_spec: Callable) -> None:
    """``tune.Tuner`` pickles its search algorithm (``tuner.pkl``); ours hold the problem, the
    storage and the CLI's progress bar (locks), none of which may travel: they pickle to a stub."""
    import threading

    from ray import cloudpickle
    from ray.tune.search import ConcurrencyLimiter

    from autocompress.search.base import create_searcher
    from autocompress.search.ray_backend import (
        DetachedSearcher,
        _asktell_search,
        _optuna_search,
        _Recorder,
    )
    from autocompress.search.runner import SearchSession

    lock = threading.RLock()  # what a rich progress bar holds

    def progress(_event: object) -> None:
        with lock:
            pass

    for strategy in ("nsga2", "random"):
        spec = tiny_spec(tmp_path / strategy, strategy=strategy, backend="ray")
        session = SearchSession(spec, progress, problem=search_problem)
        try:
            recorder = _Recorder(session, time.perf_counter())
            if strategy == "nsga2":
                alg = _optuna_search(session, recorder, 0)
            else:
                alg = _asktell_search(session, recorder, create_searcher(
                    "random", session.make_context(), seed=0))
            blob = cloudpickle.dumps(ConcurrencyLimiter(alg, max_concurrent=2))
        finally:
            session.close()
        assert len(blob) < 20_000  # no model, data or study inside
        stub = cloudpickle.loads(blob).searcher
        assert isinstance(stub, DetachedSearcher)
        with pytest.raises(RuntimeError, match="re-run the same `autocompress search`"):
            stub.suggest("t1")


_USER_MODEL = '''"""A user's model: a factory called with num_classes=, returning an nn.Module."""
import torch.nn as nn


def build_net(num_classes: int = 10) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
    net.input_shape = (1, 8, 8)
    return net
'''


def test_cli_search_on_ray_with_a_users_model_and_relative_paths(tmp_path: Path) -> None:
    """The command line on a local Ray (the README's form): an ask/tell strategy, a model from a
    relative PYTHONPATH and a relative checkpoint, which Ray's workers (running in Tune's trial
    directories) must still find. nsga2 from the CLI runs in tests/test_readme.py."""
    import torch

    (tmp_path / "src" / "userpkg").mkdir(parents=True)
    (tmp_path / "src" / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "userpkg" / "nets.py").write_text(_USER_MODEL)
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        from userpkg.nets import build_net

        torch.manual_seed(0)
        torch.save(build_net(10).state_dict(), tmp_path / "net.pt")
    finally:
        sys.path.remove(str(tmp_path / "src"))
        sys.modules.pop("userpkg.nets", None)
        sys.modules.pop("userpkg", None)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": "src", "HOME": str(tmp_path / "home")}
    before = set(os.listdir(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "autocompress.cli", "search", "--backend", "ray", "--workers", "2",
         "--config", str(root / "configs" / "quick.yaml"), "--model", "userpkg.nets:build_net",
         "--checkpoint", "net.pt", "--strategy", "random", "--trials", "3", "--out", "runs/r",
         "--no-report"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "(3 evaluated, 3 feasible, 0 failed; completed)" in proc.stdout
    run = tmp_path / "runs" / "r"
    finals = _check_run(run, 3)
    assert all(r["status"] == "ok" and r["error"] is None for r in finals), finals
    assert list((run / "ray").glob("*/tuner.pkl"))  # Tune's files land inside the run directory
    assert set(os.listdir(tmp_path)) - before == {"runs"}
    assert not (tmp_path / "home" / "ray_results").exists()


def test_trial_resources_follow_cpus_and_gpus_per_trial(tiny_spec: Callable, tmp_path: Path) -> None:
    from autocompress.search.ray_backend import trial_resources

    assert trial_resources(tiny_spec(tmp_path, backend="ray", threads=2)) == {"cpu": 2.0}
    assert trial_resources(tiny_spec(tmp_path, backend="ray", cpus_per_trial=0.5)) == {"cpu": 0.5}
    assert trial_resources(tiny_spec(tmp_path, backend="ray", gpus_per_trial=0.25)) == {"cpu": 1.0, "gpu": 0.25}


def test_ray_trials_run_with_their_own_cpus_and_no_gpu(search_problem: Problem, tmp_path: Path,
                                                      tiny_spec: Callable) -> None:
    """--cpus-per-trial / --gpus-per-trial 0 on a real local Ray: Tune reserves what was asked for
    each trial (recorded in its experiment state) and the trials score on the CPU."""
    spec = tiny_spec(tmp_path / "run", strategy="random", trials=2, backend="ray", workers=2,
                     cpus_per_trial=1, gpus_per_trial=0, device="cpu")
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 2
    finals = _check_run(spec.run_dir, 2)
    assert all(r["status"] == "ok" for r in finals)
    states = "".join(f.read_text() for f in (spec.run_dir / "ray").rglob("experiment_state*.json"))
    # Each trial's last report holds what its worker was assigned (JSON inside JSON).
    cpus = re.findall(r'ac_cpus\\*"\s*:\s*([0-9.]+)', states)
    gpus = re.findall(r'ac_gpus\\*"\s*:\s*([0-9.]+)', states)
    assert len(cpus) == 2 and all(float(c) == 1.0 for c in cpus), (cpus, states[:2000])
    assert len(gpus) == 2 and all(float(g) == 0.0 for g in gpus), gpus
