"""Hand-written run directories in the search engine's on-disk format, for report tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autocompress.compression import CompressionPolicy, LayerAction

LAYERS = ["stem.0", "res.0", "branch_a.0", "branch_b.0", "dw.0", "pw.0", "fc1", "fc2"]


def write_fake_run(root: Path, n_trials: int = 24, seed: int = 0) -> Path:
    """A run of ``n_trials`` random candidates over ``LAYERS`` with a MACs budget at 50%.

    Metrics are synthetic but consistent (more pruning -> fewer MACs, lower accuracy); the front
    is the non-dominated feasible set over (acc max, macs min), computed by brute force.
    """
    rng = np.random.default_rng(seed)
    base = {"acc": 0.97, "macs": 2.0e6, "flops": 4.0e6, "params": 3.0e4, "size_bytes": 1.2e5}
    trials = []
    for i in range(n_trials):
        prunes = rng.uniform(0, 0.8, len(LAYERS))
        bits = rng.choice([4, 8, 32], len(LAYERS))
        policy = CompressionPolicy({
            n: LayerAction(prune=round(float(p), 3), w_bits=int(b), a_bits=int(b))
            for n, p, b in zip(LAYERS, prunes, bits, strict=True)
        })
        keep = float(np.mean(1 - prunes))
        macs = base["macs"] * keep**2
        acc = base["acc"] - 0.5 * (1 - keep) ** 2 - 0.01 * float(np.mean(bits < 8)) + rng.normal(0, 0.005)
        metrics = {"acc": acc, "macs": macs, "flops": 2 * macs, "params": base["params"] * keep**2,
                   "size_bytes": base["size_bytes"] * keep**2 * float(np.mean(bits)) / 32}
        trials.append({"id": i, "policy": policy.to_dict(), "metrics": metrics, "fidelity": "full",
                       "timings": {"total": 0.1}, "status": "ok", "feasible": macs <= 0.5 * base["macs"]})
    trials.append({"id": n_trials, "policy": CompressionPolicy({}).to_dict(), "metrics": {"acc": None},
                   "fidelity": "full", "status": "failed", "error": "boom", "feasible": False})
    feas = [t for t in trials if t["feasible"] and t["status"] == "ok"]
    front = [t for t in feas if not any(
        o["metrics"]["acc"] >= t["metrics"]["acc"] and o["metrics"]["macs"] <= t["metrics"]["macs"]
        and (o["metrics"]["acc"] > t["metrics"]["acc"] or o["metrics"]["macs"] < t["metrics"]["macs"])
        for o in feas)]
    root.mkdir(parents=True, exist_ok=True)
    spec = {"model": "test_convnet", "data": "digits", "seed": seed, "checkpoint": None,
            "objectives": [{"name": "acc", "direction": "maximize"}, {"name": "macs", "direction": "minimize"}],
            "budgets": {"macs": "50%"}, "trials": n_trials}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials) + '{"id": 99, "pol')
    pareto = {
        "schema_version": 1,
        "objectives": spec["objectives"],
        "reference": {"normalisation": "base", "base": {"acc": base["acc"], "macs": base["macs"]}},
        "hypervolume": 0.5,
        "knee": front[len(front) // 2]["id"],
        "points": [{"id": t["id"], "policy": t["policy"], "metrics": t["metrics"], "qom": 0.7,
                    "knee": False} for t in front],
    }
    (root / "pareto.json").write_text(json.dumps(pareto))
    (root / "base.json").write_text(json.dumps({"metrics": base}))
    return root


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A synthetic run directory (no model needed)."""
    return write_fake_run(tmp_path / "run")


# -- a real run: a trained tiny model, real evaluations, in the search engine's format -------------

REAL_POINTS = {
    "1": dict(prune=0.5),                          # pruned, float
    "2": dict(prune=0.1, w_bits=8, a_bits=8),      # pruned + 8-bit: int8 export
    "3": dict(prune=0.1, w_bits=4, a_bits=8),      # 4-bit weights: simulated, no int8 file
    "4": dict(prune=0.25, rank=0.5),               # pruned + low-rank
    "5": dict(prune=0.25, rank=0.5, w_bits=4, a_bits=8),  # low-rank factors on a 4-bit grid
}


