"""``SearchSpec``: everything that defines a search, frozen and validated, from YAML and/or CLI flags.

Config flow: YAML preset (``configs/*.yaml``) -> :meth:`SearchSpec.from_yaml` / :meth:`from_cli`
-> frozen :class:`SearchSpec` (validated in ``__post_init__``) -> ``run_search(spec)``. Unknown keys
and bad values raise ``UserInputError`` naming the key, the value and what is allowed.

The dataclass defaults *are* the embedded default search (``autocompress search`` with no
arguments); ``configs/default.yaml`` spells the same values out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from autocompress.errors import UserInputError
from autocompress.evaluators.config import EvaluatorConfig
from autocompress.search.budgets import Budget, parse_budget

#: Metrics that may be objectives, with their natural direction (mirrors ``evaluators.METRICS``;
#: kept here so that parsing a spec imports nothing heavy).
OBJECTIVE_METRICS: dict[str, str] = {
    "acc": "maximize",
    "acc_top5": "maximize",
    "macs": "minimize",
    "flops": "minimize",
    "params": "minimize",
    "size_bytes": "minimize",
    "bops": "minimize",
    "latency_ms": "minimize",
}
_OBJECTIVE_ALIASES = {"size": "size_bytes", "latency": "latency_ms", "accuracy": "acc", "top1": "acc",
                      "top5": "acc_top5"}
_DIRECTION_ALIASES = {"max": "maximize", "maximize": "maximize", "min": "minimize",
                      "minimize": "minimize"}

KNOBS: tuple[str, ...] = ("prune", "w_bits", "a_bits", "rank")

#: The search's evaluator defaults: latency off unless a latency objective or budget asks for it
#: (then ``predicted``); every other setting as ``EvaluatorConfig``.
DEFAULT_EVALUATOR = EvaluatorConfig(latency="none")
BACKENDS: tuple[str, ...] = ("local", "ray")

#: Fields that do not change *what* is searched, only how far or where it runs: a run directory
#: whose spec differs only in these resumes instead of being refused.
RUN_LEVEL_FIELDS: frozenset[str] = frozenset(
    {"trials", "workers", "backend", "ray_address", "resume", "force", "out", "threads"}
)


@dataclass(frozen=True)
class Objective:
    """A metric to optimise and its direction (``maximize`` / ``minimize``)."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVE_METRICS:
            raise UserInputError(
                f"unknown objective {self.name!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
            )
        if self.direction not in ("maximize", "minimize"):
            raise UserInputError(
                f"objective {self.name!r} direction {self.direction!r}; allowed: maximize, minimize"
            )

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"name": self.name, "direction": self.direction}


def parse_objective(value: str | Mapping[str, Any] | Objective) -> Objective:
    """``"acc"``, ``"macs:min"``, ``"latency"`` or ``{"name": ..., "direction": ...}`` -> Objective."""
    if isinstance(value, Objective):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"name", "direction"}
        if unknown or "name" not in value:
            raise UserInputError(
                f"objective {dict(value)!r}: expected keys 'name' and optional 'direction'"
            )
        name, direction = str(value["name"]), value.get("direction")
    elif isinstance(value, str):
        name, _, direction = value.partition(":")
        direction = direction or None
    else:
        raise UserInputError(f"objective {value!r} is not a metric name; allowed: {', '.join(OBJECTIVE_METRICS)}")
    key = name.strip().lower()
    key = _OBJECTIVE_ALIASES.get(key, key)
    if key not in OBJECTIVE_METRICS:
        raise UserInputError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVE_METRICS)}")
    if direction is None:
        return Objective(key, OBJECTIVE_METRICS[key])
    d = _DIRECTION_ALIASES.get(str(direction).strip().lower())
    if d is None:
        raise UserInputError(f"objective {name!r} direction {direction!r}; allowed: max, min")
    return Objective(key, d)


