"""Reading a run directory: ``spec.json``, ``trials.jsonl``, ``pareto.json``, ``base.json`` and
the fine-tune records, checked as they are read, into one ``RunRecord`` (``_record``).

Reports, ``show``, ``export`` and ``finetune`` all start from the ``RunRecord`` read here, so the
on-disk format is interpreted in one place, and checked there: an empty, truncated or malformed
file is a one-line ``UserInputError``, a torn last line of ``trials.jsonl`` (a killed search) is
skipped with a warning, and a front point the log does not hold is refused (see ``read_run``).
``pareto.json`` on its own is read by ``_pareto``, the fine-tune records by ``_finetune``, a
classic-ML run by ``_classic``; the small single files (spec, recorded checkpoint, test cache)
here.

Policies are built by the ``read_policy`` function the caller passes (``report.run.load_run``
passes the compression policy's reader), so this module stays import-light: the standard
library, ``errors`` and ``metrics`` (itself standard library only).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.metrics import (
    BUDGET_ALIASES,
    BUDGET_METRICS,
    UNIT_SCALES,
    VOCABULARY,
    flops_from_macs,
    macs_from_flops,
    parse_budget,
)
from autocompress.rundir._files import (
    BASE_FILE,
    PARETO_FILE,
    SPEC_FILE,
    TEST_CACHE_FILE,
    TRIALS_FILE,
    Candidate,
    TrialLog,
    read_json,
)
from autocompress.rundir._finetune import _finetuned
from autocompress.rundir._pareto import read_pareto
from autocompress.rundir._record import MAXIMIZED, PolicyReader, RunRecord

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy


def _policy(obj: Any, where: str, read_policy: PolicyReader) -> CompressionPolicy:
    """``read_policy(obj)``, its errors turned into one line saying where the policy was."""
    try:
        return read_policy(obj)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserInputError(f"{where}: not a valid compression policy ({type(exc).__name__}: "
                             f"{_one_line(exc)})") from None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metrics(obj: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, bool):
                continue
            if v is None:
                out[str(k)] = math.nan
            elif isinstance(v, int | float):
                out[str(k)] = float(v)
    return out


def _candidate(rec: Mapping[str, Any], where: str, read_policy: PolicyReader, *, default_id: str
               ) -> Candidate:
    metrics = rec.get("metrics")
    if metrics is None and isinstance(rec.get("result"), Mapping):
        metrics = rec["result"].get("metrics")
    policy = rec.get("policy")
    if policy is None:
        raise UserInputError(f"{where}: record {rec.get('id', default_id)!r} has no 'policy'")
    known = {"id", "policy", "metrics", "status", "feasible", "fidelity", "violations", "error",
             "timings", "worker"}
    return Candidate(
        id=str(rec.get("id", rec.get("trial", default_id))),
        policy=_policy(policy, where, read_policy),
        metrics=_metrics(metrics),
        status=str(rec.get("status", "ok")),
        feasible=bool(rec.get("feasible", True)),
        fidelity=str(rec.get("fidelity", "full")),
        violations=_numbers(rec.get("violations")),
        error=_text(rec.get("error")),
        timings=_numbers(rec.get("timings")),
        worker=_text(rec.get("worker")),
        extra={k: v for k, v in rec.items() if k not in known},
    )


def _numbers(obj: Any) -> dict[str, float]:
    """The finite numbers of a ``{name: number}`` object (anything else is left out)."""
    return {k: v for k, v in _metrics(obj).items() if math.isfinite(v)}


def _text(obj: Any) -> str | None:
    return None if obj is None else str(obj)


_FIDELITY_RANK = {"predicted": 0, "low": 1, "full": 2}


def _latest_per_id(trials: list[Candidate]) -> list[Candidate]:
    """One record per candidate id: a promoted candidate's full-fidelity line beats its low one.

    Under multi-fidelity a candidate has a ``low`` and later a ``full`` line; among records of
    equal fidelity the last one written wins. Order of first appearance is kept.
    """
    best: dict[str, Candidate] = {}
    for t in trials:
        old = best.get(t.id)
        if old is None or _FIDELITY_RANK.get(t.fidelity, 2) >= _FIDELITY_RANK.get(old.fidelity, 2):
            best[t.id] = t
    return list(best.values())


def _objectives(spec: Mapping[str, Any], pareto: Mapping[str, Any]) -> dict[str, str]:
    raw = pareto.get("objectives") or spec.get("objectives") or ["acc", "macs"]
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        items: Sequence[Any] = [{"name": k, "direction": v} for k, v in raw.items()]
    else:
        items = list(raw)
    for item in items:
        if isinstance(item, str):
            name, direction = item, None
        elif isinstance(item, Mapping):
            name, direction = str(item.get("name")), item.get("direction")
        elif isinstance(item, Sequence) and len(item) == 2:
            name, direction = str(item[0]), item[1]
        else:
            continue
        if isinstance(direction, Mapping):  # e.g. {"value": "maximize"}
            direction = direction.get("value")
        direction = str(direction or ("maximize" if name in MAXIMIZED else "minimize")).lower()
        out[name] = "maximize" if direction.startswith("max") else "minimize"
    return out


def parse_budget_value(metric: str, value: Any, base: Mapping[str, float]) -> float | None:
    """An absolute limit from ``50M``, ``50%`` (of the base model), ``2ms``, ``1.5MB`` or a number.

    Returns None when the value is relative and the base model's metric is unknown.
    """
    if isinstance(value, Mapping):
        for key in ("absolute", "value", "limit", "max", "upper"):
            if isinstance(value.get(key), int | float) and not isinstance(value.get(key), bool):
                return float(value[key])
        if "relative" in value and metric in base:
            return float(value["relative"]) * base[metric]
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)(%|[a-z]*)", text)
    if not m:
        return None
    number, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        if metric == "acc_drop":
            return number / 100.0
        return number / 100.0 * base[metric] if metric in base else None
    kind = VOCABULARY[metric].unit if metric in VOCABULARY else "count"
    if kind == "ms":
        return number * UNIT_SCALES["ms"].get(unit, math.nan)
    if kind == "bytes" and unit in UNIT_SCALES["bytes"]:
        return number * UNIT_SCALES["bytes"][unit]
    if unit in UNIT_SCALES["count"]:
        return number * UNIT_SCALES["count"][unit]
    return None


def _budget_metric(name: str) -> str:
    """The metric a budget name bounds (``size`` -> ``size_bytes``, ``acc-drop`` -> ``acc``);
    an unknown name is kept as written."""
    return BUDGET_METRICS.get(BUDGET_ALIASES.get(name, name), name)


def _budgets(spec: Mapping[str, Any], pareto: Mapping[str, Any], base: Mapping[str, float]
             ) -> dict[str, float]:
    """Absolute hard-budget limits per metric (``acc``: the accuracy floor of ``acc-drop``).

    The search engine resolves them once and stores them in ``pareto.json`` (``budget_limits``,
    keyed by budget name); older or hand-written runs give only the budget texts in the spec.
    """
    out: dict[str, float] = {}
    limits = pareto.get("budget_limits")
    if isinstance(limits, Mapping):
        for name, limit in limits.items():
            metric = _budget_metric(str(name))
            if isinstance(limit, int | float) and not isinstance(limit, bool) and math.isfinite(limit):
                out[metric] = float(limit)
    else:
        raw = spec.get("budgets") or pareto.get("budgets") or []
        pairs: list[tuple[str, Any]] = []
        if isinstance(raw, Mapping):
            pairs = [(str(k), v) for k, v in raw.items()]
        elif isinstance(raw, Sequence) and not isinstance(raw, str):
            for item in raw:
                if isinstance(item, str) and "=" in item:
                    k, v = item.split("=", 1)
                    pairs.append((k.strip(), v.strip()))
        for name, value in pairs:
            try:
                budget = parse_budget(f"{name}={value}")
                out[budget.metric] = budget.limit(base)
            except UserInputError:  # relative without base metrics, or not a budget we know
                if BUDGET_ALIASES.get(name, name) == "acc-drop":  # only the strict parser's reading
                    continue
                metric = _budget_metric(name)
                limit = parse_budget_value(metric, value, base)
                if limit is not None and math.isfinite(limit):
                    out[metric] = limit
    if "flops" in out and "macs" not in out:
        out["macs"] = macs_from_flops(out["flops"])
    if "macs" in out and "flops" not in out:
        out["flops"] = flops_from_macs(out["macs"])
    return out


def _base_metrics(run_dir: Path, spec: Mapping[str, Any], pareto: Mapping[str, Any]) -> dict[str, float]:
    """The uncompressed model's metrics: recorded in the run, else the objectives of the reference."""
    reference = pareto.get("reference")
    ref_base = reference.get("base") if isinstance(reference, Mapping) else None
    base_file = run_dir / BASE_FILE
    file_data = read_json(base_file, "the base model's metrics") if base_file.is_file() else None
    for source in (pareto.get("base"), pareto.get("base_metrics"), spec.get("base_metrics"),
                   spec.get("base"), file_data, ref_base):
        if isinstance(source, Mapping):
            got = _metrics(source.get("metrics", source))
            if got:
                return got
    return {}


