"""Crash safety and sharing: SIGKILL then resume, two processes on one journal, the trial log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from autocompress.errors import UserInputError
from autocompress.problem import Problem
from autocompress.search import SearchSpec, run_search
from autocompress.search.resume import run_ledger
from autocompress.search.storage import (
    JOURNAL_FILE,
    TRIALS_FILE,
    TrialLog,
    open_storage,
    register_worker,
    study_workers,
    unregister_worker,
)

PROC = Path(__file__).with_name("search_proc.py")


def _spawn(spec: SearchSpec, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, str(PROC), json.dumps(spec.to_dict()), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counted_trials(spec: SearchSpec) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec))
    return [t for t in study.get_trials() if t.user_attrs.get("status") in ("ok", "failed")]


def _n_final(log: TrialLog) -> int:
    return len([r for r in log.read() if r.get("final") and r["status"] in ("ok", "failed")])


def _wait_for_finals(log: TrialLog, n: int, proc: subprocess.Popen, timeout: float = 200) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _n_final(log) >= n:
            return
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    raise AssertionError(f"fewer than {n} candidates after {timeout} s")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ctrl_c_then_sigkill_then_resume_loses_and_duplicates_nothing(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable) -> None:
    spec = tiny_spec(tmp_path / "run", strategy="nsga2", trials=8,
                     strategy_settings={"population_size": 4})
    log = TrialLog(spec.run_dir / TRIALS_FILE)

    # Ctrl-C: the process stops cleanly; the study holds no running trial of it
    proc = _spawn(spec)
    _wait_for_finals(log, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and '"interrupted": true' in out, err[-6000:]
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert json.loads((spec.run_dir / "pareto.json").read_text())["points"]

    # SIGKILL: nothing runs any cleanup
    proc = _spawn(spec)
    n_before = _n_final(log)
    _wait_for_finals(log, n_before + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {r["id"]: r["policy_key"] for r in log.read()
              if r.get("final") and r["status"] in ("ok", "failed")}
    assert 4 <= len(before) < 8

    result = run_search(spec, problem=search_problem)  # the same command again
    assert result.n_evaluated == 8
    counted = _counted_trials(spec)
    assert len(counted) == 8
    keys = [t.user_attrs["policy_key"] for t in counted]
    assert len(set(keys)) == 8  # no candidate evaluated twice
    finals = [r for r in log.read() if r.get("final") and r["status"] in ("ok", "failed")]
    assert sorted(r["id"] for r in finals) == sorted(t.number for t in counted)  # one line each
    for tid, key in before.items():  # everything finished before the kill is kept as it was
        assert any(t.number == tid and t.user_attrs["policy_key"] == key for t in counted)
    assert result.front


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_share_one_journal_study(search_problem: Problem, tmp_path: Path,
                                               tiny_spec: Callable) -> None:
    # --storage journal: the Optuna study (ledger.jsonl, the default here, is shared in test_ledger)
    spec = tiny_spec(tmp_path / "run", strategy="random", trials=10, storage="journal")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [_spawn(spec, str(barrier), "2") for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert (spec.run_dir / JOURNAL_FILE).is_file()
    counted = _counted_trials(spec)
    assert len(counted) == 10  # the count is shared, not 10 each
    assert len({t.user_attrs["policy_key"] for t in counted}) == 10  # no duplicated work
    workers = {t.user_attrs["worker"] for t in counted}
    assert len(workers) == 2  # both processes evaluated candidates
    finals = [r for r in TrialLog(spec.run_dir / TRIALS_FILE).read()
              if r.get("final") and r["status"] in ("ok", "failed")]
    assert sorted(r["id"] for r in finals) == sorted(t.number for t in counted)
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec))
    ranks = sorted(w.rank for w in study_workers(study).values())
    assert ranks == [0, 1]  # distinct seeds for the two processes


@pytest.mark.timeout(60)
def test_trial_log_appends_whole_lines_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    log = TrialLog(tmp_path / TRIALS_FILE)

    def writer(k: int) -> None:
        for i in range(50):
            log.append({"writer": k, "i": i, "pad": "x" * 500, "nan": float("nan")})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = log.read()
    assert len(recs) == 200 and all(r["nan"] is None for r in recs)
    with open(log.path, "a") as fh:
        fh.write('{"half": ')  # a writer killed mid-line
    assert len(log.read()) == 200
    assert log.repair() is True and log.repair() is False
    log.append({"after": True})
    assert log.read()[-1] == {"after": True} and len(log.read()) == 201


@pytest.mark.timeout(60)
def test_worker_ranks_are_distinct_and_freed(tmp_path: Path) -> None:
    spec = SearchSpec(out=str(tmp_path / "run"))
    study = optuna.create_study(storage=open_storage(spec), study_name="w",
                                directions=["maximize", "minimize"])
    a = register_worker(study)
    b = register_worker(study)
    assert (a.rank, b.rank) == (0, 1)
    unregister_worker(study, a)
    c = register_worker(study)
    assert c.rank == 0  # a stopped worker's rank is reused (a resumed run keeps its seed)
    # a worker whose process is gone counts as stopped
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ghost = {**b.to_dict(), "uuid": "ghost", "pid": int(dead.stdout), "rank": 7}
    study.set_user_attr("worker:ghost", ghost)
    assert not study_workers(study)["ghost"].alive()


def test_a_torn_journal_line_is_repaired(tmp_path: Path) -> None:
    spec = SearchSpec(out=str(tmp_path / "run"))
    study = optuna.create_study(storage=open_storage(spec), study_name="s")
    study.tell(study.ask(), 1.0)
    with open(spec.run_dir / JOURNAL_FILE, "a") as fh:
        fh.write('{"op_code": 4, "worker_id": "x", "tri')  # killed mid-append
    study = optuna.load_study(storage=open_storage(spec), study_name="s")
    study.tell(study.ask(), 2.0)
    again = optuna.load_study(storage=open_storage(spec), study_name="s")
    assert [t.value for t in again.get_trials()] == [1.0, 2.0]


def test_storage_settings(tmp_path: Path) -> None:
    spec = SearchSpec(out=str(tmp_path / "r"), storage=str(tmp_path / "shared.journal"))
    assert type(open_storage(spec)).__name__ == "JournalStorage"
    url = SearchSpec(out=str(tmp_path / "r"), storage=f"sqlite:///{tmp_path / 'x.db'}")
    assert type(open_storage(url)).__name__ == "RDBStorage"
    with pytest.raises(UserInputError, match="storage 'mongo' is not allowed"):
        open_storage(SearchSpec(out=str(tmp_path / "r"), storage="mongo"))


def test_a_run_from_before_a_setting_existed_is_still_the_same_search(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable, ledger_kind: str) -> None:
    spec = tiny_spec(tmp_path / "run", trials=2)
    first = run_search(spec, problem=search_problem)
    ledger = run_ledger(spec)  # the Optuna study or ledger.jsonl

    def as_written_before_importance_existed(**change: object) -> None:
        stored = dict(ledger.user_attrs["autocompress_spec"])
        assert stored.pop("importance") == "l1"
        ledger.set_user_attr("autocompress_spec", {**stored, **change})
        ledger.set_user_attr("autocompress_identity", "hash of the older settings")

    as_written_before_importance_existed()
    again = run_search(spec, problem=search_problem)  # the same command: the same run, reused
    assert [t.policy.key() for t in again.trials] == [t.policy.key() for t in first.trials]
    # upgraded once, then compared directly
    assert run_ledger(spec).user_attrs["autocompress_identity"] == spec.identity_hash()

    as_written_before_importance_existed(seed=spec.seed + 1)  # an older run of another search
    with pytest.raises(UserInputError, match="belongs to a different search"):
        run_search(spec, problem=search_problem)
