"""Reading a finished (or running) search directory: the spec, every trial, the Pareto front.

A run directory ``RUN/`` holds ``spec.json`` (the search spec), ``trials.jsonl`` (one JSON record per
evaluated candidate) and ``pareto.json`` (the front). Reports, ``show``, ``export`` and ``finetune``
all start from the ``RunRecord`` read here, so the on-disk format is interpreted in one place.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.compression import CompressionPolicy
from autocompress.errors import UserInputError

#: Metrics that are better when larger; every other metric is a cost (smaller is better).
MAXIMIZED: frozenset[str] = frozenset({"acc", "acc_top5"})
#: Cost metrics in the order a plot prefers them for its x axis when no objective names one.
COST_METRICS: tuple[str, ...] = ("macs", "flops", "latency_ms", "size_bytes", "params", "bops")


@dataclass(frozen=True)
class Candidate:
    """One evaluated candidate: a trial of the search or a point of the front.

    ``id`` is kept as a string so that ``--point 7`` and a JSON id ``7`` name the same point.
    """

    id: str
    policy: CompressionPolicy
    metrics: dict[str, float]
    status: str = "ok"
    feasible: bool = True
    fidelity: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the candidate was evaluated successfully and has finite metrics."""
        return self.status == "ok" and all(
            v is not None and math.isfinite(v) for v in self.metrics.values()
        )


@dataclass(frozen=True)
class RunRecord:
    """Everything a report needs from one run directory.

    Args:
        path: the run directory.
        spec: ``spec.json`` as a dict.
        trials: every candidate of ``trials.jsonl`` in file order (failed ones included).
        front: the points of ``pareto.json`` (feasible, non-dominated), in file order.
        objectives: objective name -> ``"maximize"`` / ``"minimize"``.
        base_metrics: metrics of the uncompressed model (empty when the run does not record them).
        budgets: hard budgets as absolute upper bounds per cost metric (``acc`` as a lower bound).
        pareto: ``pareto.json`` as a dict (hypervolume, knee, ...).
    """

    path: Path
    spec: dict[str, Any]
    trials: list[Candidate]
    front: list[Candidate]
    objectives: dict[str, str]
    base_metrics: dict[str, float]
    budgets: dict[str, float]
    pareto: dict[str, Any]

    @property
    def n_evaluated(self) -> int:
        """Candidates that cost an evaluation (status ``ok`` or ``failed``)."""
        return sum(t.status in ("ok", "failed") for t in self.trials)

    @property
    def front_ids(self) -> list[str]:
        """Ids of the Pareto points, in file order."""
        return [p.id for p in self.front]

    @property
    def knee_id(self) -> str | None:
        """Id of the knee point of the front, when the run names one."""
        knee = self.pareto.get("knee")
        if isinstance(knee, Mapping):
            knee = knee.get("id")
        return None if knee is None else str(knee)

    @property
    def cost_metric(self) -> str:
        """The cost objective a 2-D plot puts on its x axis (first minimised objective)."""
        for name, direction in self.objectives.items():
            if direction == "minimize":
                return name
        for name in COST_METRICS:
            if any(name in c.metrics for c in self.front or self.trials):
                return name
        return "macs"

    @property
    def quality_metric(self) -> str:
        """The accuracy objective a 2-D plot puts on its y axis."""
        for name, direction in self.objectives.items():
            if direction == "maximize":
                return name
        return "acc"

    def point(self, point_id: str | int) -> Candidate:
        """The front point with this id; any other id is a user error listing the valid ids."""
        key = str(point_id).strip()
        for p in self.front:
            if p.id == key:
                return p
        ids = sorted(self.front_ids, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))
        valid = ", ".join(ids) or "(the front is empty)"
        raise UserInputError(
            f"point {key!r} is not on the Pareto front of {str(self.path)!r}; valid points: {valid}"
        )


# -- reading ------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{str(path)!r} does not exist: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{str(path)!r} is not valid JSON ({exc}); {what}") from None


def _policy(obj: Any, where: str) -> CompressionPolicy:
    """A policy from the serialised dict, a JSON string, or a bare ``{name: knobs}`` mapping."""
    if isinstance(obj, CompressionPolicy):
        return obj
    if isinstance(obj, str):
        return CompressionPolicy.from_json(obj)
    if isinstance(obj, Mapping) and "_type" in obj:
        return CompressionPolicy.from_dict(obj)
    if isinstance(obj, Mapping):
        layers = obj.get("layers", obj)
        if isinstance(layers, Mapping):
            return CompressionPolicy(dict(layers))
    raise UserInputError(f"{where}: cannot read a compression policy from {type(obj).__name__}")


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


def _candidate(rec: Mapping[str, Any], where: str, *, default_id: str) -> Candidate:
    metrics = rec.get("metrics")
    if metrics is None and isinstance(rec.get("result"), Mapping):
        metrics = rec["result"].get("metrics")
    policy = rec.get("policy")
    if policy is None:
        raise UserInputError(f"{where}: record {rec.get('id', default_id)!r} has no 'policy'")
    known = {"id", "policy", "metrics", "status", "feasible", "fidelity"}
    return Candidate(
        id=str(rec.get("id", rec.get("trial", default_id))),
        policy=_policy(policy, where),
        metrics=_metrics(metrics),
        status=str(rec.get("status", "ok")),
        feasible=bool(rec.get("feasible", True)),
        fidelity=str(rec.get("fidelity", "full")),
        extra={k: v for k, v in rec.items() if k not in known},
    )


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


