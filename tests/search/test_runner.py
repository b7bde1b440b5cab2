"""The search loop: resume, refusing another run's directory, failures, multi-fidelity, budgets."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from autocompress.compression import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.evaluators import EvalResult
from autocompress.problem import Problem
from autocompress.search import SearchProgress, run_search
from autocompress.search.base import BaseSearcher, SearchContext
from autocompress.search.storage import LEDGER_FILE, PARETO_FILE, SPEC_FILE, TRIALS_FILE, TrialLog

pytestmark = pytest.mark.timeout(180)


def final_lines(run_dir: Path) -> list[dict]:
    return [r for r in TrialLog(run_dir / TRIALS_FILE).read()
            if r["final"] and r["status"] in ("ok", "failed")]


def test_rerun_resumes_to_the_requested_trials_and_replays(search_problem: Problem, tmp_path: Path,
                                                           tiny_spec: Callable, ledger_kind: str) -> None:
    out = tmp_path / "run"
    first = run_search(tiny_spec(out, strategy="random", trials=3), problem=search_problem)
    assert first.n_evaluated == 3
    again = run_search(tiny_spec(out, strategy="random", trials=3), problem=search_problem)
    assert again.n_evaluated == 3 and len(final_lines(out)) == 3  # nothing re-evaluated
    more = run_search(tiny_spec(out, strategy="random", trials=5), problem=search_problem)
    assert more.n_evaluated == 5
    assert [t.policy for t in more.trials[:3]] == [t.policy for t in first.trials]
    # the resumed run replayed the same random stream: same candidates as one uninterrupted run
    fresh = run_search(tiny_spec(tmp_path / "fresh", strategy="random", trials=5), problem=search_problem)
    assert [t.policy for t in more.trials] == [t.policy for t in fresh.trials]
    lines = final_lines(out)
    assert sorted(r["id"] for r in lines) == sorted(t.id for t in more.trials)
    assert len({r["policy_key"] for r in lines}) == 5
    assert (out / LEDGER_FILE).is_file() == (ledger_kind == "file")  # the ledger asked for


def test_a_different_search_in_the_run_dir_is_refused(search_problem: Problem, tmp_path: Path,
                                                      tiny_spec: Callable, ledger_kind: str) -> None:
    out = tmp_path / "run"
    run_search(tiny_spec(out, strategy="random", trials=2), problem=search_problem)
    before = (out / SPEC_FILE).read_text()
    with pytest.raises(UserInputError) as info:
        run_search(tiny_spec(out, strategy="uniform", trials=2), problem=search_problem)
    assert "strategy" in str(info.value) and "--resume" in str(info.value)
    assert (out / SPEC_FILE).read_text() == before  # nothing overwritten
    # --resume continues the stored search (random; the strategy was not given), with the new
    # trial count, which spec.json then records
    events: list[SearchProgress] = []
    resumed = run_search(tiny_spec(out, trials=3, resume=True), events.append, problem=search_problem)
    assert resumed.spec.strategy == "random" and resumed.n_evaluated == 3
    assert json.loads((out / SPEC_FILE).read_text())["trials"] == 3
    assert any("trials 2 -> 3" in e.message for e in events)
    # --force starts over and keeps the old run aside
    forced = run_search(tiny_spec(out, strategy="uniform", trials=2, force=True), problem=search_problem)
    assert forced.spec.strategy == "uniform" and forced.n_evaluated == 2
    old = tmp_path / "run.old-1"
    assert json.loads((old / SPEC_FILE).read_text())["strategy"] == "random"
    assert len(final_lines(old)) == 3
    assert (old / LEDGER_FILE).is_file() == (out / LEDGER_FILE).is_file() == (ledger_kind == "file")
    # a non-empty directory that is not a run is refused too
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="holds no search run"):
        run_search(tiny_spec(stray, strategy="random", trials=1), problem=search_problem)


def test_failed_candidates_are_recorded_and_the_search_goes_on(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = search_problem.evaluator.evaluate
    calls = {"n": 0}

    def flaky(policy, fidelity="full"):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("compression blew up")
        if calls["n"] == 3:
            res = real(policy, fidelity)
            return EvalResult(metrics={**res.metrics, "acc": math.nan}, fidelity=fidelity)
        return real(policy, fidelity)

    monkeypatch.setattr(search_problem.evaluator, "evaluate", flaky)
    result = run_search(tiny_spec(tmp_path / "run", strategy="random", trials=5), problem=search_problem)
    assert result.n_evaluated == 5 and result.n_failed == 2
    failed = [t for t in result.trials if t.status == "failed"]
    assert "compression blew up" in failed[0].error and "accuracy is nan" in failed[1].error
    assert not any(t.feasible for t in failed)
    assert all(p.status == "ok" for p in result.front)
    statuses = [r["status"] for r in final_lines(result.run_dir)]
    assert statuses.count("failed") == 2 and statuses.count("ok") == 3


def test_multi_fidelity_promotes_the_best_fraction(search_problem: Problem, tmp_path: Path,
                                                   tiny_spec: Callable) -> None:
    spec = tiny_spec(tmp_path / "run", strategy="random", trials=8, multi_fidelity=True,
                     promote_fraction=0.5)
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 8
    lines = TrialLog(result.run_dir / TRIALS_FILE).read()
    low = [r for r in lines if r["fidelity"] == "low"]
    full = [r for r in lines if r["fidelity"] == "full"]
    assert len(low) == 8  # every candidate is scored cheaply first
    assert {r["host"] for r in lines} == {socket.gethostname()} and not any("node" in r for r in lines)
    assert 1 <= len(full) < 8  # only promoted ones at full fidelity
    assert {r["id"] for r in full} <= {r["id"] for r in low}
    assert all(not r["final"] for r in low if r["id"] in {f["id"] for f in full})
    # a promoted candidate ranked in the top half of the low-fidelity scores seen before it
    scores: list[float] = []
    for r in sorted(low, key=lambda r: r["id"]):
        scores.append(r["metrics"]["acc"])
        promoted = r["id"] in {f["id"] for f in full}
        better = sum(s > r["metrics"]["acc"] for s in scores)
        assert promoted == (better < math.ceil(0.5 * len(scores)))
    assert all(p.fidelity == "full" for p in result.front)


def test_unreachable_budget_is_rejected_up_front(search_problem: Problem, tmp_path: Path,
                                                 tiny_spec: Callable) -> None:
    floor = search_problem.space.macs(search_problem.space.most_compressed())
    with pytest.raises(UserInputError) as info:
        run_search(tiny_spec(tmp_path / "a", budgets=["macs=1%"]), problem=search_problem)
    msg = str(info.value)
    assert "unreachable" in msg and "smallest reachable value is macs=" in msg and "\n" not in msg
    assert f"{floor / 1e3:.4g}K" in msg or f"{floor:.4g}" in msg
    with pytest.raises(UserInputError, match="smallest reachable value is params="):
        run_search(tiny_spec(tmp_path / "b", budgets=["params=10"]), problem=search_problem)
    assert not (tmp_path / "a" / TRIALS_FILE).exists()


def test_outputs_progress_and_objectives(search_problem: Problem, tmp_path: Path,
                                         tiny_spec: Callable) -> None:
    events: list[SearchProgress] = []
    spec = tiny_spec(tmp_path / "run", strategy="nsga2", trials=4,
                     objectives=["acc", "macs", "params"], budgets=["flops=60%", "acc-drop=50%"],
                     strategy_settings={"population_size": 4}, storage="sqlite")
    result = run_search(spec, progress=events.append)
    assert (tmp_path / "run" / "study.db").is_file()
    phases = [e.phase for e in events]
    assert phases[0] == "setup" and "start" in phases and phases[-1] == "done"
    trial_events = [e for e in events if e.phase == "trial"]
    assert [e.done for e in trial_events] == sorted(e.done for e in trial_events)
    assert trial_events[-1].done == 4 and events[-1].total == 4
    assert events[-1].feasible == result.n_feasible
    if result.best is not None:
        assert events[-1].best_acc == result.best.metrics["acc"]
    pareto = json.loads((tmp_path / "run" / PARETO_FILE).read_text())
    assert pareto["schema_version"] == 1
    assert [o["name"] for o in pareto["objectives"]] == ["acc", "macs", "params"]
    assert pareto["reference"]["point"] == [1.0, 1.0, 1.0]
    assert pareto["base"]["acc"] == pytest.approx(search_problem.base.metrics["acc"])
    for p in pareto["points"]:
        assert p["metrics"]["flops"] <= 0.6 * pareto["base"]["flops"] + 1e-6
        assert p["metrics"]["acc"] >= pareto["base"]["acc"] - 0.5 - 1e-9
    for line in (tmp_path / "run" / TRIALS_FILE).read_text().splitlines():
        rec = json.loads(line)
        assert {"policy", "metrics", "fidelity", "timings", "status"} <= set(rec)


# -- the same model is evaluated and listed once ---------------------------------------------------
class _Scripted(BaseSearcher):
    """Proposes ``script`` (uniform prune ratios) in order, then stops."""

    script: tuple[float, ...] = ()

    def __init__(self, context: SearchContext, seed: int = 0) -> None:
        super().__init__(context, seed)
        self.todo = list(self.script)
        self.told: list[tuple[CompressionPolicy, EvalResult]] = []

    def ask(self) -> CompressionPolicy | None:
        return self.context.space.uniform(prune=self.todo.pop(0)) if self.todo else None

    def tell(self, policy: CompressionPolicy, result: EvalResult) -> None:
        self.told.append((policy, result))


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[_Scripted]:
    """``_Scripted`` registered as ``test_scripted`` for one test (registry sweeps never see it)."""
    from autocompress.search import base

    monkeypatch.setattr(_Scripted, "name", "test_scripted")
    monkeypatch.setitem(base._SEARCHERS, "test_scripted", _Scripted)
    return _Scripted


def test_policies_building_the_same_model_are_evaluated_once(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch, scripted: type[_Scripted]) -> None:
    space = search_problem.space
    a, b, c = space.uniform(prune=0.30), space.uniform(prune=0.31), space.uniform(prune=0.6)
    assert a.key() != b.key() and space.structure_key(a) == space.structure_key(b)  # same channels
    assert space.structure_key(a) != space.structure_key(c)
    monkeypatch.setattr(scripted, "script", (0.30, 0.31, 0.6))
    real = search_problem.evaluator.evaluate
    seen: list[CompressionPolicy] = []

    def counting(policy, fidelity="full"):  # noqa: ANN001, ANN202
        seen.append(policy)
        return real(policy, fidelity)

    monkeypatch.setattr(search_problem.evaluator, "evaluate", counting)
    result = run_search(tiny_spec(tmp_path / "run", strategy="test_scripted", trials=3, budgets=[]),
                        problem=search_problem)
    seen = [p for p in seen if p in (a, b, c)]  # (the base model is scored too)
    assert seen == [a, c]  # the twin was answered from the record, not evaluated again
    assert result.n_evaluated == 2 and "nothing more to propose" in result.stop_reason
    assert len(final_lines(result.run_dir)) == 2
    keys = [space.structure_key(p.policy) for p in result.front]
    assert len(keys) == len(set(keys))


def test_the_front_lists_each_model_once(search_problem: Problem, tmp_path: Path,
                                         tiny_spec: Callable) -> None:
    from autocompress.search.runner import SearchSession, TrialRecord

    space = search_problem.space
    session = SearchSession(tiny_spec(tmp_path / "run", budgets=[]), problem=search_problem)
    try:
        base = dict(session.base_metrics)
        recs = [TrialRecord(id=i, policy=space.uniform(prune=p),
                            metrics={**base, "acc": acc, "macs": float(space.macs(space.uniform(prune=p)))},
                            status="ok", feasible=True)
                for i, (p, acc) in enumerate(((0.30, 0.80), (0.31, 0.85), (0.6, 0.70)))]
        report = session.write_pareto(recs)
    finally:
        session.close()
    ids = [p["id"] for p in report["points"]]
    assert ids == [0, 2]  # the twin of point 0 (same channel counts) is not listed
    assert json.loads((tmp_path / "run" / PARETO_FILE).read_text())["points"] == report["points"]


# -- interrupted candidates are evaluated on resume ------------------------------------------------
def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("storage", "owner"), [("journal", "dead"), ("sqlite", None)])
def test_a_candidate_killed_mid_evaluation_is_evaluated_on_resume(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable, storage: str,
        owner: str | None) -> None:
    import socket

    import optuna

    from autocompress.search.storage import open_storage

    spec = tiny_spec(tmp_path / "run", strategy="nsga2", trials=2, storage=storage,
                     strategy_settings={"population_size": 4})
    run_search(spec, problem=search_problem)
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec))
    done = next(t for t in study.get_trials() if t.user_attrs.get("status") == "ok")
    params = {k: (0.55 if k.endswith(":prune") else 0.9 if k == "budget_fill" else v)
              for k, v in done.params.items()}
    study.enqueue_trial(params)
    ghost = study.ask(fixed_distributions=done.distributions)  # the killed process's trial
    assert ghost.params == params
    if owner == "dead":  # killed mid-evaluation: tagged by a process that is gone
        study.set_user_attr("worker:ghost", {"uuid": "ghost", "host": socket.gethostname(),
                                             "pid": _dead_pid(), "start": None, "rank": 0,
                                             "registered": 0.0, "beat": 0.0})
        ghost.set_user_attr("worker", "ghost")
    # (owner None: killed between creating the trial and tagging it, just now)

    result = run_search(tiny_spec(tmp_path / "run", strategy="nsga2", trials=3, storage=storage,
                                  strategy_settings={"population_size": 4}), problem=search_problem)
    assert result.n_evaluated == 3
    trials = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec)).get_trials()
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert trials[ghost.number].user_attrs["status"] == "interrupted"
    again = [t for t in trials if t.params == params and t.user_attrs.get("status") == "ok"]
    assert again and again[0].number > ghost.number  # the same candidate, evaluated this time


def test_ctrl_c_mid_evaluation_then_resume_evaluates_the_candidate(
        search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = search_problem.evaluator.evaluate
    calls = {"n": 0}
    hit: list[CompressionPolicy] = []

    def interrupted(policy, fidelity="full"):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            hit.append(policy)
            raise KeyboardInterrupt
        return real(policy, fidelity)

    spec = tiny_spec(tmp_path / "run", strategy="tpe", trials=3)
    monkeypatch.setattr(search_problem.evaluator, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, problem=search_problem)
    monkeypatch.setattr(search_problem.evaluator, "evaluate", real)
    result = run_search(spec, problem=search_problem)
    assert result.n_evaluated == 3
    assert hit[0] in [t.policy for t in result.trials if t.status == "ok"]


# -- multi-fidelity summary ------------------------------------------------------------------------
def test_summary_lists_candidates_screened_out_at_low_fidelity(search_problem: Problem, tmp_path: Path,
                                                               tiny_spec: Callable) -> None:
    import yaml
    from click.testing import CliRunner

    from autocompress.cli import main

    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({**tiny_spec(tmp_path / "run").to_dict(), "strategy": "random",
                                      "trials": 6, "multi_fidelity": True, "promote_fraction": 0.34}))
    res = CliRunner().invoke(main, ["search", "--config", str(preset), "--out", str(tmp_path / "run"),
                                    "--no-report"])
    assert res.exit_code == 0, res.output
    lines = TrialLog(tmp_path / "run" / TRIALS_FILE).read()
    screened = {r["id"] for r in lines if r["final"] and r["status"] == "ok" and r["fidelity"] == "low"}
    pareto = json.loads((tmp_path / "run" / PARETO_FILE).read_text())
    feasible = sum(1 for r in lines if r["final"] and r["feasible"])
    assert screened and pareto["n_screened_low_fidelity"] == len(screened)
    assert (f"6 evaluated, {len(screened)} screened out at low fidelity, {feasible} feasible"
            in " ".join(res.output.split()))


# -- --resume and --force ----------------------------------------------------------------------------
def test_resume_refuses_settings_that_change_what_is_searched(search_problem: Problem, tmp_path: Path,
                                                              tiny_spec: Callable) -> None:
    out = tmp_path / "run"
    run_search(tiny_spec(out, strategy="random", trials=2), problem=search_problem)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for changed, word in (({"strategy": "uniform"}, "strategy"), ({"seed": 3}, "seed"),
                          ({"budgets": ["macs=30%"]}, "budgets"), ({"knobs": ["prune", "w_bits"]}, "knobs"),
                          ({"evaluator": {**tiny_spec(out).to_dict()["evaluator"], "val_samples": 64}},
                           "evaluator.val_samples")):
        with pytest.raises(UserInputError) as info:
            run_search(tiny_spec(out, trials=5, resume=True, **{"strategy": "random", **changed}),
                       problem=search_problem)
        msg = str(info.value)
        assert "--resume" in msg and word in msg and "stored" in msg and "\n" not in msg, msg
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing written: spec.json still says what was searched


def test_force_is_refused_while_a_search_uses_the_run_dir(search_problem: Problem, tmp_path: Path,
                                                          tiny_spec: Callable) -> None:
    import fcntl
    import os

    from autocompress.search.storage import LOCK_FILE, RunLock

    out = tmp_path / "run"
    held: list[bool] = []

    def probe(p: SearchProgress) -> None:  # is the lock held by the search while it runs?
        if p.phase == "trial":
            fd = os.open(out / LOCK_FILE, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)

    run_search(tiny_spec(out, strategy="random", trials=2), probe, problem=search_problem)
    assert held and all(held)
    live = RunLock(out)  # a live search in another process
    assert live.acquire(create=False)
    try:
        with pytest.raises(UserInputError, match="running search is using this run directory"):
            run_search(tiny_spec(out, strategy="uniform", trials=2, force=True), problem=search_problem)
        assert (out / SPEC_FILE).is_file() and not (tmp_path / "run.old-1").exists()
    finally:
        live.release()
    forced = run_search(tiny_spec(out, strategy="uniform", trials=2, force=True), problem=search_problem)
    assert forced.spec.strategy == "uniform" and (tmp_path / "run.old-1" / SPEC_FILE).is_file()
