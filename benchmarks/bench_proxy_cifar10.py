"""Proxy trust on real data: does the signal the search optimises rank candidates the way the user's
result (test top-1 after fine-tuning) does?

For ``--policies`` pruning policies under ``--budget`` (random search's samples, repaired onto the
budget, seeded), each candidate is scored

* by the search's signals: the evaluator as a search configures it (BN recalibration / least-squares
  reconstruction, ``--val-samples`` validation images carved from ``train/``), with each of
  ``--signal-steps`` KD fine-tune steps (0 = the default proxy);
* by the reference: top-1 on the whole held-out ``test/`` split after ``--reference-steps`` KD
  fine-tune steps (the same KD settings).

It prints the Spearman rank correlation of every signal with the reference (the issue's target:
>= 0.8 for the signal the search optimises) and the seconds per candidate each signal costs, so the
cheapest signal that ranks well can be chosen.

Run: .venv/bin/python benchmarks/bench_proxy_cifar10.py --checkpoint CKPT \\
         [--data imagefolder:~/.cache/autocompress/data/cifar10] [--policies 20] [--budget macs=50%] \\
         [--signal-steps 0 50] [--reference-steps 400]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="imagefolder:~/.cache/autocompress/data/cifar10")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--budget", default="macs=50%")
    ap.add_argument("--signal-steps", type=int, nargs="+", default=[0, 50])
    ap.add_argument("--reference-steps", type=int, default=400)
    ap.add_argument("--val-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from autocompress.evaluators import EvaluatorConfig
    from autocompress.evaluators.compression_evaluator import CompressionEvaluator
    from autocompress.problem import Problem
    from autocompress.search import create_searcher
    from autocompress.search.base import SearchContext
    from autocompress.search.budgets import parse_budget
    from autocompress.search.spec import Objective

    torch.set_num_threads(args.threads)
    config = EvaluatorConfig(latency="none", val_samples=args.val_samples)
    problem = Problem.build(args.model, checkpoint=str(Path(args.checkpoint).expanduser()), data=args.data,
                            knobs=("prune",), round_to="auto", evaluator=config, seed=args.seed,
                            progress=False)
    if problem.data.test is None:
        raise SystemExit(f"--data {args.data!r} has no held-out test split (train/ + test/ folders)")
    base = {k: float(v) for k, v in problem.base.metrics.items()}
    budget = parse_budget(args.budget)
    ctx = SearchContext(space=problem.space, objectives=(Objective("acc", "maximize"), Objective("macs", "minimize")),
                        budgets=(budget,), base_metrics=base, limits={budget.name: budget.limit(base)},
                        trials=args.policies)
    sampler = create_searcher("random", ctx, seed=args.seed)
    policies = [sampler.ask() for _ in range(args.policies)]

    def scores(data: Any, cfg: EvaluatorConfig) -> tuple[list[float], float]:
        ev = CompressionEvaluator(problem.model, problem.space, data, cfg, example_input=problem.example_input)
        t0 = time.perf_counter()
        accs = [float(ev.evaluate(p).metrics["acc"]) for p in policies]
        return accs, (time.perf_counter() - t0) / len(policies)

    # The reference scores the whole test split: the evaluator's validation slot holds it.
    test_as_val = dataclasses.replace(problem.data, val=problem.data.test)
    ref_cfg = dataclasses.replace(config, finetune_steps=args.reference_steps, val_samples=None)
    reference, ref_s = scores(test_as_val, ref_cfg)
    out: dict[str, Any] = {"policies": len(policies), "budget": args.budget, "reference_steps": args.reference_steps,
                           "reference": reference, "reference_s_per_candidate": ref_s,
                           "macs_ratio": [problem.space.macs(p) / base["macs"] for p in policies],
                           "base_acc": base["acc"], "signals": {}}
    print(f"{args.model} on {args.data}: base val top-1 {base['acc']:.4f}, {len(policies)} policies under "
          f"{args.budget} (MACs {min(out['macs_ratio']):.2f}-{max(out['macs_ratio']):.2f}x); reference: test top-1 "
          f"({len(problem.data.test)} images) after {args.reference_steps} KD steps, {ref_s:.1f} s/candidate", flush=True)
    print("\n| signal | Spearman with the reference | s per candidate |\n|---|---|---|")
    for steps in args.signal_steps:
        accs, secs = scores(problem.data, dataclasses.replace(config, finetune_steps=steps))
        with warnings.catch_warnings():  # constant scores (a tiny data set) give NaN, shown as such
            warnings.simplefilter("ignore")
            rho = float(spearmanr(accs, reference).statistic)
        out["signals"][str(steps)] = {"acc": accs, "spearman": rho, "s_per_candidate": secs}
        name = "proxy (BN recalibration / reconstruction)" if steps == 0 else f"proxy + {steps} KD steps"
        print(f"| {name}, {args.val_samples} val images | {rho:.3f} | {secs:.1f} |", flush=True)
    # Controls: how much of the ranking the MACs alone explain, over all candidates and over the
    # half nearest the budget (where a search decides between points of about the same cost).
    macs = out["macs_ratio"]
    near = sorted(range(len(policies)), key=lambda i: -macs[i])[: max(2, len(policies) // 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["controls"] = {
            "macs_spearman": float(spearmanr(macs, reference).statistic),
            "near_budget": {
                "n": len(near),
                "macs_spearman": float(spearmanr([macs[i] for i in near], [reference[i] for i in near]).statistic),
                "signals": {k: float(spearmanr([v["acc"][i] for i in near], [reference[i] for i in near]).statistic)
                            for k, v in out["signals"].items()},
            },
        }
    c = out["controls"]
    print(f"| control: MACs ratio alone | {c['macs_spearman']:.3f} | 0 |")
    shown = ", ".join(f"{'proxy' if k == '0' else f'+{k} KD steps'} {v:.3f}" for k, v in c["near_budget"]["signals"].items())
    print(f"\nthe {c['near_budget']['n']} candidates nearest the budget: MACs alone {c['near_budget']['macs_spearman']:.3f}, "
          f"{shown}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
