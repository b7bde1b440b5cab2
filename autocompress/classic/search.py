"""Search compression policies of a tree ensemble with the engine's strategies.

The forest's space (:class:`ForestSpace`) speaks the engine's space/policy interface, so the
engine's ``random``, ``uniform``, ``nsga2`` and ``tpe`` searchers propose its policies through the
same ask/tell calls. This module holds the loop around them (the engine's runner builds a torch
``Problem``, which a forest is not): ask, evaluate (build the artefact, measure bytes, validation
accuracy and latency), tell, append to ``RUN/trials.jsonl``; at the end ``RUN/pareto.json``
(the engine's ``pareto_report``) with test accuracy per front point and each front point's
artefact under ``RUN/artefacts/``. Two more baselines sweep one knob: ``fewer_trees`` (trees, or
boosting stages) and ``shallower_trees``. ``greedy`` is sensitivity-greedy over the classic
knobs (:class:`_GreedySearcher`).

The RL strategies are not offered: their environment (``autocompress.envs``) is built on a torch
``Problem`` and walks a network layer by layer with per-layer features; a tree ensemble has four
or five global knobs, for which the probes of ``greedy`` and the engine's black-box searchers
already cover the space.

``resume`` continues a stopped search in the same run directory: the stored spec must match
(model, data, target, budgets, strategy, seed), the seeded strategy is replayed on the recorded
candidates (told their recorded metrics, nothing re-evaluated, ``trials.jsonl`` only appended to)
and only the missing candidates up to ``trials`` are evaluated; a replay that proposes anything
else than the record is refused.

Not there yet: several processes on one study, Ray, regression of CSV targets and of linear
models, SVMs and kNN.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.classic.data import TabularSplits, check_data_name, load_tabular
from autocompress.classic.dense import PackedDense, dense_from_sklearn, load_artefact
from autocompress.classic.dense_space import DenseSpace
from autocompress.classic.forest import ForestArrays, PackedForest, forest_from_sklearn
from autocompress.classic.models import check_model_name, create_classic_model
from autocompress.classic.space import ForestSpace
from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.errors import UserInputError

# The run's readers live with the other run-directory readers; their names stay importable here.
from autocompress.rundir import (  # noqa: F401
    CLASSIC_KIND,
    PARETO_FILE,
    SPEC_FILE,
    TRIALS_FILE,
    TrialLog,
    atomic_write_text,
    read_classic_run,
    resolve_classic_point,
)
from autocompress.search.budgets import Budget, parse_budget

if TYPE_CHECKING:
    from autocompress.compression.policy import CompressionPolicy

SCHEMA_VERSION = 1
KIND = CLASSIC_KIND
ENGINE_STRATEGIES = ("nsga2", "tpe", "random", "uniform")
SWEEP_STRATEGIES = {"fewer_trees": "trees", "shallower_trees": "depth"}
STRATEGIES = (*ENGINE_STRATEGIES, "greedy", *SWEEP_STRATEGIES)
#: Budgets a classic search accepts (``params`` bounds the node count).
BUDGETS = ("size", "latency", "acc-drop", "params")
OBJECTIVES = (("acc", "maximize"), ("size_bytes", "minimize"))


@dataclass(frozen=True)
class ClassicSpec:
    """What a classic search searches (recorded in ``spec.json``).

    Args:
        model: ``sklearn:random_forest[:N]``, ``sklearn:extra_trees[:N]``,
            ``sklearn:gradient_boosting[:N]``, ``sklearn:decision_tree``,
            ``sklearn:logistic_regression``, ``sklearn:linear_svc``, ``sklearn:svc``,
            ``sklearn:knn`` or ``sklearn:PATH.joblib``.
        data: ``sklearn:breast_cancer`` (wine, iris, digits) or ``csv:PATH``.
        target: the label column of a CSV file.
        budgets: hard budgets (``size=50%``, ``latency=0.01ms``, ``acc-drop=1%``, ``params=5K``).
        strategy: one of ``STRATEGIES``.
        trials: candidates to propose.
        seed: seeds the split, the model's training and the searcher.
        out: run directory.
        trust_pickle: allow loading a joblib model.
        force: replace an existing run directory.
        resume: continue the search stored in ``out`` (see the module docstring).
    """

    model: str
    data: str
    target: str | None = None
    budgets: tuple[Budget, ...] = ()
    strategy: str = "nsga2"
    trials: int = 40
    seed: int = 0
    out: str | None = None
    trust_pickle: bool = False
    force: bool = False
    resume: bool = False

    def run_dir(self) -> Path:
        """``out``, or ``runs/MODEL-DATA-STRATEGY-sSEED``."""
        if self.out:
            return Path(self.out).expanduser()
        def short(s: str) -> str:
            return Path(s.split(":", 1)[1]).stem.replace(":", "") or "model"
        return Path("runs") / f"{short(self.model)}-{short(self.data)}-{self.strategy}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """``spec.json`` content."""
        return {"kind": KIND, "schema_version": SCHEMA_VERSION, "model": self.model,
                "data": self.data, "target": self.target,
                "budgets": [b.to_dict() for b in self.budgets], "strategy": self.strategy,
                "trials": self.trials, "seed": self.seed,
                "objectives": [{"name": n, "direction": d} for n, d in OBJECTIVES]}


def make_spec(*, model: str, data: str | None, target: str | None = None,
              budgets: Sequence[str] = (), strategy: str | None = None, trials: int | None = None,
              seed: int | None = None, out: str | None = None, trust_pickle: bool = False,
              force: bool = False, resume: bool = False) -> ClassicSpec:
    """Check every input (one-line ``UserInputError``) and build a :class:`ClassicSpec`."""
    check_model_name(model, trust_pickle=trust_pickle)
    if data is None:
        raise UserInputError(f"--model {model!r} needs tabular --data: sklearn:breast_cancer, "
                             "sklearn:wine, sklearn:iris, sklearn:digits or csv:PATH --target COL")
    check_data_name(data, target)
    strategy = strategy or "nsga2"
    if strategy not in STRATEGIES:
        raise UserInputError(f"strategy {strategy!r} is not available for classic models; "
                             f"allowed: {', '.join(STRATEGIES)}")
    parsed = tuple(parse_budget(b) for b in budgets)
    for b in parsed:
        if b.name not in BUDGETS:
            raise UserInputError(f"budget {b.text or b.name!r} is not available for classic "
                                 f"models; allowed: {', '.join(BUDGETS)}")
    trials = 40 if trials is None else int(trials)
    if trials < 1:
        raise UserInputError(f"--trials {trials}; allowed: an integer >= 1")
    if resume and force:
        raise UserInputError("--resume and --force exclude each other (continue the run, or replace it)")
    return ClassicSpec(model=model, data=data, target=target, budgets=parsed, strategy=strategy,
                       trials=trials, seed=0 if seed is None else int(seed), out=out,
                       trust_pickle=trust_pickle, force=force, resume=resume)


@dataclass
class ClassicProblem:
    """Data, fitted model, its forest arrays (None for a linear model, SVM or kNN) and the
    compression space."""

    splits: TabularSplits
    model: Any
    forest: ForestArrays | None
    space: ForestSpace | DenseSpace

    @classmethod
    def build(cls, spec: ClassicSpec) -> ClassicProblem:
        """Load the data, fit (or load) the model and build the space."""
        splits = load_tabular(spec.data, target=spec.target, seed=spec.seed)
        model = create_classic_model(spec.model, splits, seed=spec.seed, trust_pickle=spec.trust_pickle)
        if not (hasattr(model, "tree_") or hasattr(model, "estimators_")):
            dense = DenseSpace(dense_from_sklearn(model, len(splits.classes)), seed=spec.seed)
            return cls(splits, model, None, dense)
        forest = forest_from_sklearn(model, len(splits.classes))
        return cls(splits, model, forest, ForestSpace(forest, splits.x_val, splits.y_val,
                                                      score=splits.score))


def measure_latency_ms(packed: PackedForest | PackedDense, x: np.ndarray, repeats: int = 3) -> float:
    """Milliseconds per sample: best of ``repeats`` batched predictions over ``x``."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        packed.predict(x)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / max(1, len(x))