def _check_int(key: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and re.fullmatch(r"[-+]?\d+", v.strip()):
            v = int(v)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise UserInputError(f"{key}={v!r} is not an integer; allowed: an integer >= {lo}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"{lo}..{hi}"
        raise UserInputError(f"{key}={v!r} is out of range; allowed: {rng}")
    return int(v)


def _check_float(key: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise UserInputError(f"{key}={v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise UserInputError(f"{key}={v!r} is not a number")
    if (v <= lo if lo_open else v < lo) or v > hi:
        left = "(" if lo_open else "["
        raise UserInputError(f"{key}={v!r} is out of range; allowed: {left}{lo:g}, {hi:g}]")
    return float(v)


def _check_bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    raise UserInputError(f"{key}={v!r} is not a boolean; allowed: true, false")


def _check_str(key: str, v: Any, optional: bool = True) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        what = "a non-empty string" + (" or null" if optional else "")
        raise UserInputError(f"{key}={v!r} is not allowed; expected {what}")
    return v.strip()


def _as_list(key: str, v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s for s in (x.strip() for x in v.split(",")) if s] if "," in v and "=" not in v else [v]
    if isinstance(v, Mapping):
        return [f"{k}={val}" for k, val in v.items()]
    if isinstance(v, Sequence):
        return list(v)
    raise UserInputError(f"{key}={v!r} is not a list")


def _budget_list(key: str, v: Any) -> tuple[Budget, ...]:
    items = _as_list(key, v)
    out = [parse_budget(x if isinstance(x, Budget) else str(x)) for x in items]
    names = [b.name for b in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserInputError(f"{key}: budget {sorted(dup)[0]!r} is given more than once")
    return tuple(out)


@dataclass(frozen=True)
class SearchSpec:
    """What to search and how; frozen, validated on construction.

    Args:
        model: model name (``resnet20``, ``tv:resnet18``, ``package.module:factory``).
        checkpoint: trained weights of ``model``; None trains (or reuses from the cache) a base model.
        data: data set name (``digits``, ``cifar10``, ``imagefolder:PATH`` ...).
        data_root: directory holding a local data set.
        knobs: which compression knobs the space offers (``prune``, ``w_bits``, ``a_bits``, ``rank``).
        max_prune: largest prune ratio offered per decision point.
        round_to: channel counts are rounded to a multiple of this.
        objectives: metrics optimised, each with a direction (at most 3 for the exact hypervolume
            written to ``pareto.json``; more are searched but get no hypervolume).
        budgets: hard budgets (an infeasible candidate is never on the front).
        soft_budgets: budgets an RL reward penalises (Lagrangian) and reports mark, but that do not
            exclude candidates.
        strategy: searcher name (see ``list_searchers()``).
        strategy_settings: keyword arguments of that searcher (checked against its signature).
        trials: candidates to evaluate in the study (all processes together); candidates rejected
            for a predicted hard-budget violation before evaluation do not count.
        seed: seed of the searcher, the base-model training and the evaluator's subsets.
        multi_fidelity: evaluate every candidate at low fidelity first and promote only the best
            ``promote_fraction`` to full fidelity (asynchronous successive halving; ASHA under Ray).
        promote_fraction: share of low-fidelity candidates promoted to full fidelity.
        evaluator: evaluator settings (``EvaluatorConfig`` fields).
        storage: Optuna storage: None or ``"journal"`` (``RUN/study.journal``), ``"sqlite"``
            (``RUN/study.db``), a journal file path (``*.journal``/``*.log``) or any Optuna storage
            URL (``sqlite:///x.db``, ``postgresql://...``).
        study_name: the Optuna study name (processes sharing storage and name share the work).
        out: run directory (default ``runs/MODEL-DATA-STRATEGY-sSEED``).
        backend: ``local`` (this process) or ``ray`` (Ray Tune trials).
        workers: concurrent Ray trials (``backend="ray"``).
        ray_address: an existing Ray cluster (``127.0.0.1:PORT`` or ``auto``); None starts a local one.
        resume: continue the search stored in ``out`` even when this spec differs from it (the
            stored spec wins, except for run-level fields such as ``trials``).
        force: start over when ``out`` holds a different search (the old directory is kept as
            ``OUT.old-N``, nothing is deleted).
        cache: reuse evaluations from the on-disk evaluation cache.
        train_epochs: epochs of base-model training when no checkpoint is given (None: default).
        threads: torch intra-op threads while the search runs (each Ray worker uses the same).
            One is the default: evaluating one small candidate gains little from more, and
            several threads per process slow down badly when the machine is shared; parallelism
            comes from workers. Raise it on a dedicated many-core machine.
    """

    model: str = "resnet20"
    checkpoint: str | None = None
    data: str = "digits"
    data_root: str | None = None
    knobs: tuple[str, ...] = ("prune",)
    max_prune: float = 0.8
    round_to: int = 1
    objectives: tuple[Objective, ...] = (Objective("acc", "maximize"), Objective("macs", "minimize"))
    budgets: tuple[Budget, ...] = field(default_factory=lambda: (parse_budget("macs=50%"),))
    soft_budgets: tuple[Budget, ...] = ()
    strategy: str = "nsga2"
    strategy_settings: Mapping[str, Any] = field(default_factory=dict)
    trials: int = 40
    seed: int = 0
    multi_fidelity: bool = False
    promote_fraction: float = 0.33
    evaluator: EvaluatorConfig = field(default_factory=lambda: DEFAULT_EVALUATOR)
    storage: str | None = None
    study_name: str = "autocompress"
    out: str | None = None
    backend: str = "local"
    workers: int = 1
    ray_address: str | None = None
    resume: bool = False
    force: bool = False
    cache: bool = True
    train_epochs: int | None = None
    threads: int = 1

    schema_version: ClassVar[int] = 1

    # -- validation ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("model", _check_str("model", self.model, optional=False))
        set_("checkpoint", _check_str("checkpoint", self.checkpoint))
        set_("data", _check_str("data", self.data, optional=False))
        set_("data_root", _check_str("data_root", self.data_root))
        knobs = tuple(str(k).strip() for k in _as_list("knobs", self.knobs))
        if not knobs:
            raise UserInputError(f"knobs is empty; allowed: one or more of {', '.join(KNOBS)}")
        for k in knobs:
            if k not in KNOBS:
                raise UserInputError(f"unknown knob {k!r}; allowed: {', '.join(KNOBS)}")
        set_("knobs", tuple(k for k in KNOBS if k in knobs))
        set_("max_prune", _check_float("max_prune", self.max_prune, 0.0, 0.99, lo_open=True))
        set_("round_to", _check_int("round_to", self.round_to, 1))
        objectives = tuple(parse_objective(o) for o in _as_list("objectives", self.objectives))
        if not objectives:
            raise UserInputError("objectives is empty; give at least one, e.g. acc and macs")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise UserInputError(f"objectives {names} repeat a metric; each may appear once")
        set_("objectives", objectives)
        set_("budgets", _budget_list("budgets", self.budgets))
        set_("soft_budgets", _budget_list("soft_budgets", self.soft_budgets))
        both = {b.name for b in self.budgets} & {b.name for b in self.soft_budgets}
        if both:
            raise UserInputError(f"budget {sorted(both)[0]!r} is both hard and soft; choose one")
        strategy = _check_str("strategy", self.strategy, optional=False)
        from autocompress.search.base import list_searchers, searcher_class

        if strategy not in list_searchers():
            raise UserInputError(f"unknown strategy {strategy!r}; allowed: {', '.join(list_searchers())}")
        set_("strategy", strategy)
        if not isinstance(self.strategy_settings, Mapping):
            raise UserInputError(f"strategy_settings={self.strategy_settings!r} is not a mapping")
        settings = dict(self.strategy_settings)
        searcher_class(strategy).check_settings(settings)
        set_("strategy_settings", settings)
        set_("trials", _check_int("trials", self.trials, 1))
        set_("seed", _check_int("seed", self.seed, 0, 2**31 - 1))
        set_("multi_fidelity", _check_bool("multi_fidelity", self.multi_fidelity))
        set_("promote_fraction", _check_float("promote_fraction", self.promote_fraction, 0.0, 1.0, lo_open=True))
        ev = self.evaluator
        if isinstance(ev, Mapping):
            # Settings given override the search's defaults (not EvaluatorConfig's own).
            ev = EvaluatorConfig.from_dict({**DEFAULT_EVALUATOR.to_dict(), **dict(ev)})
        elif not isinstance(ev, EvaluatorConfig):
            raise UserInputError(f"evaluator={ev!r} is not a mapping of evaluator settings")
        uses_latency = "latency_ms" in names or any(
            b.name == "latency" for b in (*self.budgets, *self.soft_budgets))
        if uses_latency and ev.latency == "none":
            # A latency objective or budget needs latency numbers: the cheap predicted kind.
            ev = replace(ev, latency="predicted")
        set_("evaluator", ev)
        set_("storage", _check_str("storage", self.storage))
        set_("study_name", _check_str("study_name", self.study_name, optional=False))
        set_("out", _check_str("out", self.out))
        backend = _check_str("backend", self.backend, optional=False)
        if backend not in BACKENDS:
            raise UserInputError(f"backend={backend!r}; allowed: {', '.join(BACKENDS)}")
        set_("backend", backend)
        set_("workers", _check_int("workers", self.workers, 1, 256))
        address = _check_str("ray_address", self.ray_address)
        if address is not None and address != "auto" and not re.fullmatch(r"[\w.\-]+:\d{1,5}", address):
            raise UserInputError(f"ray_address={address!r}; allowed: HOST:PORT (e.g. 127.0.0.1:6379) or auto")
        set_("ray_address", address)
        set_("resume", _check_bool("resume", self.resume))
        set_("force", _check_bool("force", self.force))
        if self.resume and self.force:
            raise UserInputError("resume and force were both given; choose one")
        set_("cache", _check_bool("cache", self.cache))
        if self.train_epochs is not None:
            set_("train_epochs", _check_int("train_epochs", self.train_epochs, 1))
        set_("threads", _check_int("threads", self.threads, 1, 1024))

    # -- derived ---------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """The run directory: ``out``, or ``runs/MODEL-DATA-STRATEGY-sSEED``."""
        if self.out:
            return Path(self.out)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model}-{self.data}-{self.strategy}-s{self.seed}")
        return Path("runs") / slug

    @property
    def objective_names(self) -> list[str]:
        """Objective metric names in order."""
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        """Objective directions in order."""
        return [o.direction for o in self.objectives]

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (budgets as their text); ``from_dict`` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("budgets", "soft_budgets"):
                v = [b.text for b in v]
            elif f.name == "objectives":
                v = [o.to_dict() for o in v]
            elif f.name == "evaluator":
                v = v.to_dict()
            elif f.name == "knobs":
                v = list(v)
            elif f.name == "strategy_settings":
                v = _jsonable(dict(v))
            out[f.name] = v
        return out

    def identity(self) -> dict[str, Any]:
        """The fields that define *what* is searched (everything but ``RUN_LEVEL_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_LEVEL_FIELDS}

    def identity_hash(self) -> str:
        """Stable sha256 of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def differences(self, other: SearchSpec) -> list[tuple[str, Any, Any]]:
        """``(setting, this value, other's value)`` for every identity setting that differs
        (nested settings such as ``evaluator.latency`` are named individually)."""
        out: list[tuple[str, Any, Any]] = []

        def walk(prefix: str, a: Any, b: Any) -> None:
            if isinstance(a, Mapping) and isinstance(b, Mapping):
                for k in sorted(set(a) | set(b)):
                    walk(f"{prefix}.{k}" if prefix else str(k), a.get(k), b.get(k))
            elif a != b:
                out.append((prefix, a, b))

        walk("", self.identity(), other.identity())
        return out

    def replace(self, **changes: Any) -> SearchSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every accepted key of a YAML preset / ``from_dict`` mapping."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, /, **overrides: Any) -> SearchSpec:
        """Build from a mapping (a parsed YAML preset), then apply keyword ``overrides``.

        Unknown keys raise ``UserInputError`` naming the key and listing the allowed ones.
        """
        merged: dict[str, Any] = {}
        for source in (data or {}), overrides:
            if not isinstance(source, Mapping):
                raise UserInputError(f"a search config must be a mapping of settings, got {type(source).__name__}")
            for key, value in source.items():
                name = str(key).replace("-", "_")
                if name not in cls.field_names():
                    raise UserInputError(
                        f"unknown search setting {key!r}; allowed: {', '.join(cls.field_names())}"
                    )
                merged[name] = value
        if "evaluator" in merged and merged["evaluator"] is None:
            merged.pop("evaluator")
        if "strategy_settings" in merged and merged["strategy_settings"] is None:
            merged["strategy_settings"] = {}
        for key in ("budgets", "soft_budgets", "objectives", "knobs"):
            if key in merged and merged[key] is not None and not isinstance(merged[key], str | Mapping | Sequence):
                raise UserInputError(f"{key}={merged[key]!r} is not a list")
            if key in merged and merged[key] is None:
                merged[key] = ()
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SearchSpec:
        """Load a YAML preset (``configs/*.yaml``) and apply ``overrides``."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            line = " ".join(str(exc).split())
            raise UserInputError(f"config file {str(path)!r} is not valid YAML: {line}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise UserInputError(f"config file {str(path)!r} must hold a mapping of settings")
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_cli(
        cls, config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> SearchSpec:
        """Build from an optional YAML preset plus command-line values.

        ``overrides`` maps setting names to values; ``None`` (an option not given) and empty
        lists are skipped, so preset values stand unless a flag is given. Flag-style names are
        accepted: ``budget`` (list of ``METRIC=VALUE``) -> ``budgets``, ``soft_budget`` ->
        ``soft_budgets``, ``objective`` (list) -> ``objectives``, ``knob`` -> ``knobs``,
        ``strategy_setting``/``set`` (list of ``KEY=VALUE``, values parsed as YAML scalars) ->
        merged into ``strategy_settings``, ``evaluator_setting`` likewise into ``evaluator``;
        dashes are read as underscores.
        """
        import yaml

        base: dict[str, Any] = {}
        if config_path is not None:
            base = SearchSpec.from_yaml(config_path).to_dict()
        given = dict(overrides or {})
        new_strategy = given.get("strategy")
        if new_strategy is not None and new_strategy != base.get("strategy", cls().strategy):
            # The preset's strategy settings belong to the preset's strategy.
            base.pop("strategy_settings", None)
        ov: dict[str, Any] = {}
        renames = {"budget": "budgets", "soft_budget": "soft_budgets", "objective": "objectives",
                   "knob": "knobs"}
        for key, value in given.items():
            name = renames.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
            if value is None or (isinstance(value, list | tuple) and not value):
                continue
            if name in ("strategy_setting", "set", "evaluator_setting"):
                target = "evaluator" if name == "evaluator_setting" else "strategy_settings"
                pairs = _as_list(name, value)
                current = dict(ov.get(target) or base.get(target) or {})
                for item in pairs:
                    if not isinstance(item, str) or "=" not in item:
                        raise UserInputError(f"{name} {item!r} is not KEY=VALUE")
                    k, v = item.split("=", 1)
                    try:
                        current[k.strip()] = yaml.safe_load(v)
                    except yaml.YAMLError:
                        current[k.strip()] = v
                ov[target] = current
                continue
            ov[name] = value
        return cls.from_dict(base, **ov)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v
