"""EvalResult record, metric directions and the evaluator registry."""

from __future__ import annotations

import json
import math

import pytest

from autocompress.errors import UserInputError
from autocompress.evaluators import (
    METRICS,
    BaseEvaluator,
    CompressionEvaluator,
    Direction,
    EvalResult,
    create_evaluator,
    list_evaluators,
    register_evaluator,
)
from autocompress.evaluators.base import evaluator_class


def test_metric_directions() -> None:
    assert set(METRICS) == {"acc", "acc_top5", "macs", "flops", "params", "size_bytes", "bops", "latency_ms"}
    assert METRICS["acc"] is Direction.MAXIMIZE and METRICS["acc_top5"] is Direction.MAXIMIZE
    assert all(METRICS[m] is Direction.MINIMIZE for m in METRICS if not m.startswith("acc"))


def test_eval_result_json_round_trip() -> None:
    r = EvalResult(
        metrics={"acc": 0.5, "macs": 1e6, "latency_ms": math.nan},
        latency_info={"backend": "ort", "batch": 1, "threads": 1, "kind": "predicted"},
        timings={"compress": 0.1, "total": 0.2}, fidelity="low",
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert d["metrics"]["latency_ms"] is None  # strict JSON has no NaN
    back = EvalResult.from_dict(d)
    assert back.metrics["acc"] == 0.5 and math.isnan(back.metrics["latency_ms"])
    assert back.latency_info == r.latency_info and back.timings == r.timings
    assert back.fidelity == "low" and back.ok and not back.cached


def test_eval_result_validation() -> None:
    with pytest.raises(UserInputError, match="fidelity"):
        EvalResult(fidelity="medium")
    with pytest.raises(UserInputError, match="status"):
        EvalResult(status="weird")
    with pytest.raises(UserInputError, match="error"):
        EvalResult(status="failed")
    f = EvalResult.failure("compress failed:\n  boom", metrics={"macs": 3.0})
    assert f.status == "failed" and not f.ok and f.error == "compress failed: boom"
    with pytest.raises(UserInputError, match="_version"):
        EvalResult.from_dict({**f.to_dict(), "_version": 99})


def test_registry() -> None:
    assert "compression" in list_evaluators()
    assert evaluator_class("compression") is CompressionEvaluator
    assert list_evaluators("comp*") == ["compression"]
    with pytest.raises(UserInputError, match="allowed: .*compression"):
        create_evaluator("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_evaluator("compression")(CompressionEvaluator)


def test_directions_helper() -> None:
    class Fixed(BaseEvaluator):
        metrics = {"acc": Direction.MAXIMIZE, "macs": Direction.MINIMIZE}

        def evaluate(self, policy, fidelity="full"):  # type: ignore[no-untyped-def]
            return EvalResult(metrics={"acc": 1.0, "macs": 2.0}, fidelity=fidelity)

    ev = Fixed()
    assert ev.directions(["macs"]) == {"macs": Direction.MINIMIZE}
    with pytest.raises(UserInputError, match="latency_ms"):
        ev.directions(["latency_ms"])
