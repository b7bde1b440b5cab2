"""Optuna's RDB storage on a real PostgreSQL server (started and stopped here): the study a search
writes there, several processes on one study from different run directories (as on several
machines), and the one-line refusals of a storage that cannot work."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from _postgres import PASSWORD, PostgresServer, postgres_server
from click.testing import CliRunner
from search_proc import wait_for

from autocompress.cli import main
from autocompress.errors import UserInputError
from autocompress.problem import Problem
from autocompress.search import SearchSpec, run_search
from autocompress.search.storage import (
    PARETO_FILE,
    SPEC_FILE,
    TRIALS_FILE,
    TrialLog,
    mask_url,
    open_storage,
    study_workers,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _finals(run: Path) -> list[dict[str, Any]]:
    return [r for r in TrialLog(run / TRIALS_FILE).read()
            if r.get("final") and r["status"] in ("ok", "failed")]


def _objectives(run: Path) -> list[str]:
    return [o[0] if isinstance(o, list) else o["name"]
            for o in json.loads((run / PARETO_FILE).read_text())["objectives"]]


def _candidates(run: Path, names: list[str]) -> list[tuple[str, tuple[float, ...]]]:
    """(policy key, objective values) of every evaluated candidate, in policy-key order."""
    return sorted((r["policy_key"], tuple(round(r["metrics"][n], 6) for n in names))
                  for r in _finals(run))


def _front(run: Path, names: list[str]) -> list[tuple[str, tuple[float, ...]]]:
    from autocompress.compression import CompressionPolicy

    points = json.loads((run / PARETO_FILE).read_text())["points"]
    return sorted((CompressionPolicy.from_dict(p["policy"]).key(),
                   tuple(round(p["metrics"][n], 6) for n in names)) for p in points)


def _no_password_in(*paths: Path) -> None:
    for path in paths:
        assert PASSWORD not in path.read_text(), path


def test_cli_search_on_postgresql_matches_the_journal_and_keeps_no_password(
        pg: PostgresServer, search_problem: Problem, tmp_path: Path, tiny_spec: Callable,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same settings and seed give the same candidates and front on PostgreSQL as on the
    default journal; spec.json, pareto.json and the output show the URL without its password,
    and the same command again resumes (nothing evaluated twice)."""
    url = pg.createdb("cli_search")
    ref = run_search(tiny_spec(tmp_path / "journal", trials=4), problem=search_problem)
    assert ref.n_evaluated == 4

    config = tmp_path / "tiny.yaml"  # the same settings, as a preset
    config.write_text(yaml.safe_dump({k: v for k, v in tiny_spec("x").to_dict().items() if k != "out"}))
    monkeypatch.chdir(tmp_path)
    args = ["search", "--config", str(config), "--trials", "4", "--storage", url, "--out", "pgrun",
            "--no-report"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, (res.output[-3000:], res.exception)
    assert PASSWORD not in res.output
    run = tmp_path / "pgrun"
    names = _objectives(run)
    assert _candidates(run, names) == _candidates(tmp_path / "journal", names)
    assert _front(run, names) == _front(tmp_path / "journal", names)
    assert len(_finals(run)) == 4
    assert not (run / "study.journal").exists() and not (run / "study.db").exists()
    stored = json.loads((run / SPEC_FILE).read_text())["storage"]
    assert stored == mask_url(url) == url.replace(PASSWORD, "***")
    assert json.loads((run / PARETO_FILE).read_text())["storage"] == stored
    _no_password_in(run / SPEC_FILE, run / PARETO_FILE, run / TRIALS_FILE)

    # the study is in the database: 4 counted trials, and the same command again resumes it
    study = optuna.load_study(study_name="autocompress", storage=url)
    assert sum(t.user_attrs.get("status") == "ok" for t in study.get_trials()) == 4
    lines_before = (run / TRIALS_FILE).read_text()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output[-3000:]
    assert (run / TRIALS_FILE).read_text() == lines_before
    # --resume without the URL cannot connect (spec.json keeps no password): it says so
    res = CliRunner().invoke(main, ["search", "--resume", "--out", "pgrun", "--trials", "5"])
    assert res.exit_code == 2 and "--storage" in res.output and PASSWORD not in res.output, res.output


def _worker(spec: SearchSpec, problem: Problem, barrier: Path, n: int) -> None:
    """A search process (forked: the problem built once in the test is shared, not rebuilt)
    that waits after its setup, and again after its first candidate, until ``n`` of them got
    there: they really run together, and a fast one (cached evaluations) cannot take every
    candidate before the other asks for its first."""
    def wait_for(stage: str) -> None:
        (barrier / f"{stage}-{os.getpid()}").touch()
        deadline = time.time() + 120
        while len(list(barrier.glob(f"{stage}-*"))) < n and time.time() < deadline:
            time.sleep(0.05)

    first = [True]

    def progress(p: Any) -> None:
        if p.phase == "start":
            wait_for("ready")
        elif p.phase == "trial" and first[0]:
            first[0] = False
            wait_for("first")

    run_search(spec, progress, problem=problem)


def test_two_processes_in_two_run_directories_share_one_postgresql_study(
        pg: PostgresServer, search_problem: Problem, tmp_path: Path, tiny_spec: Callable) -> None:
    """Two search processes, each with its own run directory (two machines), one study: the
    fixed total is shared, no trial is lost or evaluated twice, each directory logs its own
    trials, and both fronts equal a single worker's over the same sweep."""
    url = pg.createdb("two_workers")
    settings = {"strategy": "uniform", "trials": 6}
    single = run_search(tiny_spec(tmp_path / "single", **settings), problem=search_problem)
    assert single.n_evaluated == 6

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    specs = [tiny_spec(tmp_path / f"node{i}", storage=url, study_name="shared", **settings)
             for i in (1, 2)]
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_worker, args=(spec, search_problem, barrier, 2)) for spec in specs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=200)
        assert p.exitcode == 0, p.exitcode  # the exception, if any, is printed to stderr

    study = optuna.load_study(study_name="shared", storage=open_storage(specs[0]))
    counted = [t for t in study.get_trials() if t.user_attrs.get("status") in ("ok", "failed")]
    assert len(counted) == 6  # the count is shared, not 6 each
    assert len({t.user_attrs["policy_key"] for t in counted}) == 6  # nothing evaluated twice
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))  # nothing left open
    assert sorted(w.rank for w in study_workers(study).values()) == [0, 1]
    logged = [r for spec in specs for r in _finals(spec.run_dir)]
    assert sorted(r["id"] for r in logged) == sorted(t.number for t in counted)  # one line each
    assert all(_finals(spec.run_dir) for spec in specs)  # both processes evaluated candidates

    names = _objectives(tmp_path / "single")
    merged = sorted((r["policy_key"], tuple(round(r["metrics"][n], 6) for n in names)) for r in logged)
    assert merged == _candidates(tmp_path / "single", names)
    for spec in specs:  # each directory's front comes from the whole study
        assert _front(spec.run_dir, names) == _front(tmp_path / "single", names)
        _no_password_in(spec.run_dir / SPEC_FILE, spec.run_dir / PARETO_FILE)


