"""What a trial reports to Tune (its ``ac_*`` keys), read back by the driver as an ``EvalResult``.

The worker writes the report (``_report_dict``); the driver's recorder turns it into a result and
a status (``_result_from_report``) and names the node it ran on (``_where``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocompress.evaluators import EvalResult


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _report_dict(policy_json: str, result: EvalResult, objectives: list[str], status: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ac_policy": policy_json, "ac_result": json.dumps(result.to_dict()), "ac_status": status,
        "ac_fidelity": result.fidelity,
        "score": float(result.metrics["acc"]) if result.ok and _finite(result.metrics.get("acc")) else -1.0,
    }
    for name in objectives:
        v = result.metrics.get(name)
        out[name] = float(v) if _finite(v) else None
    return out


def _result_from_report(report: Mapping[str, Any] | None, error: bool) -> tuple[EvalResult, str]:
    from autocompress.evaluators import EvalResult

    if not report or "ac_result" not in report:
        why = "the Ray trial errored" if error else "the Ray trial ended without a result"
        return EvalResult.failure(why), "failed"
    res = EvalResult.from_dict(json.loads(report["ac_result"]))
    return res, str(report.get("ac_status", "ok" if res.ok else "failed"))


def _where(report: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The host and Ray node a trial reported it ran on (None when it reported nothing)."""
    if not report or "ac_node" not in report:
        return None
    return {"host": str(report.get("ac_host", "")), "node": str(report["ac_node"])}
