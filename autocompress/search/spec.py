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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from autocompress.compression.hardware import check_round_to
from autocompress.compression.knobs import check_knob_set, knob_names
from autocompress.compression.prune import IMPORTANCES
from autocompress.devices import check_device_name, resolve_device
from autocompress.errors import UserInputError, check_checkpoint_path, check_writable
from autocompress.evaluators.config import EvaluatorConfig, check_backend_available
from autocompress.metrics import Budget, parse_budget
from autocompress.search._optuna_storage import check_storage, mask_url
from autocompress.search._spec_rules import (
    as_list,
    budget_list,
    check_bool,
    check_float,
    check_int,
    check_str,
    check_strategy_settings,
)
from autocompress.search.base import DEFAULT_STRATEGY
from autocompress.search.objectives import OBJECTIVE_METRICS, Objective, parse_objective

#: Knobs a search may ask for: every registered knob type (``compression/knobs.py``).
KNOBS: tuple[str, ...] = knob_names()

#: The search's evaluator defaults: latency off unless a latency objective or budget asks for it
#: (then ``predicted``); every other setting as ``EvaluatorConfig``.
DEFAULT_EVALUATOR = EvaluatorConfig(latency="none")
BACKENDS: tuple[str, ...] = ("local", "ray")

#: Fields that do not change *what* is searched, only how far or where it runs: a run directory
#: whose spec differs only in these resumes instead of being refused.
RUN_LEVEL_FIELDS: frozenset[str] = frozenset(
    {"trials", "workers", "backend", "ray_address", "resume", "force", "out", "threads",
     "finetune_top", "finetune_epochs", "device", "gpus_per_trial", "cpus_per_trial"}
)


