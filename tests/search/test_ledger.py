"""The ledger behind the search: one contract for the Optuna study and ``ledger.jsonl``, and the
same candidates, resume and sharing whichever a run records into."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autocompress.compression import CompressionPolicy
from autocompress.problem import Problem
from autocompress.search import SearchSpec, resume, run_search
from autocompress.search.file_ledger import FileLedger
from autocompress.search.ledger import Ledger, OptunaLedger
from autocompress.search.resume import open_ledger
from autocompress.search.storage import (
    JOURNAL_FILE,
    LEDGER_FILE,
    TRIALS_FILE,
    TrialLog,
    register_worker,
    study_workers,
)

pytestmark = pytest.mark.timeout(180)

DIRECTIONS = ["maximize", "minimize"]


def _opener(kind: str, tmp_path: Path) -> Callable[[], Ledger]:
    """Opens a new object on one ledger each call, as another process would."""
    if kind == "file":
        return lambda: FileLedger.open(tmp_path / LEDGER_FILE, "s", DIRECTIONS)
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    def storage() -> optuna.storages.BaseStorage:
        if kind == "journal":
            return JournalStorage(JournalFileBackend(str(tmp_path / JOURNAL_FILE)))
        return RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")

    return lambda: OptunaLedger.open(storage(), "s", DIRECTIONS, where=kind)


def _values(ledger: Ledger, number: int) -> list[float] | None:
    if isinstance(ledger, FileLedger):
        return ledger.values(number)
    return ledger.study.get_trials()[number].values  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("kind", ["journal", "sqlite", "file"])
def test_every_ledger_keeps_the_contract(kind: str, tmp_path: Path) -> None:
    """What the session and the loop rely on, seen from two processes sharing the ledger."""
    make = _opener(kind, tmp_path)
    a, b = make(), make()
    assert a.directions == b.directions == DIRECTIONS
    t0, t1, t2 = a.ask(), b.ask(), a.ask()
    assert [t0.number, t1.number, t2.number] == [0, 1, 2]  # dense, shared numbering
    t0.set_user_attr("worker", "w0")
    t0.set_user_attr("policy_key", "k0")
    assert b.trials()[0].user_attrs == {"worker": "w0", "policy_key": "k0"}
    assert t0.user_attrs["worker"] == "w0"
    a.finish(t0, [0.9, 100.0], {"macs": -0.5})
    a.finish(t2, None)  # failed
    listed = b.trials()
    assert [t.running for t in listed] == [False, True, False]
    assert [t.number for t in b.trials(running=True)] == [1]
    assert b.trial(0).user_attrs["policy_key"] == "k0" and listed[1].started is not None
    assert _values(b, 0) == [0.9, 100.0] and _values(b, 2) is None
    # another process finishes the open trial of a killed one
    other = b.handle(b.trials(running=True)[0])
    other.set_user_attr("status", "interrupted")
    b.finish(other, None)
    assert not a.trials(running=True) and a.trial(1).user_attrs["status"] == "interrupted"
    # study-level attributes: identity and workers
    a.set_user_attr("autocompress_identity", "abc")
    assert b.user_attrs["autocompress_identity"] == "abc"
    w0, w1 = register_worker(a), register_worker(b)
    assert sorted(w.rank for w in study_workers(b).values()) == [0, 1] and w0.uuid != w1.uuid
    # --force: deleted, then opened afresh
    a.delete()
    fresh = make()
    assert fresh.trials() == [] and "autocompress_identity" not in fresh.user_attrs
    assert fresh.ask().number == 0


def _ask_many(path: str, out: str) -> None:
    ledger = FileLedger.open(path, "s", ["maximize"])
    Path(out).write_text(",".join(str(ledger.ask().number) for _ in range(40)))


@pytest.mark.timeout(60)
def test_file_ledger_numbers_are_unique_across_processes(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / LEDGER_FILE
    ctx = multiprocessing.get_context("fork")  # separate processes, no re-import
    procs = [ctx.Process(target=_ask_many, args=(str(path), str(tmp_path / f"got-{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=50)
        assert p.exitcode == 0
    got = [[int(n) for n in (tmp_path / f"got-{i}").read_text().split(",")] for i in range(3)]
    numbers = sorted(n for g in got for n in g)
    assert numbers == list(range(120))  # each process got its own, none skipped
    assert all(g == sorted(g) for g in got)
    assert [t.number for t in FileLedger(path, "s").trials()] == list(range(120))


def test_file_ledger_cuts_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = FileLedger.open(path, "s", DIRECTIONS)
    ledger.ask()
    with open(path, "a") as fh:
        fh.write('{"op": "ask", "study": "s", "ti')  # a writer killed mid-line
    reader = FileLedger(path, "s")
    assert len(reader.trials()) == 1  # the torn line is not a trial
    assert FileLedger.open(path, "s", DIRECTIONS).ask().number == 1
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["study"] == "s" for line in lines)  # cut, not glued onto
    assert [t.number for t in reader.trials()] == [0, 1]


# -- a search on either ledger ---------------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "trials"), [("ladder", 4), ("random", 4), ("greedy", 6)])
def test_the_same_seed_proposes_the_same_candidates_in_either_ledger(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable, strategy: str, trials: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for kind in ("optuna", "file"):
        monkeypatch.setenv("AUTOCOMPRESS_LEDGER", kind)
        out = tmp_path / kind
        runs[kind] = run_search(tiny_spec(out, strategy=strategy, trials=trials), problem=search_problem)
        assert (out / LEDGER_FILE).is_file() == (kind == "file")
        assert (out / JOURNAL_FILE).is_file() == (kind == "optuna")
    optuna_run, file_run = runs["optuna"], runs["file"]
    assert [(t.id, t.policy.key(), t.status) for t in file_run.trials] == \
        [(t.id, t.policy.key(), t.status) for t in optuna_run.trials]
    assert [p.id for p in file_run.front] == [p.id for p in optuna_run.front]
    assert file_run.pareto["storage"] == f"ledger:{tmp_path / 'file' / LEDGER_FILE}"


def test_an_optuna_strategy_keeps_the_optuna_study(search_problem: Problem, tmp_path: Path,
                                                   tiny_spec: Callable,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCOMPRESS_LEDGER", "file")
    out = tmp_path / "run"
    run_search(tiny_spec(out, strategy="tpe", trials=2), problem=search_problem)
    assert (out / JOURNAL_FILE).is_file() and not (out / LEDGER_FILE).exists()


@pytest.mark.parametrize(("strategy", "storage", "env", "kind"), [
    ("ladder", None, None, "file"), ("uniform", None, None, "file"), ("random", None, None, "file"),
    ("greedy", None, None, "file"), ("ddpg", None, None, "file"), ("ladder", None, "file", "file"),
    ("nsga2", None, None, "optuna"), ("tpe", None, "file", "optuna"),  # they sample from the study
    ("ladder", "journal", None, "optuna"), ("random", "sqlite", None, "optuna"),  # --storage given
    ("ladder", None, "optuna", "optuna"),  # AUTOCOMPRESS_LEDGER=optuna asks for the study
])
def test_which_ledger_a_new_run_records_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            strategy: str, storage: str | None, env: str | None,
                                            kind: str) -> None:
    if env is None:
        monkeypatch.delenv("AUTOCOMPRESS_LEDGER", raising=False)
    else:
        monkeypatch.setenv("AUTOCOMPRESS_LEDGER", env)
    assert resume.ledger_kind(SearchSpec(out=str(tmp_path / "run"), strategy=strategy, storage=storage)) == kind


@pytest.mark.parametrize("env", [None, "optuna", "file"])
def test_an_existing_run_keeps_its_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("AUTOCOMPRESS_LEDGER", raising=False)
    else:
        monkeypatch.setenv("AUTOCOMPRESS_LEDGER", env)
    for name, kind in ((JOURNAL_FILE, "optuna"), ("study.db", "optuna"), (LEDGER_FILE, "file")):
        run = tmp_path / name
        run.mkdir()
        (run / name).write_text("")
        assert resume.ledger_kind(SearchSpec(out=str(run), strategy="ladder")) == kind


def test_a_run_started_in_the_optuna_study_resumes_in_it(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ladder run written before ``ledger.jsonl`` became the default (its trials in
    ``study.journal``) continues there, without a second ledger."""
    out = tmp_path / "run"
    monkeypatch.setenv("AUTOCOMPRESS_LEDGER", "optuna")
    first = run_search(tiny_spec(out, trials=2), problem=search_problem)
    monkeypatch.delenv("AUTOCOMPRESS_LEDGER")
    more = run_search(tiny_spec(out, trials=3), problem=search_problem)
    assert (out / JOURNAL_FILE).is_file() and not (out / LEDGER_FILE).exists()
    assert more.n_evaluated == 3
    assert [t.policy for t in more.trials[:2]] == [t.policy for t in first.trials]
    assert len([r for r in TrialLog(out / TRIALS_FILE).read() if r["final"]]) == 3


