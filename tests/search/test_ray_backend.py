"""The Ray Tune backend against a real Ray: a local one it starts, and a head started with `ray start`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from autocompress.problem import Problem
from autocompress.search import run_search
from autocompress.search.ray_backend import RAY_ENV_DEFAULTS
from autocompress.search.storage import TRIALS_FILE, TrialLog, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head on loopback started with ``ray start --block`` in its own process group;
    the whole group (and nothing else) is stopped afterwards."""
    port = _free_port()
    temp_dir = Path(f"/tmp/ac-ray-{os.getpid()}-{port}")  # short: Ray puts sockets in it
    log = tmp_path / "ray-head.log"
    env = {**os.environ, **RAY_ENV_DEFAULTS}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block",
             f"--temp-dir={temp_dir}", "--object-store-memory=200000000",
             f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "ray start did not come up in 90 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still around
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _check_run(spec_out: Path, trials: int, study_name: str = "autocompress") -> list[dict]:
    finals = [r for r in TrialLog(spec_out / TRIALS_FILE).read()
              if r["final"] and r["status"] in ("ok", "failed")]
    from autocompress.search import SearchSpec

    spec = SearchSpec(out=str(spec_out))
    study = optuna.load_study(study_name=study_name, storage=open_storage(spec))
    counted = [t for t in study.get_trials() if t.user_attrs.get("status") in ("ok", "failed")]
    assert len(counted) == trials
    assert sorted(r["id"] for r in finals) == sorted(t.number for t in counted)
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
