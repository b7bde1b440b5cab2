"""The search loop: resume, refusing another run's directory, failures, multi-fidelity, budgets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from autocompress.errors import UserInputError
from autocompress.evaluators import EvalResult
from autocompress.problem import Problem
from autocompress.search import SearchProgress, run_search
from autocompress.search.storage import PARETO_FILE, SPEC_FILE, TRIALS_FILE, TrialLog

pytestmark = pytest.mark.timeout(180)


def final_lines(run_dir: Path) -> list[dict]:
    return [r for r in TrialLog(run_dir / TRIALS_FILE).read()
            if r["final"] and r["status"] in ("ok", "failed")]


def test_rerun_resumes_to_the_requested_trials_and_replays(search_problem: Problem, tmp_path: Path,
                                                           tiny_spec: Callable) -> None:
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


def test_a_different_search_in_the_run_dir_is_refused(search_problem: Problem, tmp_path: Path,
                                                      tiny_spec: Callable) -> None:
    out = tmp_path / "run"
    run_search(tiny_spec(out, strategy="random", trials=2), problem=search_problem)
    before = (out / SPEC_FILE).read_text()
    with pytest.raises(UserInputError) as info:
        run_search(tiny_spec(out, strategy="uniform", trials=2), problem=search_problem)
    assert "strategy" in str(info.value) and "--resume" in str(info.value)
    assert (out / SPEC_FILE).read_text() == before  # nothing overwritten
    # --resume continues the stored search (random), with the new trial count
    resumed = run_search(tiny_spec(out, strategy="uniform", trials=3, resume=True), problem=search_problem)
    assert resumed.spec.strategy == "random" and resumed.n_evaluated == 3
    # --force starts over and keeps the old run aside
    forced = run_search(tiny_spec(out, strategy="uniform", trials=2, force=True), problem=search_problem)
    assert forced.spec.strategy == "uniform" and forced.n_evaluated == 2
    old = tmp_path / "run.old-1"
    assert json.loads((old / SPEC_FILE).read_text())["strategy"] == "random"
    assert len(final_lines(old)) == 3
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
