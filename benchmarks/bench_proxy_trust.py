"""Benchmark 4: proxy trust on resnet20/digits.

Spearman rank correlation, over N random pruning policies, between the accuracy proxy (no
fine-tune) and the accuracy after a fixed short KD fine-tune, with and without adaptive-BN
recalibration. Random policies come from a prune-only space by default (the case recalibration
is for); ``--knobs prune rank`` adds low-rank factorisation. Least-squares reconstruction of the
pruned layers is off unless ``--reconstruct`` (the evaluator's default; it then skips
recalibration, and the line "as configured" reports that proxy).

Run: .venv/bin/python benchmarks/bench_proxy_trust.py [--policies 30] [--finetune-steps 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autocompress.evaluators import EvaluatorConfig, proxy_trust
from autocompress.problem import Problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--knobs", nargs="+", default=["prune"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reconstruct", action="store_true",
                        help="least-squares reconstruction of pruned layers before scoring")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EvaluatorConfig(latency="none", finetune_lr=args.finetune_lr, reconstruct=args.reconstruct)
    problem = Problem.build(args.model, data="digits", train_epochs=args.epochs, seed=args.seed,
                            knobs=tuple(args.knobs), evaluator=cfg, progress=True)
    t0 = time.perf_counter()
    trust = proxy_trust(problem.evaluator, args.policies, finetune_steps=args.finetune_steps,
                        seed=args.seed, progress=True)
    secs = time.perf_counter() - t0
    raw, rec, ft = (np.asarray(v) for v in (trust.acc_raw, trust.acc_recalib, trust.acc_finetuned))
    print(f"{args.model}/digits, knobs {args.knobs}, reconstruct={args.reconstruct}, "
          f"{trust.n_policies} random policies, "
          f"fine-tune {trust.finetune_steps} KD steps (lr {args.finetune_lr}), base acc "
          f"{problem.base.metrics['acc']:.4f}, {len(problem.evaluator._y_val)} validation samples, "
          f"{secs:.0f} s")
    print(f"  median acc: raw {np.median(raw):.4f}, BN-recalibrated {np.median(rec):.4f}, "
          f"fine-tuned {np.median(ft):.4f}")
    print(f"  Spearman(proxy with BN recalibration, fine-tuned) = {trust.spearman_recalib:.3f} "
          f"(p={trust.pvalue_recalib:.2g})")
    print(f"  Spearman(proxy without recalibration, fine-tuned) = {trust.spearman_raw:.3f} "
          f"(p={trust.pvalue_raw:.2g})")
    print(f"  Spearman(the evaluator's proxy as configured, fine-tuned) = {trust.spearman_proxy:.3f}")


if __name__ == "__main__":
    main()