def evaluate_policy(problem: ClassicProblem, policy: CompressionPolicy
                    ) -> tuple[dict[str, float], PackedForest | PackedDense]:
    """Build the artefact and measure it: ``size_bytes`` is ``len`` of its bytes (checked equal
    to the space's prediction), ``acc`` the validation accuracy of the artefact read back."""
    packed = problem.space.build(policy)
    blob = packed.to_bytes()
    loaded = load_artefact(blob)
    predicted = problem.space.costs(policy)
    if len(blob) != int(predicted["size_bytes"]):
        raise AssertionError(f"cost model {predicted['size_bytes']} != artefact {len(blob)} bytes")
    s = problem.splits
    metrics = {
        "acc": s.score(loaded.predict(s.x_val), s.y_val),
        "size_bytes": float(len(blob)),
        "params": float(loaded.n_nodes if isinstance(loaded, PackedForest) else loaded.params()),
        "macs": predicted["macs"],
        "bops": float(8 * len(blob)),
        "latency_ms": measure_latency_ms(loaded, s.x_val),
    }
    return metrics, loaded


class _SweepSearcher:
    """``fewer_trees`` / ``shallower_trees``: one knob swept from the budget edge (or untouched)
    to its most compressed value, in van der Corput order; every other knob untouched."""

    max_pending = 1

    def __init__(self, context: Any, seed: int, point: str, points: int) -> None:
        from autocompress.search.baseline_searchers import smallest_feasible

        self.context, self.point, self.points, self.index = context, point, points, 0
        knob = next((p.knobs["prune"] for p in context.space.decision_points if p.name == point), None)
        self.high = float(knob.most_compressed) if knob is not None else 0.0
        lo = 0.0
        if context.budgets and self.high > 0:
            found = smallest_feasible(lambda u: context.predicted_feasible(self._policy(u)))
            lo = 1.0 if found is None else found
        self.u_min = lo

    def _policy(self, u: float) -> CompressionPolicy:
        return CompressionPolicy({self.point: LayerAction(prune=min(1.0, u) * self.high)})

    def ask(self) -> CompressionPolicy | None:
        from autocompress.search.baseline_searchers import van_der_corput

        if self.index >= self.points or self.high == 0.0:
            return None
        i = self.index
        self.index += 1
        u = self.u_min if i == 0 else self.u_min + (1.0 - self.u_min) * (1.0 - van_der_corput(i))
        return self._policy(u)

    def tell(self, policy: CompressionPolicy, result: Any) -> None:
        """The sweep does not adapt."""

    def close(self) -> None:
        """Nothing to release."""