_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTES = {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3}
_BUDGET_ALIASES = {"size": "size_bytes", "latency": "latency_ms", "acc-drop": "acc_drop",
                   "acc_drop": "acc_drop"}


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
    if metric == "latency_ms":
        return number * {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}.get(unit, math.nan)
    if metric == "size_bytes" and unit in _BYTES:
        return number * _BYTES[unit]
    if unit in _UNITS:
        return number * _UNITS[unit]
    return None


def _budgets(spec: Mapping[str, Any], pareto: Mapping[str, Any], base: Mapping[str, float]
             ) -> dict[str, float]:
    """Absolute hard-budget limits per metric (``acc``: the accuracy floor of ``acc-drop``).

    The search engine resolves them once and stores them in ``pareto.json`` (``budget_limits``,
    keyed by budget name); older or hand-written runs give only the budget texts in the spec.
    """
    from autocompress.search.budgets import BUDGET_METRICS, parse_budget

    out: dict[str, float] = {}
    limits = pareto.get("budget_limits")
    if isinstance(limits, Mapping):
        for name, limit in limits.items():
            metric = BUDGET_METRICS.get(str(name), _BUDGET_ALIASES.get(str(name), str(name)))
            if isinstance(limit, int | float) and not isinstance(limit, bool) and math.isfinite(limit):
                out["acc" if metric == "acc_drop" else metric] = float(limit)
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
                metric = _BUDGET_ALIASES.get(name, name)
                limit = parse_budget_value(metric, value, base)
                if limit is not None and math.isfinite(limit) and metric != "acc_drop":
                    out[metric] = limit
    if "flops" in out and "macs" not in out:
        out["macs"] = out["flops"] / 2.0
    if "macs" in out and "flops" not in out:
        out["flops"] = out["macs"] * 2.0
    return out


def _base_metrics(run_dir: Path, spec: Mapping[str, Any], pareto: Mapping[str, Any]) -> dict[str, float]:
    """The uncompressed model's metrics: recorded in the run, else the objectives of the reference."""
    reference = pareto.get("reference")
    ref_base = reference.get("base") if isinstance(reference, Mapping) else None
    base_file = run_dir / "base.json"
    file_data = _read_json(base_file, "the base model's metrics") if base_file.is_file() else None
    for source in (pareto.get("base"), pareto.get("base_metrics"), spec.get("base_metrics"),
                   spec.get("base"), file_data, ref_base):
        if isinstance(source, Mapping):
            got = _metrics(source.get("metrics", source))
            if got:
                return got
    return {}


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``RUN/spec.json``, ``RUN/trials.jsonl`` and ``RUN/pareto.json``.

    A missing directory or ``pareto.json`` is a user error saying what is missing; a truncated
    last line of ``trials.jsonl`` (a killed search) is skipped.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise UserInputError(f"run directory {str(path)!r} does not exist")
    if not (path / "pareto.json").is_file():
        raise UserInputError(
            f"{str(path)!r} has no pareto.json: not a finished search run "
            "(run `autocompress search --out DIR` first)"
        )
    spec_file = path / "spec.json"
    spec = _read_json(spec_file, "the search spec") if spec_file.is_file() else {}
    pareto = _read_json(path / "pareto.json", "the Pareto front")
    if not isinstance(pareto, Mapping):
        raise UserInputError(f"{str(path / 'pareto.json')!r} does not hold a JSON object")
    spec = dict(spec) if isinstance(spec, Mapping) else {}
    trials: list[Candidate] = []
    trials_file = path / "trials.jsonl"
    if trials_file.is_file():
        lines = trials_file.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    continue  # half-written last line of a killed run
                raise UserInputError(f"{str(trials_file)!r} line {i + 1} is not valid JSON") from None
            if isinstance(rec, Mapping) and rec.get("policy") is not None:
                trials.append(_candidate(rec, str(trials_file), default_id=str(i)))
    trials = _latest_per_id(trials)
    points = pareto.get("points", pareto.get("front", []))
    front = [
        _candidate(p, str(path / "pareto.json"), default_id=str(i))
        for i, p in enumerate(points or [])
        if isinstance(p, Mapping)
    ]
    base = _base_metrics(path, spec, pareto)
    return RunRecord(
        path=path,
        spec=spec,
        trials=trials,
        front=front,
        objectives=_objectives(spec, pareto),
        base_metrics=base,
        budgets=_budgets(spec, pareto, base),
        pareto=dict(pareto),
    )


def layer_order(run: RunRecord) -> list[str] | None:
    """Module names of the run's model in definition order (for per-layer tables and charts).

    Builds the architecture only (random init, nothing loaded); None when it cannot be built, in
    which case callers fall back to a natural sort of the layer names.
    """
    name = run.spec.get("model")
    if not isinstance(name, str):
        return None
    try:
        from autocompress.models import create_model

        model = create_model(name, num_classes=int(run.spec.get("num_classes", 10) or 10))
    except Exception:  # noqa: BLE001 - ordering is cosmetic; never fail a report over it
        return None
    return [n for n, _ in model.named_modules() if n]
