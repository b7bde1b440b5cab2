"""Benchmark 1: seconds per candidate of CompressionEvaluator, split by phase.

For each model (trained on digits once, then reused from the cache), N random policies are
evaluated at full fidelity with a fresh on-disk result cache (so every candidate is computed) and
the per-phase seconds are summed: compress (deep copy, torch-pruning graph and surgery,
least-squares reconstruction of pruned layers from calibration activations, SVD, fake-quant setup
and activation-range calibration), recalibrate (adaptive-BN forward passes),
finetune (KD steps, when asked), evaluate (validation forward passes), latency (lookup-table
prediction, or timing when measured), and bookkeeping (everything else: policy validation, the
cost model, cache look-up and write, result records). The lookup table is built before timing.

Run: .venv/bin/python benchmarks/bench_evaluators.py [--models resnet20 mobilenetv2] [--candidates 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autocompress.evaluators import CompressionEvaluator, EvalCache, EvaluatorConfig
from autocompress.problem import Problem

PHASES = ("compress", "recalibrate", "finetune", "evaluate", "latency", "bookkeeping")


def forward_seconds_in_compress(ev: CompressionEvaluator, model: torch.nn.Module,
                                policies: list) -> float:  # type: ignore[type-arg]
    """Mean seconds per candidate spent in forward passes of (copies of) the model inside compress.

    Timing hooks on the base model's root module travel with the deep copies ``compress`` makes,
    so every forward pass it runs (activation-range calibration, torch-pruning's trace) is timed.
    """
    spent = [0.0]
    starts: list[float] = []

    def pre(_m: torch.nn.Module, _a: object) -> None:
        starts.append(time.perf_counter())

    def post(_m: torch.nn.Module, _a: object, _o: object) -> None:
        spent[0] += time.perf_counter() - starts.pop()

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        for policy in policies:
            ev.compress(policy)
    finally:
        for h in handles:
            h.remove()
    return spent[0] / max(len(policies), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--latency", default="predicted", choices=["none", "predicted", "measured"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reconstruct", action="store_true",
                        help="turn least-squares reconstruction off (BN recalibration then runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} candidates={args.candidates} latency={args.latency} "
          f"finetune_steps={args.finetune_steps} reconstruct={not args.no_reconstruct}")
    for name in args.models:
        cfg = EvaluatorConfig(latency=args.latency, finetune_steps=args.finetune_steps,
                              reconstruct=not args.no_reconstruct)
        t0 = time.perf_counter()
        problem = Problem.build(name, data="digits", train_epochs=args.epochs, seed=args.seed,
                                evaluator=cfg, progress=True)
        build_s = time.perf_counter() - t0
        lut = None
        lut_s = 0.0
        if args.latency == "predicted":
            t0 = time.perf_counter()
            lut = problem.evaluator.get_lut()
            lut_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            ev = CompressionEvaluator(problem.model, problem.space, problem.data, cfg,
                                      example_input=problem.example_input,
                                      cache=EvalCache(Path(tmp) / "evals.sqlite"), lut=lut)
            ev.evaluate(problem.space.sample(10_000 + args.seed))  # warm-up, not counted
            results = [ev.evaluate(problem.space.sample(args.seed + i)) for i in range(args.candidates)]
            fwd_in_compress = forward_seconds_in_compress(
                ev, problem.model, [problem.space.sample(args.seed + i) for i in range(args.candidates)])
        failed = sum(not r.ok for r in results)
        totals = {ph: sum(r.timings.get(ph, 0.0) for r in results) for ph in PHASES}
        total = sum(r.timings["total"] for r in results)
        per = [r.timings["total"] for r in results]
        print(f"\n{name}/digits: problem built in {build_s:.1f} s, lookup table {lut_s:.1f} s, "
              f"{len(problem.space.decision_points)} decision points, "
              f"{len(ev._y_val)} validation samples, {failed} failed")
        print(f"  seconds per candidate: median {statistics.median(per):.3f}, "
              f"mean {total / len(results):.3f}")
        print(f"  {'phase':12s} {'s/candidate':>12s} {'share':>7s}")
        for ph in PHASES:
            print(f"  {ph:12s} {totals[ph] / len(results):12.4f} {totals[ph] / total:7.1%}")
        book = totals["bookkeeping"] / total
        fwd = (totals["recalibrate"] + totals["evaluate"] + totals["finetune"]) / total
        comp = totals["compress"] / len(results)
        surgery = max(comp - fwd_in_compress, 0.0)
        strict = (totals["bookkeeping"] / len(results) + surgery) / (total / len(results))
        print(f"  bookkeeping share {book:.1%} (target < 10%: {'met' if book < 0.10 else 'MISSED'}); "
              f"forward/backward phases {fwd:.1%}; compress {totals['compress'] / total:.1%}")
        print(f"  inside compress: forward passes (least-squares reconstruction, activation-range "
              f"calibration, graph tracing) {fwd_in_compress:.4f} s, the rest (copy, torch-pruning "
              f"surgery, least-squares solves, SVD) {surgery:.4f} s per candidate")
        print(f"  everything outside forward/backward passes (bookkeeping + compress surgery): "
              f"{strict:.1%} of the total")


if __name__ == "__main__":
    main()
