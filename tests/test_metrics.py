"""The metric vocabulary and the one Budget type: complete, consistent, declared in one place."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from autocompress import metrics
from autocompress.errors import UserInputError
from autocompress.metrics import (
    BUDGET_METRICS,
    COST_METRICS,
    EVAL_METRICS,
    MAXIMIZED,
    PREDICTED_METRICS,
    VOCABULARY,
    Budget,
    Direction,
    Source,
    flops_from_macs,
    format_value,
    parse_budget,
    parse_metric,
    predicted_costs,
)

pytestmark = pytest.mark.timeout(120)

PACKAGE = Path(metrics.__file__).parent


# --- the vocabulary is the one every list reads -------------------------------------------------
def test_every_list_of_metrics_is_read_from_the_vocabulary() -> None:
    from autocompress.envs import BUDGET_METRICS as ENV_BUDGETS
    from autocompress.evaluators import METRICS
    from autocompress.evaluators.compression_evaluator import COST_METRICS as EVAL_COSTS
    from autocompress.report import run, tables
    from autocompress.search import rl_searcher
    from autocompress.search.base import PREDICTED_METRICS as SEARCH_PREDICTED
    from autocompress.search.budgets import BUDGET_METRICS as SEARCH_BUDGETS
    from autocompress.search.spec import OBJECTIVE_METRICS

    assert set(VOCABULARY) == {*EVAL_METRICS, "test_acc"}  # test_acc: reports only
    assert METRICS == {n: VOCABULARY[n].direction for n in EVAL_METRICS}
    assert OBJECTIVE_METRICS == {n: VOCABULARY[n].direction.value for n in EVAL_METRICS}
    assert EVAL_COSTS == SEARCH_PREDICTED == PREDICTED_METRICS == ("macs", "flops", "params", "size_bytes", "bops")
    assert ENV_BUDGETS == rl_searcher._ENV_BUDGET_METRICS == COST_METRICS
    assert COST_METRICS == (*PREDICTED_METRICS, "latency_ms")
    assert SEARCH_BUDGETS is BUDGET_METRICS
    assert set(BUDGET_METRICS.values()) == {*COST_METRICS, "acc"}
    assert run.MAXIMIZED == MAXIMIZED == {"acc", "acc_top5"}
    assert set(run.COST_METRICS) == set(COST_METRICS)
    assert run.COST_METRICS[:3] == ("macs", "flops", "latency_ms")  # a plot's preferred x axes
    assert tuple(tables.METRIC_LABELS) == tuple(VOCABULARY)
    assert tables.FRONT_COLUMNS == {"acc", "macs", "params", "size_bytes", "latency_ms"}


def test_every_metric_an_eval_result_carries_is_declared() -> None:
    """A real evaluation (tiny MLP, predicted latency) reports only declared metrics, all of them."""
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.evaluators.latency import torch_threads
    from autocompress.problem import Problem

    config = EvaluatorConfig(latency="predicted", latency_backend="torch", val_samples=64,
                             low_fidelity_val_samples=32, recalib_batches=1, recalib_batch_size=16)
    with torch_threads(1):
        problem = Problem.build("test_mlp", data="digits", train_epochs=0, evaluator=config, progress=False)
        result = problem.evaluator.evaluate(problem.space.uniform(prune=0.3), fidelity="low")
    assert result.ok, result.error
    assert set(result.metrics) == set(EVAL_METRICS)  # digits has 10 classes: top-5 too
    assert set(problem.evaluator.metrics) == set(EVAL_METRICS)
    assert result.latency_info["kind"] in VOCABULARY["latency_ms"].source.value
    assert result.metrics["flops"] == flops_from_macs(result.metrics["macs"])


def test_directions_units_and_labels_match_what_reports_print() -> None:
    from autocompress.report.tables import METRIC_LABELS, format_metric

    for name, m in VOCABULARY.items():
        assert m.unit in metrics.UNITS
        assert METRIC_LABELS[name] == m.label
        assert (m.direction is Direction.MAXIMIZE) == (m.unit == "fraction"), name
        shown = format_metric(name, 1234.5 if m.unit != "fraction" else 0.9861)
        assert shown == format_value(name, 1234.5 if m.unit != "fraction" else 0.9861)
        expected_tail = {"fraction": "%", "ms": " ms", "bytes": "KiB", "count": "k"}[m.unit]
        assert shown.endswith(expected_tail), (name, shown)
        if m.source is Source.PREDICTED:
            assert m.direction is Direction.MINIMIZE and name in PREDICTED_METRICS
    assert format_metric("acc", 0.9861) == "98.61%"
    assert format_metric("macs", 12.3e6) == "12.30M"
    assert format_metric("latency_ms", 1.23) == "1.230 ms"
    assert format_metric("size_bytes", 45.2 * 1024) == "45.2 KiB"
    assert format_metric("energy", 5e9) == "5.00G"  # undeclared: shown as a count
    assert format_metric("acc", float("nan")) == "-"


# --- FLOPs = 2 x MACs is written once ----------------------------------------------------------
_CONVERSION = re.compile(
    r"\b2(?:\.0)?\s*\*[^\n#]*\bmacs\b|\bmacs\b[^\n#]*\*\s*2(?:\.0)?\b|flops[^\n#]*/\s*2(?:\.0)?\b"
    r"|/\s*2(?:\.0)?\s*/\s*\w*macs",
    re.IGNORECASE,
)


def test_flops_from_macs_is_written_only_in_metrics() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "metrics.py" and path.parent == PACKAGE:
            continue
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        code = re.sub(r'""".*?"""', "", code, flags=re.S)  # docstrings may say FLOPs = 2 x MACs
        for line in code.splitlines():
            if _CONVERSION.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}: {line.strip()}")
    assert not offenders, offenders
    assert _CONVERSION.search('"flops": 2.0 * macs,')  # the pattern does catch the old spelling
    assert _CONVERSION.search('out["macs"] = out["flops"] / 2.0')
    costs = predicted_costs({"macs": 7, "params": 3, "size_bytes": 12, "bops": 448})
    assert costs == {"macs": 7.0, "flops": 14.0, "params": 3.0, "size_bytes": 12.0, "bops": 448.0}
    assert tuple(costs) == PREDICTED_METRICS


def test_metrics_module_imports_nothing_heavy() -> None:
    """Specs, reports and the CLI read the vocabulary without loading torch."""
    tree = ast.parse((PACKAGE / "metrics.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {*sys.stdlib_module_names, "autocompress"}, imported
    own = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           and node.module and node.module.startswith("autocompress")}
    assert own == {"autocompress.errors"}


# --- names and budgets: one-line errors naming what is allowed ----------------------------------
def test_parse_metric_accepts_aliases_and_names_the_allowed_values() -> None:
    assert parse_metric("Size") == "size_bytes"
    assert parse_metric(" top5 ") == "acc_top5"
    assert parse_metric("latency") == "latency_ms"
    with pytest.raises(UserInputError) as err:
        parse_metric("energy", what="objective")
    msg = str(err.value)
    assert "\n" not in msg and "'energy'" in msg
    assert msg.endswith("allowed: " + ", ".join(EVAL_METRICS))
    with pytest.raises(UserInputError, match="allowed: macs, flops$"):
        parse_metric("acc", allowed=("macs", "flops"))
    assert metrics.metric("bops").unit == "count"
    with pytest.raises(UserInputError, match=r"^unknown metric 'size'; allowed: acc, "):
        metrics.metric("size")  # exact names only: aliases are for parse_metric


@pytest.mark.parametrize("text", ["watts=5", "macs", "flops=fifty", "size=10XB", "acc-drop=3", "macs=0"])
def test_budget_errors_are_one_line_with_the_allowed_values(text: str) -> None:
    with pytest.raises(UserInputError) as err:
        parse_budget(text)
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(text) in msg or text.split("=")[0] in msg
    name = text.split("=")[0]
    if "=" in text and name in BUDGET_METRICS:
        assert VOCABULARY[BUDGET_METRICS[name]].budget_hint in msg
    else:
        assert ", ".join(BUDGET_METRICS) in msg


def test_one_budget_type_for_search_and_env() -> None:
    from autocompress import envs
    from autocompress.envs._features import resolve_budgets
    from autocompress.search import budgets

    assert envs.Budget is budgets.Budget is Budget
    half = Budget(0.5)  # the env's form: a fraction of the key's metric
    assert half.name is None and half.relative and half.fraction == 0.5
    assert half.bind("size_bytes") == Budget("size", 0.5, relative=True)
    base = {"macs": 100.0, "size_bytes": 40.0}
    # The env accepts the search's parsed budgets too, keyed by the metric they bound.
    assert resolve_budgets({"macs": half, "size_bytes": parse_budget("size=10B")}, base) == {
        "macs": 50.0, "size_bytes": 10.0,
    }
    with pytest.raises(UserInputError, match="bounds 'macs', not 'size_bytes'"):
        resolve_budgets({"size_bytes": parse_budget("macs=50%")}, base)
    with pytest.raises(UserInputError, match=r"^Budget fraction 0 is not allowed; allowed: a number > 0$"):
        Budget(0)
    with pytest.raises(UserInputError, match="names no metric"):
        _ = half.metric
    assert parse_budget("latency=2ms").describe() == "latency=2ms"
    assert parse_budget("size=1.5MB").describe() == "size=1.5e+06B"


def test_cached_evaluations_depend_on_the_vocabulary_code() -> None:
    """FLOPs are computed in metrics.py, so editing it must make cached results unreachable."""
    from autocompress.evaluators import cache as cache_mod

    cache_mod.logic_fingerprint.cache_clear()
    fp = cache_mod.logic_fingerprint()
    real = Path.read_bytes

    def edited(path: Path) -> bytes:
        data = real(path)
        return data + b"\n# edited\n" if path == PACKAGE / "metrics.py" else data

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "read_bytes", edited)
            cache_mod.logic_fingerprint.cache_clear()
            assert cache_mod.logic_fingerprint() != fp
    finally:
        cache_mod.logic_fingerprint.cache_clear()
    assert cache_mod.logic_fingerprint() == fp
