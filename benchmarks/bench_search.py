"""Search-strategy benchmark: hypervolume and best accuracy at <= 50% MACs, and Ray throughput.

Part 1 (quality): resnet20 trained on digits, objectives acc x MACs, hard budget macs=50%, the same
number of evaluated candidates per strategy and the same seeds; for each strategy the mean (and
spread) over seeds of the front's hypervolume (normalised by the base model, reference point
(zero accuracy, base MACs); see ``autocompress.search.pareto``) and of the best feasible accuracy.
Every number comes from one run of this script; the ratio of the best strategy's hypervolume to
random search's is printed (target >= 1.05).

Part 2 (throughput): the same search as Ray Tune trials with ``--workers 2`` and 1 worker, same
machine, same run, evaluation cache off; trials per minute measured from the first to the last
recorded trial (Ray start-up and worker set-up are reported separately).

Usage::

    python benchmarks/bench_search.py --evals 60 --seeds 0 1 2 --ray-trials 16 --out /tmp/bench-search
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STRATEGIES = ["ladder", "nsga2", "tpe", "ddpg", "ddpg_bc", "random", "uniform"]


def _spec(out: Path, strategy: str, seed: int, trials: int, **kw: Any) -> Any:
    from autocompress.search import SearchSpec

    return SearchSpec.from_dict({"model": "resnet20", "data": "digits", "knobs": ["prune"],
                                 "budgets": ["macs=50%"], "strategy": strategy, "seed": seed,
                                 "trials": trials, "out": str(out), **kw})


def _space_kw(args: argparse.Namespace) -> dict[str, Any]:
    """Space settings given on the command line (the problem and every spec must agree)."""
    return {} if args.round_to is None else {"round_to": args.round_to}


def quality(args: argparse.Namespace, problem: Any) -> dict[str, Any]:
    from autocompress.search import run_search

    rows: dict[str, dict[str, list[float]]] = {}
    for strategy in args.strategies:
        rows[strategy] = {"hv": [], "best": [], "n": [], "seconds": [], "finetuned": []}
        for seed in args.seeds:
            out = args.out / "quality" / f"{strategy}-s{seed}"
            spec = _spec(out, strategy, seed, args.evals, **_space_kw(args))
            t0 = time.perf_counter()
            res = run_search(spec, problem=problem)
            dt = time.perf_counter() - t0
            best = res.best.metrics["acc"] if res.best is not None else 0.0
            rows[strategy]["hv"].append(float(res.hypervolume or 0.0))
            rows[strategy]["best"].append(float(best))
            rows[strategy]["n"].append(res.n_evaluated)
            rows[strategy]["seconds"].append(dt)
            tuned = ""
            if args.finetune_epochs and res.best is not None:
                from autocompress.report import finetune_front

                ft = finetune_front(res.run_dir, top=1, epochs=args.finetune_epochs, seed=seed)[0]
                rows[strategy]["finetuned"].append(float(ft.acc_after))
                tuned = f"  fine-tuned {ft.acc_after:.4f}"
            print(f"  {strategy:8s} seed {seed}: hv {res.hypervolume:.4f}  best acc@<=50% MACs "
                  f"{best:.4f}{tuned}  ({res.n_evaluated} evaluations, {len(res.front)} front points, "
                  f"{dt:.0f} s)", flush=True)
    return rows


def throughput(args: argparse.Namespace, problem: Any) -> dict[str, Any]:
    from autocompress.search import run_search

    out: dict[str, Any] = {}
    for workers in (1, 2):
        stamps: list[float] = []
        t0 = time.perf_counter()

        def progress(p: Any, stamps: list[float] = stamps) -> None:
            if p.phase == "trial":
                stamps.append(time.perf_counter())

        spec = _spec(args.out / "ray" / f"w{workers}", "random", 0, args.ray_trials,
                     backend="ray", workers=workers, cache=False)
        res = run_search(spec, progress=progress, problem=problem)
        total = time.perf_counter() - t0
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
        per_min = (len(stamps) - 1) / span * 60.0 if len(stamps) > 1 else float("nan")
        out[f"workers={workers}"] = {"trials": res.n_evaluated, "trials_per_min": per_min,
                                     "first_trial_after_s": stamps[0] - t0 if stamps else None,
                                     "total_s": total}
        print(f"  ray workers={workers}: {per_min:.1f} trials/min (first trial after "
              f"{stamps[0] - t0:.0f} s, {total:.0f} s in all)", flush=True)
    out["speedup"] = out["workers=2"]["trials_per_min"] / out["workers=1"]["trials_per_min"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=60, help="evaluated candidates per strategy and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--ray-trials", type=int, default=16, help="trials per Ray throughput run (0: skip)")
    ap.add_argument("--round-to", type=int, default=None, help="channel rounding of the space [default: the engine's]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local evaluations")
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="KD fine-tune the best point of each run this many epochs (0: no fine-tune)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-search"))
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"--out {args.out} is not empty; choose a fresh directory")

    import torch

    torch.set_num_threads(args.threads)
    from autocompress.search import SearchSpec
    from autocompress.search.runner import build_problem

    t0 = time.perf_counter()
    problem = build_problem(SearchSpec(**_space_kw(args)), progress=False)
    base = problem.base.metrics
    print(f"resnet20/digits base: acc {base['acc']:.4f}, {base['macs'] / 1e6:.2f}M MACs, "
          f"round_to {problem.space.round_to} "
          f"(built in {time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    print(f"quality: {args.evals} evaluations x seeds {args.seeds}", flush=True)
    rows = quality(args, problem)

    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.4f} +- {sd:.4f}"

    print("\n| strategy | hypervolume (mean +- sd) | best acc at <= 50% MACs | after fine-tune | s per run |")
    print("|---|---|---|---|---|")
    for s, r in rows.items():
        tuned = ms(r["finetuned"]) if r["finetuned"] else "-"
        print(f"| {s} | {ms(r['hv'])} | {ms(r['best'])} | {tuned} | {statistics.mean(r['seconds']):.0f} |")
    summary: dict[str, Any] = {"evals": args.evals, "seeds": args.seeds, "base": dict(base),
                               "quality": rows}
    if "random" in rows:
        rnd = statistics.mean(rows["random"]["hv"])
        best_s = max(rows, key=lambda s: statistics.mean(rows[s]["hv"]))
        ratio = statistics.mean(rows[best_s]["hv"]) / rnd if rnd > 0 else float("inf")
        summary["best_strategy"], summary["hv_ratio_vs_random"] = best_s, ratio
        print(f"\nbest strategy by hypervolume: {best_s}, {ratio:.3f}x random's (target >= 1.05)")
    if args.ray_trials > 0:
        print(f"\nthroughput: {args.ray_trials} Ray trials, random search, evaluation cache off", flush=True)
        summary["throughput"] = throughput(args, problem)
        print(f"ray 2 workers vs 1: {summary['throughput']['speedup']:.2f}x trials/min")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