@pytest.mark.slow
def test_a_ray_run_and_a_search_process_share_one_postgresql_study(
        pg: PostgresServer, search_problem: Problem, tmp_path: Path, tiny_spec: Callable) -> None:
    """A Ray run (Tune trials on a local Ray) and a plain search process, each in its own run
    directory, on one study: the total is shared, every trial number and model appears once, both
    evaluated candidates, and together they give a single worker's sweep and front."""
    url = pg.createdb("ray_and_local")
    settings = {"strategy": "uniform", "trials": 6}
    single = run_search(tiny_spec(tmp_path / "single", **settings), problem=search_problem)
    assert single.n_evaluated == 6

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    local = tiny_spec(tmp_path / "local", storage=url, study_name="shared", **settings)
    on_ray = tiny_spec(tmp_path / "ray", storage=url, study_name="shared", backend="ray",
                       workers=2, **settings)
    # Both wait after setup and after their first candidate until the other got there: the
    # process (cached evaluations) cannot sweep everything before Tune's first trial ends.
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("search_proc.py")), json.dumps(local.to_dict()),
         str(barrier), "2", "ready,first"],
        env={**os.environ, "PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    first = [True]

    def progress(p: Any) -> None:
        if p.phase == "start":
            wait_for(barrier, "ready", 2)
        elif p.phase == "trial" and first[0]:
            first[0] = False
            wait_for(barrier, "first", 2)

    try:
        run_search(on_ray, progress, problem=search_problem)
        _out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="shared", storage=open_storage(local))
    counted = [t for t in study.get_trials() if t.user_attrs.get("status") in ("ok", "failed")]
    assert len(counted) == 6  # the count is shared, not 6 each
    assert len({t.user_attrs["policy_key"] for t in counted}) == 6  # nothing evaluated twice
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    logged = [r for spec in (local, on_ray) for r in _finals(spec.run_dir)]
    assert sorted(r["id"] for r in logged) == sorted(t.number for t in counted)  # one line each
    assert _finals(local.run_dir) and _finals(on_ray.run_dir)  # both evaluated candidates
    assert list((on_ray.run_dir / "ray").glob("*/tuner.pkl"))  # ... the Ray run's through Tune

    names = _objectives(tmp_path / "single")
    merged = sorted((r["policy_key"], tuple(round(r["metrics"][n], 6) for n in names)) for r in logged)
    assert merged == _candidates(tmp_path / "single", names)
    # Re-running either finds the study complete and writes the whole study's front.
    again = run_search(on_ray.replace(backend="local"), problem=search_problem)
    assert again.n_evaluated == 6 and again.stop_reason == "completed"
    assert _front(on_ray.run_dir, names) == _front(tmp_path / "single", names)


