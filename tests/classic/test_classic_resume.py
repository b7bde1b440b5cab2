"""Resuming a classic search: recorded candidates are replayed (never re-evaluated or rewritten),
only missing ones are evaluated, and the result equals an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from autocompress.classic import make_spec, run_classic_search
from autocompress.cli import main

RF = "sklearn:random_forest:8"
BC = "sklearn:breast_cancer"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})


def _settings(run: Path) -> list[tuple[str, float]]:
    lines = (run / "trials.jsonl").read_text().splitlines()
    return [(json.loads(ln)["setting"], json.loads(ln)["metrics"]["size_bytes"]) for ln in lines]


@pytest.mark.parametrize("strategy", ["nsga2", "greedy"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(strategy: str, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    run_classic_search(make_spec(model=RF, data=BC, budgets=["size=40%"], strategy=strategy,
                                 trials=12, out=str(whole)))
    part = tmp_path / "part"
    run_classic_search(make_spec(model=RF, data=BC, budgets=["size=40%"], strategy=strategy,
                                 trials=12, out=str(part)))
    lines = (part / "trials.jsonl").read_text().splitlines(keepends=True)
    # a kill after five candidates, in the middle of writing the sixth
    (part / "trials.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    (part / "pareto.json").unlink()
    kept = "".join(lines[:5])
    res = _cli("search", "--model", RF, "--data", BC, "--budget", "size=40%", "--strategy", strategy,
               "--trials", "12", "--out", str(part), "--resume")
    assert res.exit_code == 0, res.output
    text = (part / "trials.jsonl").read_text()
    assert text.startswith(kept) and len(text.splitlines()) == len(lines)  # appended, once each
    assert _settings(part) == _settings(whole)
    assert (part / "pareto.json").is_file()
    # more trials later: only the new ones are appended
    res = _cli("search", "--model", RF, "--data", BC, "--budget", "size=40%", "--strategy", strategy,
               "--trials", "14", "--out", str(part), "--resume")
    assert res.exit_code == 0, res.output
    after = (part / "trials.jsonl").read_text()
    assert after.startswith(text) and len(after.splitlines()) in (len(lines), 14)


def test_resume_refuses_other_settings_and_missing_runs(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run_classic_search(make_spec(model=RF, data=BC, strategy="random", trials=3, out=str(run)))
    before = (run / "trials.jsonl").read_text()
    for args, words in [
        (["--strategy", "tpe", "--out", str(run), "--resume"], "--resume: strategy is 'tpe'"),
        (["--strategy", "random", "--seed", "4", "--out", str(run), "--resume"], "--resume: seed is 4"),
        (["--strategy", "random", "--out", str(tmp_path / "none"), "--resume"], "holds no classic"),
        (["--strategy", "random", "--out", str(run), "--resume", "--force"], "exclude each other"),
        (["--strategy", "random", "--out", str(run)], "pass --resume to continue"),
    ]:
        res = _cli("search", "--model", RF, "--data", BC, "--trials", "5", *args)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.output
    assert (run / "trials.jsonl").read_text() == before and not (tmp_path / "none").exists()
