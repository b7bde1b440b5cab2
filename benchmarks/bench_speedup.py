"""Benchmark 3: measured speed-up of a 50%-MACs structured-pruned model over the original.

The uniform prune ratio whose predicted MACs are closest to half the original's is found by
bisection on ``space.macs``; the pruned model is built with ``compress`` (MACs counted on it
are printed too). Original and pruned are timed in the same run, interleaved round by round
(so a noisy neighbour hits both alike), on ONNX Runtime at batch 64; target >= 1.7x (AMC
measured 1.79x at 50% FLOPs on MobileNet-V1). ``--round-to`` 1, 8 and 16 show how much channel
counts matter: ONNX Runtime's fast blocked (NCHWc) convolutions need channel counts that are
multiples of the SIMD block (16 floats with AVX-512, 8 with AVX2); other counts fall back to a
slower path, which can eat the whole gain.

Run: .venv/bin/python benchmarks/bench_speedup.py [--models resnet20 mobilenetv2] [--round-to 1 8 16] [--clock cpu]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from autocompress.compression import compress, count_macs
from autocompress.evaluators import EvaluatorConfig
from autocompress.evaluators.latency import make_runner, time_runner, torch_threads
from autocompress.problem import Problem


def half_macs_ratio(space, target: float = 0.5) -> float:  # type: ignore[no-untyped-def]
    """Uniform prune ratio whose predicted MACs are closest to ``target`` x the original's."""
    base = space.macs(space.identity())
    lo, hi = 0.0, space.max_prune
    for _ in range(40):
        mid = (lo + hi) / 2
        if space.macs(space.uniform(prune=mid)) > target * base:
            lo = mid
        else:
            hi = mid
    cands = [lo, hi]
    return min(cands, key=lambda p: abs(space.macs(space.uniform(prune=p)) / base - target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--backend", default="ort", choices=["torch", "ort", "ort-int8"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: CPU time of the inference thread (robust on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for round_to in args.round_to:
            problem = Problem.build(name, data="digits", train_epochs=args.epochs, seed=args.seed,
                                    knobs=("prune",), round_to=round_to,
                                    evaluator=EvaluatorConfig(latency="none"), progress=True)
            space, model, x = problem.space, problem.model, problem.example_input
            ratio = half_macs_ratio(space)
            policy = space.uniform(prune=ratio)
            small = compress(model, policy, space=space)
            macs0, macs1 = count_macs(model, x), count_macs(small, x)
            with torch_threads(args.threads):
                runs = [make_runner(m, x, backend=args.backend, batch=args.batch, threads=args.threads)
                        for m in (model, small)]
                t_orig: list[float] = []
                t_small: list[float] = []
                per_round = []
                for _ in range(args.rounds):
                    a = time_runner(runs[0], warmup=1, repeats=args.repeats, clock=args.clock)
                    b = time_runner(runs[1], warmup=1, repeats=args.repeats, clock=args.clock)
                    t_orig += a
                    t_small += b
                    per_round.append(float(np.median(a) / np.median(b)))
            m0, m1 = float(np.median(t_orig)), float(np.median(t_small))
            rows.append((name, round_to, ratio, macs1 / macs0, m0, m1, m0 / m1,
                         float(np.percentile(per_round, 10)), float(np.percentile(per_round, 90))))
            print(f"{name} round_to={round_to}: prune {ratio:.3f} everywhere -> {macs1 / macs0:.1%} of "
                  f"{macs0:,} MACs; {args.backend} batch {args.batch}: {m0:.2f} ms -> {m1:.2f} ms, "
                  f"speed-up {m0 / m1:.2f}x (per-round p10-p90 {rows[-1][7]:.2f}-{rows[-1][8]:.2f}x)")
    print(f"\nbackend={args.backend} batch={args.batch} threads={args.threads} clock={args.clock} "
          f"rounds={args.rounds} x repeats={args.repeats}")
    print(f"{'model':12s} {'round_to':>8s} {'prune':>6s} {'MACs':>6s} {'orig ms':>8s} {'pruned ms':>9s} "
          f"{'speed-up':>8s} {'target':>7s}")
    for name, rt, ratio, mr, m0, m1, sp, *_ in rows:
        print(f"{name:12s} {rt:8d} {ratio:6.3f} {mr:6.1%} {m0:8.2f} {m1:9.2f} {sp:7.2f}x "
              f"{'met' if sp >= 1.7 else 'MISSED':>7s}")


if __name__ == "__main__":
    main()