def test_a_storage_that_cannot_work_is_one_line_and_creates_nothing(
        pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _postgres import _free_port

    monkeypatch.chdir(tmp_path)
    cases = [
        (f"postgresql://autocompress:{PASSWORD}@127.0.0.1:{_free_port()}/x", "Connection refused"),
        (pg.url("postgres", password=PASSWORD + "-wrong"), "password authentication failed"),
        (pg.url("no_such_db"), 'database "no_such_db" does not exist'),
        (f"postgresql://autocompress:{PASSWORD}@127.0.0.1:port/x", "not a valid database URL"),
        (f"postgres://autocompress:{PASSWORD}@127.0.0.1/x", "postgresql://, not postgres://"),
        (f"postgresql+nodriver://autocompress:{PASSWORD}@127.0.0.1/x", "cannot be opened"),
    ]
    for i, (url, fragment) in enumerate(cases):
        out = tmp_path / f"run{i}"
        res = CliRunner().invoke(main, ["search", "--model", "test_convnet", "--data", "digits",
                                        "--storage", url, "--out", str(out)])
        assert res.exit_code == 2, (url, res.output[-2000:])
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert fragment in lines[0] and "***" in lines[0], lines[0]
        assert PASSWORD not in res.output and "Traceback" not in res.output
        assert not out.exists()  # refused before anything was created
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(UserInputError, match=re.escape("password masked")):
        open_storage(SearchSpec(out=str(tmp_path / "r"), storage=mask_url(pg.url())))


def test_missing_server_binaries_fail_the_tests_instead_of_skipping_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI must not go green without PostgreSQL: no binaries is a failure naming the fix."""
    import _postgres

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_postgres, "DISTRO_BIN_GLOB", str(tmp_path / "*" / "bin"))
    assert _postgres.find_bin_dir() is None
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):  # noqa: PT012
        with _postgres.postgres_server():
            pass


def test_a_password_from_pgpassword_keeps_it_out_of_the_url(
        pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autocompress.search.storage import check_database_url

    url = pg.url("postgres", password=None)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(UserInputError, match="password"):
        check_database_url(url, tmp_path / "run")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    check_database_url(url, tmp_path / "run")
    assert type(open_storage(SearchSpec(out=str(tmp_path / "run"), storage=url))).__name__ == "RDBStorage"