def _read_trials(trials_file: Path, warnings: list[str], read_policy: PolicyReader
                 ) -> list[Candidate]:
    """Every record of ``trials.jsonl`` with a policy, in file order (``TrialLog.read_checked``)."""
    return [_candidate(rec, f"{str(trials_file)!r} line {line}", read_policy,
                       default_id=str(line - 1))
            for line, rec in TrialLog(trials_file).read_checked(warnings)
            if rec.get("policy") is not None]


def _storage_is_local(spec: Mapping[str, Any]) -> bool:
    """Whether the run's study lives in the run directory (so every trial is in its log).

    With a storage URL or journal path outside the run, other processes with other ``--out``
    directories may share the study and put their candidates on this run's front.
    """
    return spec.get("storage") in (None, "journal", "sqlite")


def _check_front_in_log(path: Path, spec: Mapping[str, Any], front: Sequence[Candidate],
                        logged: Sequence[Candidate], has_log: bool, warnings: list[str]) -> None:
    """Every front point must be a candidate of ``trials.jsonl`` with the same policy.

    The search logs a candidate before it records it in the study and derives ``pareto.json``
    from the study, so a front point missing from the log means the log was truncated or the
    files belong to different runs. Rebuilding the front from the log would silently promote
    points the study knows to be dominated, and reporting the file as it is shows points whose
    evaluation is not on record; the report refuses and says which points.
    """
    trials_file = path / TRIALS_FILE
    by_id: dict[str, list[Candidate]] = {}
    for t in logged:
        by_id.setdefault(t.id, []).append(t)
    missing = [p.id for p in front if p.id not in by_id]
    differs = [p.id for p in front
               if p.id in by_id and all(t.policy != p.policy for t in by_id[p.id])]
    if differs:
        raise UserInputError(
            f"pareto.json point(s) {', '.join(differs)} have a different policy in "
            f"{str(trials_file)!r}: the two files belong to different runs"
        )
    if not missing:
        return
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    if not _storage_is_local(spec):
        warnings.append(
            f"front point(s) {shown} are not in {str(trials_file)!r}: the study lives in shared "
            f"storage {spec.get('storage')!r}, where processes logging to other run directories "
            "evaluated them"
        )
        return
    where = (f"{str(trials_file)!r} does not hold" if has_log
             else f"{str(path)!r} has no trials.jsonl for")
    raise UserInputError(
        f"{where} {len(missing)} of the {len(front)} point(s) in pareto.json ({shown}): the trial "
        "log is truncated or from another run, so the front cannot be trusted; restore "
        "trials.jsonl or run the search again into a new --out"
    )