def write_real_run(root: Path, model: str = "test_mlp", points: dict | None = None,
                   train_epochs: int = 4, seed: int = 0, space_knobs: list[str] | None = None) -> Path:
    """Evaluate policies on a really trained ``model``; write them as the engine does.

    A ``points`` value is the knobs of a uniform policy, or a function of the space returning
    the policy (per-layer, mixed precision). ``space_knobs``: the space's knobs (default: prune,
    w_bits, a_bits, rank).

    ``spec.json``, ``base.json`` and ``pareto.json`` come from the search engine's own writers
    (``write_spec``, ``pareto_report``); each ``points`` entry becomes a front point with that id.
    """
    from autocompress.search import SearchSpec, pareto_report
    from autocompress.search.runner import build_problem
    from autocompress.search.storage import write_spec

    points = points or REAL_POINTS
    spec = SearchSpec.from_dict({
        "model": model, "data": "digits", "seed": seed, "train_epochs": train_epochs,
        "knobs": space_knobs or ["prune", "w_bits", "a_bits", "rank"], "strategy": "random",
        "trials": len(points), "budgets": ["macs=90%"], "out": str(root),
    })
    problem = build_problem(spec, progress=False)
    base = problem.base.metrics
    records = []
    for pid, knobs in points.items():
        policy = knobs(problem.space) if callable(knobs) else problem.space.uniform(**knobs)
        res = problem.evaluator.evaluate(policy)
        assert res.ok, res.error
        records.append({"v": 1, "id": int(pid), "trial": int(pid), "policy": policy.to_dict(),
                        "policy_key": policy.key(), "metrics": res.metrics, "fidelity": "full",
                        "timings": res.timings, "status": "ok", "feasible": True, "final": True})
    root.mkdir(parents=True, exist_ok=True)
    write_spec(root, spec, {"num_classes": problem.num_classes,
                            "input_shape": list(problem.input_shape)})
    (root / "base.json").write_text(json.dumps({
        "metrics": base, "model": model, "data": "digits",
        "checkpoint": str(problem.checkpoint_path) if problem.checkpoint_path else None}))
    (root / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    objectives = [(o.name, o.direction) for o in spec.objectives]
    report = pareto_report(records, objectives, base_metrics=base, extra={
        "base": base, "budgets": ["macs=90%"], "budget_limits": {"macs": 0.9 * base["macs"]}})
    # A hand-picked front: every record is a point, whatever dominates what.
    by_id = {p["id"]: p for p in report["points"]}
    report["points"] = [by_id.get(r["id"], {k: r[k] for k in ("id", "policy", "metrics")})
                        for r in records]
    (root / "pareto.json").write_text(json.dumps(report))
    return root


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over test_mlp on digits (trains in seconds) with the ``REAL_POINTS`` on its front."""
    return write_real_run(tmp_path_factory.mktemp("real") / "run")


def mixed_precision(pattern: list[tuple[int, int]], every: int) -> Callable[[Any], CompressionPolicy]:
    """A policy builder: prune 0.1 and w8/a8 everywhere, except every ``every``-th decision point
    (from the second on), which takes the next (w_bits, a_bits) of ``pattern`` in turn."""

    def build(space: Any) -> CompressionPolicy:
        policy = space.uniform(prune=0.1, w_bits=8, a_bits=8)
        for i, dp in enumerate(space.decision_points):
            if i % every == 1:
                w, a = pattern[(i // every) % len(pattern)]
                old = policy.get(dp.name)
                policy = policy.with_layer(dp.name, LayerAction(prune=old.prune, w_bits=w, a_bits=a,
                                                                rank=old.rank))
        return policy

    return build


CONV_POINTS: dict[str, Any] = {
    "1": dict(prune=0.1, w_bits=8, a_bits=8),      # conv + BN + residual, 8-bit: int8 export
    "2": dict(prune=0.3),                          # pruned conv net
    "3": mixed_precision([(4, 4)], every=3),       # mixed: a third of the layers at w4/a4
    "4": mixed_precision([(4, 4), (2, 2), (8, 8), (1, 1), (6, 6)], every=2),  # down to 1 bit
}


@pytest.fixture(scope="session")
def conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over test_resnet (ResNet-8, width 8; two training epochs) with ``CONV_POINTS``."""
    return write_real_run(tmp_path_factory.mktemp("conv") / "run", model="test_resnet",
                          points=CONV_POINTS, train_epochs=2)


@pytest.fixture(scope="session")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over test_lstm (one training epoch): point 1 at w8, point 2 at w4/a8."""
    return write_real_run(tmp_path_factory.mktemp("lstm") / "run", model="test_lstm",
                          points={"1": dict(w_bits=8), "2": dict(w_bits=4, a_bits=8)}, train_epochs=1)


@pytest.fixture(scope="session")
def compact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over test_mlp with the ``sparsity`` and ``share_bits`` knobs: point 1 sparse (0.8),
    point 2 shared (4 bits), point 3 both."""
    return write_real_run(tmp_path_factory.mktemp("compact") / "run", model="test_mlp",
                          points={"1": dict(sparsity=0.8), "2": dict(share_bits=4),
                                  "3": dict(sparsity=0.8, share_bits=4)}, train_epochs=1,
                          space_knobs=["prune", "a_bits", "rank", "sparsity", "share_bits"])