class _GreedySearcher:
    """``greedy``: sensitivity-greedy over the classic knobs.

    First it probes every decision point alone at three levels (a third, two thirds and all of
    the way to its most compressed value; these probes are trials and may break the budgets).
    Then it walks from the uncompressed model, each step moving the one point whose next level
    loses the least probed validation accuracy per predicted byte saved; it proposes the first
    step whose predicted costs meet the hard budgets and every step after it, so the walk traces
    a front. Deterministic (no seed is used).
    """

    max_pending = 1
    LEVELS = (1 / 3, 2 / 3, 1.0)

    def __init__(self, context: Any) -> None:
        self.context = context
        self.ladders: dict[str, list[Any]] = {}
        for p in context.space.decision_points:
            ((name, kn),) = p.knobs.items()
            if kn.choices:
                ordered = sorted(kn.choices, reverse=True)  # 32 first (untouched)
                steps = [ordered[round(u * (len(ordered) - 1))] for u in self.LEVELS]
                ladder = [LayerAction(**{name: int(v)}) for v in dict.fromkeys(steps)]
            else:
                ladder = [LayerAction(**{name: float(u * kn.most_compressed)}) for u in self.LEVELS]
            self.ladders[p.name] = ladder
        self.probes = [(n, i) for n, ladder in self.ladders.items() for i in range(len(ladder))]
        self.probe_acc: dict[tuple[str, int], float] = {}
        self.pending: tuple[str, int] | None = None
        self.level = dict.fromkeys(self.ladders, -1)
        self.walking = False

    def _policy(self, level: Mapping[str, int]) -> CompressionPolicy:
        return CompressionPolicy({n: self.ladders[n][i] for n, i in level.items() if i >= 0})

    def _acc(self, name: str, i: int) -> float:
        return float(self.context.base_metrics["acc"]) if i < 0 else self.probe_acc[(name, i)]

    def _step(self) -> bool:
        """Advance the point with the least accuracy lost per byte saved (steps that save no
        byte are never taken); False at the end."""
        space = self.context.space
        here = space.size_bytes(self._policy(self.level))
        best: tuple[float, str] | None = None
        for name, i in self.level.items():
            if i + 1 >= len(self.ladders[name]):
                continue
            nxt = {**self.level, name: i + 1}
            saved = here - space.size_bytes(self._policy(nxt))
            if saved <= 0:  # e.g. a threshold grid costing more than it saves on a tiny model
                continue
            score = max(0.0, self._acc(name, i) - self._acc(name, i + 1)) / saved
            if best is None or score < best[0]:
                best = (score, name)
        if best is None:
            return False
        self.level[best[1]] += 1
        return True

    def ask(self) -> CompressionPolicy | None:
        if self.probes:
            self.pending = self.probes.pop(0)
            name, i = self.pending
            return self._policy({name: i})
        self.pending = None
        if not self.walking:
            self.walking = True
            while True:  # the first step on the walk whose predicted costs fit the budgets
                if not self._step():
                    return None
                if self.context.predicted_feasible(self._policy(self.level)):
                    return self._policy(self.level)
        return self._policy(self.level) if self._step() else None

    def tell(self, policy: CompressionPolicy, result: Any) -> None:
        """Record a probe's validation accuracy."""
        if self.pending is not None:
            self.probe_acc[self.pending] = float(result.metrics["acc"])

    def close(self) -> None:
        """Nothing to release."""


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Share of equal predictions (regression: equal within 1e-5 relative)."""
    if np.issubdtype(np.asarray(theirs).dtype, np.floating):
        return float(np.isclose(ours, theirs, rtol=1e-5, atol=1e-6).mean())
    return float((ours == theirs).mean())


def _searcher(spec: ClassicSpec, context: Any) -> Any:
    if spec.strategy == "greedy":
        return _GreedySearcher(context)
    if spec.strategy in SWEEP_STRATEGIES:
        point = SWEEP_STRATEGIES[spec.strategy]
        if point == "trees" and getattr(context.space, "boosted", False):
            point = "stages"
        return _SweepSearcher(context, spec.seed, point, spec.trials)
    from autocompress.search.base import create_searcher

    return create_searcher(spec.strategy, context, seed=spec.seed)


@dataclass
class ClassicResult:
    """What a classic search produced."""

    run_dir: Path
    records: list[dict[str, Any]]
    pareto: dict[str, Any]
    base_metrics: dict[str, float]
    base_test_acc: float
    stop_reason: str = "completed"
    candidates: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Counts line."""
        n = len(self.records)
        feas = sum(1 for r in self.records if r["feasible"])
        return f"{n} evaluated, {feas} feasible; {self.stop_reason}"