def test_a_bad_ledger_choice_is_one_line_and_creates_nothing(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from autocompress.errors import UserInputError

    monkeypatch.setenv("AUTOCOMPRESS_LEDGER", "jsonl")
    with pytest.raises(UserInputError, match=r"AUTOCOMPRESS_LEDGER='jsonl' is not allowed; "
                                             r"allowed: optuna, file"):
        run_search(tiny_spec(tmp_path / "run", strategy="random", trials=1), problem=search_problem)
    assert not (tmp_path / "run").exists()


def test_trials_of_a_killed_process_are_finished_on_resume(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable, ledger_kind: str) -> None:
    """One killed after writing its final ``trials.jsonl`` line (recovered from it), one killed
    mid-evaluation (``interrupted``)."""
    spec = tiny_spec(tmp_path / "run", strategy="random", trials=2)
    run_search(spec, problem=search_problem)
    space = search_problem.space
    ledger = open_ledger(spec)
    ledger.set_user_attr("worker:ghost", {"uuid": "ghost", "host": socket.gethostname(),
                                          "pid": _dead_pid(), "start": None, "rank": 0,
                                          "registered": 0.0, "beat": 0.0})
    logged, lost = space.uniform(prune=0.45), space.uniform(prune=0.65)
    ghosts = []
    for policy in (logged, lost):
        trial = ledger.ask()
        for k, v in {"worker": "ghost", "policy": policy.to_dict(), "policy_key": policy.key(),
                     "structure_key": space.structure_key(policy), "strategy": "random"}.items():
            trial.set_user_attr(k, v)
        ghosts.append(trial.number)
    res = search_problem.evaluator.evaluate(logged)
    TrialLog(spec.run_dir / TRIALS_FILE).append({
        "id": ghosts[0], "trial": ghosts[0], "study": spec.study_name, "worker": "ghost",
        "policy": logged.to_dict(), "policy_key": logged.key(), "fidelity": "full",
        "status": "ok", "metrics": dict(res.metrics), "timings": {}, "feasible": True,
        "violations": {}, "final": True})

    result = run_search(tiny_spec(tmp_path / "run", strategy="random", trials=3),
                        problem=search_problem)
    assert result.n_evaluated == 3  # the recovered candidate counts; nothing else was needed
    after = open_ledger(spec)
    assert not after.trials(running=True)
    recovered, interrupted = (after.trial(n).user_attrs for n in ghosts)
    assert recovered["status"] == "ok" and recovered["recovered"] is True
    assert interrupted["status"] == "interrupted"
    assert logged in [t.policy for t in result.trials]
    assert lost not in [t.policy for t in result.trials]
    assert isinstance(after, FileLedger) == (ledger_kind == "file")


def test_ctrl_c_mid_evaluation_then_resume_in_either_ledger(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch, ledger_kind: str) -> None:
    real = search_problem.evaluator.evaluate
    calls = {"n": 0}
    hit: list[CompressionPolicy] = []

    def interrupted(policy, fidelity="full"):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            hit.append(policy)
            raise KeyboardInterrupt
        return real(policy, fidelity)

    spec = tiny_spec(tmp_path / "run", strategy="random", trials=3)
    monkeypatch.setattr(search_problem.evaluator, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, problem=search_problem)
    monkeypatch.setattr(search_problem.evaluator, "evaluate", real)
    left = open_ledger(spec)
    assert not left.trials(running=True)  # finished on the way out
    assert [t.user_attrs.get("status") for t in left.trials()][-1] == "interrupted"
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 3
    assert hit[0] in [t.policy for t in result.trials if t.status == "ok"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_share_one_file_ledger(search_problem: Problem, tmp_path: Path,
                                             tiny_spec: Callable) -> None:
    spec: SearchSpec = tiny_spec(tmp_path / "run", strategy="random", trials=10)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    proc = Path(__file__).with_name("search_proc.py")
    env = {**os.environ, "PYTHONHASHSEED": "0", "AUTOCOMPRESS_LEDGER": "file"}
    procs = [subprocess.Popen([sys.executable, str(proc), json.dumps(spec.to_dict()), str(barrier), "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert not (spec.run_dir / JOURNAL_FILE).exists()
    ledger = FileLedger(spec.run_dir / LEDGER_FILE, spec.study_name)
    counted = [t for t in ledger.trials() if t.user_attrs.get("status") in ("ok", "failed")]
    assert len(counted) == 10  # the count is shared, not 10 each
    assert len({t.user_attrs["policy_key"] for t in counted}) == 10  # no duplicated work
    assert len({t.user_attrs["worker"] for t in counted}) == 2  # both evaluated candidates
    finals = [r for r in TrialLog(spec.run_dir / TRIALS_FILE).read()
              if r.get("final") and r["status"] in ("ok", "failed")]
    assert sorted(r["id"] for r in finals) == sorted(t.number for t in counted)
    assert sorted(w.rank for w in study_workers(ledger).values()) == [0, 1]


@pytest.mark.parametrize("kind", ["journal", "file"])
def test_the_view_memo_gives_the_same_view_and_follows_changed_trials(kind: str, tmp_path: Path) -> None:
    """``study_view`` reuses the records of finished trials between reads (the admission reads
    the whole ledger per proposal); the memo must never hide a change."""
    from autocompress.search.session import study_view

    ledger = _opener(kind, tmp_path)()
    policy = CompressionPolicy({"fc": {"prune": 0.5}})
    for i in range(3):
        t = ledger.ask()
        for k, v in {"status": "ok", "policy": policy.to_dict(), "policy_key": f"p{i}",
                     "structure_key": f"s{i}", "metrics": {"acc": 0.5 + i / 10, "macs": 10.0},
                     "fidelity": "full", "feasible": True}.items():
            t.set_user_attr(k, v)
        ledger.finish(t, [0.5 + i / 10, 10.0])
    memo: dict[int, object] = {}
    first = study_view(ledger, "me", memo)
    assert len(memo) == 3 and first.records == study_view(ledger, "me").records
    again = study_view(ledger, "me", memo)
    assert [r.id for r in again.records] == [0, 1, 2]
    assert all(x is y for x, y in zip(first.records, again.records, strict=True))  # reused, not rebuilt
    # a trial whose record changes (promoted to full fidelity with a new score) is rebuilt
    t = ledger.ask()
    for k, v in {"status": "ok", "policy": policy.to_dict(), "policy_key": "p3", "structure_key": "s3",
                 "metrics": {"acc": 0.1, "macs": 10.0}, "fidelity": "low"}.items():
        t.set_user_attr(k, v)
    assert study_view(ledger, "me", memo).records[3].fidelity == "low"
    t.set_user_attr("fidelity", "full")
    t.set_user_attr("metrics", {"acc": 0.9, "macs": 10.0})
    ledger.finish(t, [0.9, 10.0])
    rec = study_view(ledger, "me", memo).records[3]
    assert rec.fidelity == "full" and rec.metrics["acc"] == 0.9
    assert study_view(ledger, "me", memo).records == study_view(ledger, "me").records
    assert study_view(ledger, "me", memo).counted == 4


def test_a_trial_is_marked_final_only_after_its_metrics_are_written(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process on the ledger takes a counted status as final and writes its front at
    once: a status written before the metrics would show it a final trial without metrics."""
    monkeypatch.setenv("AUTOCOMPRESS_LEDGER", "file")
    out = tmp_path / "run"
    run_search(tiny_spec(out, strategy="random", trials=6), problem=search_problem)
    writes: dict[int, list[str]] = {}
    for line in (out / LEDGER_FILE).read_text().splitlines():
        op = json.loads(line)
        if op.get("op") == "set":
            writes.setdefault(op["n"], []).append(op["key"])
    finals = {n: keys for n, keys in writes.items() if "metrics" in keys}
    assert len(finals) >= 6
    for n, keys in finals.items():
        assert keys[-1] == "status", (n, keys)
        assert keys.count("status") == 1
