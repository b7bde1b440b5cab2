"""Classic models: a random forest's searched front vs "fewer trees" and "shallower trees" at
equal artefact size.

For each data set: a random forest (default 200 trees) is trained on the 60% train split (seed 0).
At each size target (a share of the uncompressed artefact's bytes) three methods give their most
accurate candidate (validation accuracy; ties: fewer bytes) within the target:

- ``search``: ``nsga2`` under ``--budget size=TARGET`` (trees kept, depth cap, threshold and leaf
  bits), ``--trials`` candidates;
- ``fewer trees``: every count of the best-ranked trees, full depth, float32 (all counts tried);
- ``shallower trees``: all trees, every depth cap, float32 (all caps tried).

Sizes are the packed artefact's bytes (``RUN/artefacts/*.actf`` format); test accuracy is
reported for the chosen candidate of each method.

Then, per data set, an RBF SVM (``sklearn:svc``, after a StandardScaler) with every support vector
kept at each support-vector bit-width (the setting of Boni et al. 2007, who report that an 8-bit
SVM on a microcontroller is as accurate as the floating-point one): bytes and validation / test
accuracy.

Run: nice -n 19 .venv/bin/python benchmarks/bench_classic.py [--trees 200] [--trials 60]
     [--data sklearn:breast_cancer sklearn:wine] [--targets 0.02 0.05 0.1 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _pick(cands: list[dict[str, Any]], limit: float) -> dict[str, Any] | None:
    within = [c for c in cands if c["size_bytes"] <= limit]
    return max(within, key=lambda c: (c["val_acc"], -c["size_bytes"])) if within else None


def bench_data(data: str, trees: int, trials: int, targets: list[float], seed: int,
               workdir: Path) -> dict[str, Any]:
    """The table rows of one data set."""
    import numpy as np

    from autocompress.classic import ClassicProblem, make_spec, run_classic_search
    from autocompress.compression.policy import CompressionPolicy, LayerAction

    model = f"sklearn:random_forest:{trees}"
    problem = ClassicProblem.build(make_spec(model=model, data=data, seed=seed, trials=1))
    space, s = problem.space, problem.splits

    def measure(policy: CompressionPolicy) -> dict[str, Any]:
        packed = space.build(policy)
        return {"size_bytes": len(packed.to_bytes()),
                "val_acc": float((packed.predict(s.x_val) == s.y_val).mean()),
                "test_acc": float((packed.predict(s.x_test) == s.y_test).mean()),
                "setting": space.structure_key(policy)}

    base = measure(space.identity())
    fewer = [measure(CompressionPolicy({"trees": LayerAction(prune=1.0 - k / space.n_trees)}))
             for k in range(1, space.n_trees + 1)]
    shallower = [measure(CompressionPolicy({"depth": LayerAction(prune=1.0 - d / space.max_depth)}))
                 for d in range(1, space.max_depth + 1)]
    rows = []
    for target in targets:
        t0 = time.perf_counter()
        spec = make_spec(model=model, data=data, seed=seed, trials=trials, strategy="nsga2",
                         budgets=[f"size={100 * target:g}%"],
                         out=str(workdir / f"{data.split(':')[1]}-{target}"))
        result = run_classic_search(spec)
        searched = []
        for p in result.pareto["points"]:
            m = p["metrics"]
            searched.append({"size_bytes": m["size_bytes"], "val_acc": m["acc"],
                             "test_acc": p["test_acc"], "setting": p["setting"]})
        limit = target * base["size_bytes"]
        rows.append({"target": target, "limit_bytes": limit,
                     "search_s": time.perf_counter() - t0,
                     "search": _pick(searched, limit), "fewer trees": _pick(fewer, limit),
                     "shallower trees": _pick(shallower, limit)})
    return {"data": data, "trees": trees, "max_depth": space.max_depth, "base": base,
            "n_val": int(len(s.y_val)), "n_test": int(len(s.y_test)), "rows": rows,
            "sklearn_test_acc": float(np.mean(problem.model.predict(s.x_test) == s.y_test))}


def svm_bits(data: str, seed: int) -> dict[str, Any]:
    """RBF SVM, every support vector kept, at each support-vector bit-width."""
    from autocompress.classic import ClassicProblem, make_spec
    from autocompress.classic.dense import MATRIX_BITS
    from autocompress.compression.policy import CompressionPolicy, LayerAction

    problem = ClassicProblem.build(make_spec(model="sklearn:svc", data=data, seed=seed, trials=1))
    s = problem.splits
    rows = []
    for bits in MATRIX_BITS:
        packed = problem.space.build(CompressionPolicy({"matrix": LayerAction(w_bits=bits)}))
        rows.append({"bits": bits, "size_bytes": len(packed.to_bytes()),
                     "val_acc": s.score(packed.predict(s.x_val), s.y_val),
                     "test_acc": s.score(packed.predict(s.x_test), s.y_test)})
    return {"data": data, "vectors": int(problem.space.base.matrix.shape[0]), "rows": rows}


def _cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "none fits"
    return f"{100 * c['val_acc']:.1f} / {100 * c['test_acc']:.1f} ({c['size_bytes']:.0f} B)"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark and print one markdown table per data set."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["sklearn:breast_cancer", "sklearn:wine"])
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.25])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-svm", dest="svm", action="store_false", help="skip the SVM bit-width table")
    args = ap.parse_args(argv)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            res = bench_data(data, args.trees, args.trials, args.targets, args.seed, Path(tmp))
            out.append(res)
            b = res["base"]
            print(f"\n{data}: {res['trees']} trees, max depth {res['max_depth']}, base artefact "
                  f"{b['size_bytes']} B, val/test acc {100 * b['val_acc']:.1f} / {100 * b['test_acc']:.1f} "
                  f"(scikit-learn test {100 * res['sklearn_test_acc']:.1f}); {res['n_val']} val, "
                  f"{res['n_test']} test samples")
            print("| size target | search (nsga2) val / test | fewer trees val / test | "
                  "shallower trees val / test | search's choice | search time |")
            print("|---|---|---|---|---|---|")
            for r in res["rows"]:
                choice = r["search"]["setting"] if r["search"] else "-"
                print(f"| {100 * r['target']:g}% ({r['limit_bytes']:.0f} B) | {_cell(r['search'])} | "
                      f"{_cell(r['fewer trees'])} | {_cell(r['shallower trees'])} | {choice} | "
                      f"{r['search_s']:.1f} s |")
            if args.svm:
                sv = svm_bits(data, args.seed)
                res["svm"] = sv
                print(f"\n{data}: RBF SVM, all {sv['vectors']} support vectors kept")
                print("| support-vector bits | bytes | val / test acc |")
                print("|---|---|---|")
                for r in sv["rows"]:
                    print(f"| {r['bits']} | {r['size_bytes']} | {100 * r['val_acc']:.1f} / "
                          f"{100 * r['test_acc']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