#: ``spec.json`` fields a resumed search must share with the stored one.
RESUME_FIELDS = ("model", "data", "target", "budgets", "strategy", "seed")


def _stored_for_resume(spec: ClassicSpec) -> dict[str, Any]:
    """The stored ``spec.json`` of the run ``spec`` resumes (``UserInputError`` when there is
    none or it searched something else)."""
    run = spec.run_dir()
    try:
        stored = json.loads((run / SPEC_FILE).read_text())
    except (OSError, ValueError):
        raise UserInputError(f"--resume: {str(run)!r} holds no classic search to continue") from None
    if not isinstance(stored, dict) or stored.get("kind") != KIND:
        raise UserInputError(f"--resume: {str(run)!r} is not a classic search run")
    mine = spec.to_dict()
    for name in RESUME_FIELDS:
        if mine[name] != stored.get(name):
            raise UserInputError(f"--resume: {name} is {mine[name]!r} here but {stored.get(name)!r} in "
                                 f"{str(run)!r}; allowed: the stored settings (only --trials may change)")
    return stored


def _prepare_dir(spec: ClassicSpec) -> Path:
    run = spec.run_dir()
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        if not spec.force:
            raise UserInputError(f"--out {str(run)!r} already holds files; pass --resume to continue "
                                 "it or --force to replace it")
        if (run / SPEC_FILE).is_file() and json.loads((run / SPEC_FILE).read_text()).get("kind") == KIND:
            shutil.rmtree(run)
        else:
            raise UserInputError(f"--out {str(run)!r} is not a classic search run; refusing to replace it")
    run.mkdir(parents=True, exist_ok=True)
    return run


