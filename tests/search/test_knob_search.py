"""Searches over the opt-in knobs (``sparsity``, ``share_bits``), from the API and the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from autocompress.cli import main
from autocompress.compression import count_size_bytes
from autocompress.errors import UserInputError
from autocompress.search import run_search
from autocompress.search.runner import build_problem
from autocompress.search.storage import read_spec

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("strategy", ["ladder", "random"])
def test_tiny_search_over_prune_sparsity_and_sharing(tmp_path: Path, tiny_spec: Callable,
                                                     _isolated_cache: Path, strategy: str) -> None:
    spec = tiny_spec(tmp_path / "run", knobs=["prune", "sparsity", "share_bits"], trials=4,
                     strategy=strategy, objectives=["acc", "size_bytes"], budgets=["size=60%"])
    assert spec.knobs == ("prune", "sparsity", "share_bits")
    problem = build_problem(spec, progress=False)
    assert all({"sparsity", "share_bits"} <= set(p.knobs) for p in problem.space.decision_points)
    result = run_search(spec, problem=problem)
    done = [c for c in result.trials if c.status == "ok"]
    assert len(done) == 4
    assert any(a.sparsity > 0 or a.share_bits < 32 for c in done for a in c.policy.layers.values())
    for c in done[:2]:  # the recorded size is the one counted on the compressed model
        small = problem.evaluator.compress(c.policy)
        assert c.metrics["size_bytes"] == pytest.approx(count_size_bytes(small))
    again = run_search(tiny_spec(tmp_path / "again", knobs=["prune", "sparsity", "share_bits"], trials=4,
                                 strategy=strategy, objectives=["acc", "size_bytes"], budgets=["size=60%"]),
                       problem=problem)
    assert [c.policy for c in again.trials] == [c.policy for c in result.trials]  # seeded


def test_spec_refuses_bad_knob_sets(tiny_spec: Callable, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown knob 'sparsty'; allowed: .*sparsity"):
        tiny_spec(tmp_path, knobs=["prune", "sparsty"])
    with pytest.raises(UserInputError, match="share_bits and w_bits"):
        tiny_spec(tmp_path, knobs=["w_bits", "share_bits"])


@pytest.mark.parametrize(
    ("knobs", "needle"),
    [(["sparsty"], "sparsty"), (["w_bits", "share_bits"], "share_bits and w_bits")],
)
def test_cli_refuses_bad_knobs_in_one_line(tmp_path: Path, knobs: list[str], needle: str) -> None:
    args = ["search", "--model", "test_mlp", "--out", str(tmp_path / "run")]
    for k in knobs:
        args += ["--knob", k]
    res = CliRunner().invoke(main, args, env={"COLUMNS": "160"})
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "run").exists()


def test_cli_accepts_the_knobs(tmp_path: Path, _isolated_cache: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["search", "--model", "test_mlp", "--knob", "prune", "--knob", "sparsity",
                                    "--knob", "share_bits", "--trials", "2", "--seed", "0",
                                    "--round-to", "1", "--no-report", "--out", str(out)],
                             env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output[-3000:]
    spec = read_spec(out)
    assert spec is not None and spec.knobs == ("prune", "sparsity", "share_bits")


def test_tiny_search_over_shared_projections(tmp_path: Path, tiny_spec: Callable,
                                             _isolated_cache: Path) -> None:
    """``proj_rank`` on a stacked GRU: searched like any knob, its recorded MACs and params those
    counted on the compressed model; it cannot be searched next to ``rank``."""
    from autocompress.compression import LowRankRNN, count_macs, count_params

    spec = tiny_spec(tmp_path / "run", model="test_gru", knobs=["prune", "w_bits", "proj_rank"], trials=4,
                     train_epochs=1,
                     strategy="random", objectives=["acc", "macs"], budgets=["macs=70%"])
    problem = build_problem(spec, progress=False)
    gru = next(p for p in problem.space.decision_points if p.name == "gru")
    assert "proj_rank" in gru.knobs
    result = run_search(spec, problem=problem)
    done = [c for c in result.trials if c.status == "ok"]
    assert len(done) == 4 and any(c.policy.get("gru").proj_rank < 1.0 for c in done)
    shared = [c for c in done if isinstance(problem.evaluator.compress(c.policy).gru, LowRankRNN)]
    assert shared
    for c in shared[:2]:
        small = problem.evaluator.compress(c.policy)
        x = problem.space.example_input
        assert c.metrics["macs"] == count_macs(small, x) and c.metrics["params"] == count_params(small)
    with pytest.raises(UserInputError, match="proj_rank and rank both factorise"):
        tiny_spec(tmp_path / "both", model="test_gru", knobs=["rank", "proj_rank"])