@dataclass(frozen=True)
class SearchSpec:
    """What to search and how; frozen, validated on construction.

    Args:
        model: model name (``resnet20``, ``tv:resnet18``, ``package.module:factory``).
        checkpoint: trained weights of ``model``; None trains (or reuses from the cache) a base model.
        data: data set name (``digits``, ``cifar10``, ``imagefolder:PATH`` ...).
        data_root: directory holding a local data set.
        knobs: which compression knobs the space offers (``prune``, ``w_bits``, ``a_bits``, ``rank``,
            ``sparsity``: the knob registry's names).
        max_prune: largest prune ratio offered per decision point.
        round_to: kept channel counts are rounded to a multiple of this; ``"auto"`` (the
            default) resolves, per model, to the CPU's SIMD width in floats (16 with AVX-512, 8
            with AVX2), halved while the narrowest layer could not lose half its channels (see
            ``autocompress.compression.hardware``); 1 keeps exact ratios.
        importance: which channels pruning removes: ``l1`` (filter L1 norm, the default),
            ``l2``, ``taylor``, or ``bn`` (network slimming: the smallest BatchNorm |gamma|; pair
            it with a base model trained with ``--slimming-l1``). Part of what is searched: it
            keys the evaluation cache and a resume.
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
        storage: None (the run's own ledger: ``RUN/ledger.jsonl``, or ``RUN/study.journal`` for
            strategies that sample from Optuna) or an Optuna storage: ``"journal"``
            (``RUN/study.journal``), ``"sqlite"``
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
        finetune_top: at the end of the search, fine-tune (KD, as ``autocompress finetune``) the
            K front points of highest search accuracy (ties: lower cost first); None: none. A
            resumed search fine-tunes those not fine-tuned yet.
        finetune_epochs: epochs of each of those fine-tunes.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``: where the base
            model trains and candidates are recalibrated, fine-tuned and scored (compression
            itself runs on the CPU). A run-level setting: the evaluation cache keeps results of
            different devices apart, so a resumed search may change it.
        gpus_per_trial: GPUs each Ray trial reserves (fractions share a GPU; ``backend="ray"``).
        cpus_per_trial: CPUs each Ray trial reserves (None: ``threads``).
    """

    model: str = "resnet20"
    checkpoint: str | None = None
    data: str = "digits"
    data_root: str | None = None
    knobs: tuple[str, ...] = ("prune",)
    max_prune: float = 0.8
    round_to: int | str = "auto"
    importance: str = "l1"
    objectives: tuple[Objective, ...] = (Objective("acc", "maximize"), Objective("macs", "minimize"))
    budgets: tuple[Budget, ...] = field(default_factory=lambda: (parse_budget("macs=50%"),))
    soft_budgets: tuple[Budget, ...] = ()
    strategy: str = DEFAULT_STRATEGY
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
    finetune_top: int | None = None
    finetune_epochs: int = 3
    device: str = "auto"
    gpus_per_trial: float = 0.0
    cpus_per_trial: float | None = None

    schema_version: ClassVar[int] = 1

    # -- validation ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("model", check_str("model", self.model, optional=False))
        set_("checkpoint", check_str("checkpoint", self.checkpoint))
        set_("data", check_str("data", self.data, optional=False))
        set_("data_root", check_str("data_root", self.data_root))
        knobs = tuple(str(k).strip() for k in as_list("knobs", self.knobs))
        if not knobs:
            raise UserInputError(f"knobs is empty; allowed: one or more of {', '.join(KNOBS)}")
        set_("knobs", check_knob_set(knobs))  # registered names, none excluding another
        set_("max_prune", check_float("max_prune", self.max_prune, 0.0, 0.99, lo_open=True))
        set_("round_to", check_round_to(self.round_to))
        importance = check_str("importance", self.importance, optional=False)
        if importance not in IMPORTANCES:
            raise UserInputError(f"importance={importance!r}; allowed: {', '.join(IMPORTANCES)}")
        set_("importance", importance)
        objectives = tuple(parse_objective(o) for o in as_list("objectives", self.objectives))
        if not objectives:
            raise UserInputError("objectives is empty; give at least one, e.g. acc and macs")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise UserInputError(f"objectives {names} repeat a metric; each may appear once")
        set_("objectives", objectives)
        set_("budgets", budget_list("budgets", self.budgets))
        set_("soft_budgets", budget_list("soft_budgets", self.soft_budgets))
        both = {b.name for b in self.budgets} & {b.name for b in self.soft_budgets}
        if both:
            raise UserInputError(f"budget {sorted(both)[0]!r} is both hard and soft; choose one")
        strategy = check_str("strategy", self.strategy, optional=False)
        from autocompress.search.base import list_searchers

        if strategy not in list_searchers():
            raise UserInputError(f"unknown strategy {strategy!r}; allowed: {', '.join(list_searchers())}")
        set_("strategy", strategy)
        if not isinstance(self.strategy_settings, Mapping):
            raise UserInputError(f"strategy_settings={self.strategy_settings!r} is not a mapping")
        set_("strategy_settings", check_strategy_settings(strategy, dict(self.strategy_settings),
                                                           self.soft_budgets))
        set_("trials", check_int("trials", self.trials, 1))
        set_("seed", check_int("seed", self.seed, 0, 2**31 - 1))
        set_("multi_fidelity", check_bool("multi_fidelity", self.multi_fidelity))
        set_("promote_fraction", check_float("promote_fraction", self.promote_fraction, 0.0, 1.0, lo_open=True))
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
        set_("storage", check_str("storage", self.storage))
        set_("study_name", check_str("study_name", self.study_name, optional=False))
        set_("out", check_str("out", self.out))
        backend = check_str("backend", self.backend, optional=False)
        if backend not in BACKENDS:
            raise UserInputError(f"backend={backend!r}; allowed: {', '.join(BACKENDS)}")
        set_("backend", backend)
        set_("workers", check_int("workers", self.workers, 1, 256))
        address = check_str("ray_address", self.ray_address)
        if address is not None and address != "auto" and not re.fullmatch(r"[\w.\-]+:\d{1,5}", address):
            raise UserInputError(f"ray_address={address!r}; allowed: HOST:PORT (e.g. 127.0.0.1:6379) or auto")
        set_("ray_address", address)
        set_("resume", check_bool("resume", self.resume))
        set_("force", check_bool("force", self.force))
        if self.resume and self.force:
            raise UserInputError("resume and force were both given; choose one")
        set_("cache", check_bool("cache", self.cache))
        if self.train_epochs is not None:
            set_("train_epochs", check_int("train_epochs", self.train_epochs, 1))
        set_("threads", check_int("threads", self.threads, 1, 1024))
        if self.finetune_top is not None:
            set_("finetune_top", check_int("finetune_top", self.finetune_top, 1))
        set_("finetune_epochs", check_int("finetune_epochs", self.finetune_epochs, 1))
        set_("device", check_device_name(self.device, "device"))
        set_("gpus_per_trial", check_float("gpus_per_trial", self.gpus_per_trial, 0.0, 256.0))
        if self.cpus_per_trial is not None:
            set_("cpus_per_trial", check_float("cpus_per_trial", self.cpus_per_trial, 0.0, 1024.0,
                                                lo_open=True))
        if self.backend == "local" and (self.gpus_per_trial > 0 or self.cpus_per_trial is not None):
            raise UserInputError("gpus_per_trial and cpus_per_trial reserve Ray resources; they "
                                 "apply to backend ray only (--backend ray)")
        if self.backend == "ray" and self.device.startswith("cuda") and self.gpus_per_trial == 0:
            raise UserInputError(f"device={self.device!r} with backend ray needs gpus_per_trial > 0 "
                                 "(Ray hides the GPUs from trials that reserve none); allowed: "
                                 "--gpus-per-trial F (e.g. 0.25 shares one GPU between 4 trials)")

    # -- checks on disk ----------------------------------------------------------------------
    def preflight(self) -> None:
        """Check the paths and the storage this spec names before anything is built or written.

        ``__post_init__`` checks values only (a stored spec must load on any machine); this
        checks the machine: the checkpoint is a readable file, data paths are directories, the
        run directory can be written, and a storage URL can be opened. ``run_search`` calls it
        first, so a bad path fails in a second and leaves no run directory behind.
        """
        if self.checkpoint is not None:
            check_checkpoint_path(self.checkpoint)
        if self.data_root is not None and not Path(self.data_root).is_dir():
            what = "does not exist" if not Path(self.data_root).exists() else "is not a directory"
            raise UserInputError(f"--data-root {self.data_root!r} {what}")
        if self.data.startswith("imagefolder:"):
            folder = self.data.split(":", 1)[1]
            if not Path(folder).expanduser().is_dir():
                raise UserInputError(
                    f"imagefolder path {folder!r} is not a directory (expected PATH/<class>/<image>)")
        check_writable(self.run_dir, "--out", directory=True)
        check_storage(self.storage, self.run_dir)
        # On a Ray cluster the trials run on its nodes: their GPUs are checked there, not here.
        if not (self.backend == "ray" and self.ray_address is not None):
            resolve_device(self.device)
            if self.evaluator.latency != "none":
                check_backend_available(self.evaluator.latency_backend)

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
        """The fields that define *what* is searched (everything but ``RUN_LEVEL_FIELDS``; a
        storage URL without its password, which spec.json does not keep)."""
        return {k: (mask_url(v) if k == "storage" and isinstance(v, str) else v)
                for k, v in self.to_dict().items() if k not in RUN_LEVEL_FIELDS}

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
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UserInputError(f"config file {str(path)!r} cannot be read: {reason}") from None
        try:
            data = yaml.safe_load(text)
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
                pairs = as_list(name, value)
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


__all__ = [
    "BACKENDS",
    "DEFAULT_EVALUATOR",
    "KNOBS",
    "OBJECTIVE_METRICS",
    "RUN_LEVEL_FIELDS",
    "Objective",
    "SearchSpec",
    "check_storage",
    "check_strategy_settings",
    "parse_objective",
]