def run_classic_search(spec: ClassicSpec, progress: Callable[[int, int], None] | None = None
                       ) -> ClassicResult:
    """Run the search ``spec`` describes and write its run directory.

    Example:
        >>> spec = make_spec(model="sklearn:random_forest:20", data="sklearn:breast_cancer",
        ...                  budgets=["size=50%"], trials=8, out="runs/rf")  # doctest: +SKIP
        >>> run_classic_search(spec).pareto["knee"]  # doctest: +SKIP
    """
    import optuna

    from autocompress.evaluators.base import EvalResult
    from autocompress.search.base import SearchContext
    from autocompress.search.objectives import Objective
    from autocompress.search.pareto import pareto_report

    run = spec.run_dir()
    stored = _stored_for_resume(spec) if spec.resume else None
    if stored is None and run.exists() and any(run.iterdir()) and not spec.force:
        raise UserInputError(f"--out {str(run)!r} already holds files; pass --resume to continue "
                             "it or --force to replace it")
    problem = ClassicProblem.build(spec)  # input errors (bad CSV column, ...) before any write
    space = problem.space
    s = problem.splits
    if stored is None:
        run = _prepare_dir(spec)
        base_metrics, base_packed = evaluate_policy(problem, space.identity())
        base_test = s.score(base_packed.predict(s.x_test), s.y_test)
        sk_agree = _agreement(base_packed.predict(s.x_test), problem.model.predict(s.x_test))
        limits = {b.name: b.limit(base_metrics) for b in spec.budgets}
    else:  # the recorded base keeps the recorded limits and feasibility
        base_metrics, base_test = dict(stored["base_metrics"]), float(stored["base_test_acc"])
        sk_agree = float(stored["base_vs_sklearn_test_agreement"])
        limits = dict(stored["limits"])
    context = SearchContext(
        space=space,  # type: ignore[arg-type]
        objectives=[Objective(n, d) for n, d in OBJECTIVES], budgets=spec.budgets,
        base_metrics=base_metrics, limits=limits, storage=optuna.storages.InMemoryStorage(),
        study_name="classic", trials=spec.trials, run_dir=run)
    atomic_write_text(run / SPEC_FILE, json.dumps({
        **spec.to_dict(), "task": "regression" if s.regression else "classification",
        "base_metrics": base_metrics, "base_test_acc": base_test,
        "base_vs_sklearn_test_agreement": sk_agree, "limits": limits,
        "splits": s.fingerprint(), "classes": list(s.classes), "space": space.describe()},
        indent=2, sort_keys=True))
    searcher = _searcher(spec, context)
    log = TrialLog(run / TRIALS_FILE)
    log.repair()  # a killed run may leave one torn last line
    records: list[dict[str, Any]] = []
    done: dict[str, dict[str, float]] = {}
    stop = "completed"
    try:
        for rec in log.read() if stored is not None else []:
            policy = searcher.ask()
            if policy is None or policy.to_dict() != rec["policy"] or rec["number"] != len(records):
                raise UserInputError(f"--resume: the strategy's candidate {len(records)} differs from "
                                     f"the one recorded in {str(run / 'trials.jsonl')!r}; the run "
                                     "cannot be continued (use a new --out)")
            done.setdefault(rec["setting"], rec["metrics"])
            searcher.tell(policy, EvalResult(metrics=dict(rec["metrics"]), timings={}))
            records.append(rec)
        for number in range(len(records), spec.trials):
            policy = searcher.ask()
            if policy is None:
                stop = "strategy has nothing more to propose"
                break
            space.validate(policy)
            key = space.structure_key(policy)
            t0 = time.perf_counter()
            metrics = done.get(key)
            if metrics is None:
                metrics, _ = evaluate_policy(problem, policy)
                done[key] = metrics
            result = EvalResult(metrics=dict(metrics), timings={"total": time.perf_counter() - t0})
            violations = context.violations(metrics, policy)
            rec = {"number": number, "id": number, "policy": policy.to_dict(), "metrics": metrics,
                   "setting": key, "feasible": all(v <= 0 for v in violations.values()),
                   "violations": violations, "status": "ok", "strategy": spec.strategy}
            searcher.tell(policy, result)
            log.append(rec)
            records.append(rec)
            if progress is not None:
                progress(number + 1, spec.trials)
    finally:
        searcher.close()
    pareto = write_front(problem, run, records, base_metrics, spec, stop, pareto_report)
    return ClassicResult(run, records, pareto, base_metrics, base_test, stop)


def write_front(problem: ClassicProblem, run: Path, records: list[dict[str, Any]],
                base_metrics: Mapping[str, float], spec: ClassicSpec, stop: str,
                pareto_report: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """``RUN/pareto.json`` over the feasible records (first record per artefact), with test
    accuracy and the artefact file of every front point."""
    seen: set[str] = set()
    feasible = []
    for r in records:
        if r["feasible"] and r["setting"] not in seen:
            seen.add(r["setting"])
            feasible.append({"id": r["id"], "policy": r["policy"], "metrics": r["metrics"],
                             "setting": r["setting"]})
    report = pareto_report(feasible, list(OBJECTIVES), base_metrics=base_metrics, extra={
        "kind": KIND, "strategy": spec.strategy, "n_evaluated": len(records),
        "budgets": [b.to_dict() for b in spec.budgets], "stop_reason": stop})
    art = run / "artefacts"
    art.mkdir(exist_ok=True)
    s = problem.splits
    for p in report["points"]:
        packed = problem.space.build(CompressionPolicy.from_dict(p["policy"]))
        path = art / f"point-{p['id']}.actf"
        path.write_bytes(packed.to_bytes())
        p["artefact"] = str(path.relative_to(run))
        p["test_acc"] = s.score(packed.predict(s.x_test), s.y_test)
    atomic_write_text(run / PARETO_FILE, json.dumps(report, indent=2, sort_keys=True))
    return report
