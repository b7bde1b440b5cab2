"""Benchmark 2: latency predictor error against measurement over random policies (ORT).

For each model and batch size the per-layer lookup table is built (or loaded from the cache),
then N random policies (``space.sample(seed + i)``, seeds disjoint from the table's own
calibration policies) are compressed, timed with ``measure_latency`` and predicted with the
table. Prints the median and 90th-percentile absolute relative error (target: median <= 10%).

On a machine shared with other jobs, ``--clock cpu`` times the CPU time of the (single)
inference thread, which is what an idle core gives; wall-clock medians there mostly measure the
neighbours.

Run: .venv/bin/python benchmarks/bench_latency_lut.py [--models resnet20 mobilenetv2] [--batches 1 64] [--policies 50] [--clock cpu]
     [--knobs prune w_bits a_bits proj_rank]   (the space's knobs; default: the default knobs)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autocompress.compression import compress
from autocompress.evaluators import EvaluatorConfig, LatencyLUT, measure_latency, structural_policy
from autocompress.problem import Problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--backend", default="ort", choices=["torch", "ort", "ort-int8"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: CPU time of the inference thread (robust on a shared machine)")
    parser.add_argument("--rebuild", action="store_true", help="profile the tables again")
    parser.add_argument("--knobs", nargs="+", default=None,
                        help="knobs of the space (default: the default knobs); e.g. proj_rank on a stacked RNN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        problem = Problem.build(name, data="digits", train_epochs=args.epochs, seed=args.seed,
                                evaluator=EvaluatorConfig(latency="none"), progress=True,
                                **({"knobs": args.knobs} if args.knobs else {}))
        space, model, x = problem.space, problem.model, problem.example_input
        for batch in args.batches:
            t0 = time.perf_counter()
            lut = LatencyLUT.build(model, space, x, backend=args.backend, batch=batch,
                                   threads=args.threads, progress=True, rebuild=args.rebuild,
                                   clock=args.clock)
            build_s = time.perf_counter() - t0
            errs, preds, meas = [], [], []
            t0 = time.perf_counter()
            for i in range(args.policies):
                policy = space.sample(args.seed + i)
                small = compress(model, structural_policy(policy), space=space)
                m = measure_latency(small, x, backend=args.backend, batch=batch,
                                    threads=args.threads, repeats=args.repeats,
                                    clock=args.clock).median_ms
                p = lut.predict(policy)
                preds.append(p)
                meas.append(m)
                errs.append(abs(p - m) / m)
            eval_s = time.perf_counter() - t0
            errs_a = np.asarray(errs)
            signed = (np.asarray(preds) - np.asarray(meas)) / np.asarray(meas)
            rho = float(np.corrcoef(preds, meas)[0, 1])
            rows.append((name, batch, float(np.median(errs_a)), float(np.percentile(errs_a, 90)),
                         float(np.median(signed)), rho, lut.base_measured_ms, float(np.median(meas)),
                         lut.meta.get("entries", 0), build_s, eval_s))
            print(f"{name} batch {batch}: median |err| {np.median(errs_a):.1%}, p90 {np.percentile(errs_a, 90):.1%}, "
                  f"median signed {np.median(signed):+.1%}, Pearson r {rho:.3f}; base {lut.base_measured_ms:.3f} ms, "
                  f"policies median {np.median(meas):.3f} ms; table {lut.meta.get('entries', 0)} entries "
                  f"(built/loaded in {build_s:.0f} s), {args.policies} policies measured in {eval_s:.0f} s")
    print(f"\nbackend={args.backend} threads={args.threads} clock={args.clock} repeats={args.repeats} "
          f"policies={args.policies} knobs={args.knobs or 'default'}")
    print(f"{'model':12s} {'batch':>5s} {'med|err|':>9s} {'p90|err|':>9s} {'med err':>8s} {'r':>6s} "
          f"{'base ms':>9s} {'pol. ms':>9s} {'target':>7s}")
    for name, batch, med, p90, sgn, rho, base, polm, *_ in rows:
        print(f"{name:12s} {batch:5d} {med:9.1%} {p90:9.1%} {sgn:+8.1%} {rho:6.3f} {base:9.3f} {polm:9.3f} "
              f"{'met' if med <= 0.10 else 'MISSED':>7s}")


if __name__ == "__main__":
    main()