def read_run(run_dir: str | Path, read_policy: PolicyReader) -> RunRecord:
    """Read ``RUN/spec.json``, ``RUN/trials.jsonl`` and ``RUN/pareto.json`` (and ``base.json``
    and the fine-tune records when present), building policies with ``read_policy``.

    A missing directory or ``pareto.json``, and an empty, truncated or malformed run file are
    user errors saying what is wrong. A torn last line of ``trials.jsonl`` (a killed search) is
    skipped with a warning (``RunRecord.warnings``); a front point that the log does not hold is
    an error (see ``_check_front_in_log``).
    """
    path = Path(run_dir)
    pareto = read_pareto(path)
    spec = read_spec_dict(path)
    warnings: list[str] = []
    trials_file = path / TRIALS_FILE
    logged = _read_trials(trials_file, warnings, read_policy) if trials_file.is_file() else []
    trials = _latest_per_id(logged)
    points = pareto.get("points", pareto.get("front")) or []
    front = [
        _candidate(p, f"{str(path / PARETO_FILE)!r} point #{i}", read_policy, default_id=str(i))
        for i, p in enumerate(points)
    ]
    _check_front_in_log(path, spec, front, logged, trials_file.is_file(), warnings)
    try:
        base = _base_metrics(path, spec, pareto)
        objectives = _objectives(spec, pareto)
        budgets = _budgets(spec, pareto, base)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"{str(path)!r}: malformed spec.json / pareto.json / base.json "
                             f"({type(exc).__name__}: {_one_line(exc)})") from None
    return RunRecord(
        path=path,
        spec=spec,
        trials=trials,
        front=front,
        objectives=objectives,
        base_metrics=base,
        budgets=budgets,
        pareto=dict(pareto),
        warnings=tuple(warnings),
        finetuned=_finetuned(path, front, read_policy),
    )


# -- single files ----------------------------------------------------------------------------------
def read_spec_dict(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/spec.json`` as a dict; ``{}`` when the run has none (or it is not a JSON object).

    A present but empty, truncated or non-JSON file is a one-line ``UserInputError``.
    """
    spec_file = Path(run_dir) / SPEC_FILE
    spec = read_json(spec_file, "the search spec") if spec_file.is_file() else {}
    return dict(spec) if isinstance(spec, Mapping) else {}


def recorded_checkpoint(run_dir: str | Path) -> str | None:
    """The base model checkpoint ``RUN/base.json`` names (the file the search trained or reused),
    or None when there is none or the file cannot be read as an object; it may no longer exist."""
    base_file = Path(run_dir) / BASE_FILE
    if not base_file.is_file():
        return None
    try:
        recorded = json.loads(base_file.read_text()).get("checkpoint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def read_test_cache(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/test_top1.json`` (test-split top-1 by policy key, the base model's under ``_base``);
    ``{}`` when it is missing or unreadable, since it is only a cache."""
    cache_file = Path(run_dir) / TEST_CACHE_FILE
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        cache = {}
    return cache if isinstance(cache, dict) else {}
