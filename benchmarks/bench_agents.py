"""DDPG (AMC settings) vs uniform vs random on resnet20/digits at 50% MACs; budget-conditioned DDPG.

Part 1 (AMC's comparison): the same number of evaluated policies for each strategy, channel
pruning only, a hard 50% MACs budget held by the environment's clipping, the BN-recalibrated
proxy accuracy (no fine-tune) as the reward. The search scores at ``--fidelity`` (default
``low``: 128 validation samples); the five best policies of each strategy are then re-scored at
full fidelity (the whole validation split) and the best of those is reported, so a lucky
low-fidelity draw does not decide the comparison. Uniform (one ratio everywhere, bisected to the
budget) has a single candidate and so uses one evaluation.

Part 2 (beyond AMC): one budget-conditioned DDPG trained with a MACs target drawn per episode
from ``--bc-range``, against one DDPG per target (``--targets``), each with ``--per-budget``
episodes. For each target it reports the per-budget DDPG's best, the conditioned agent's
deterministic proposal for that target (no retraining, one evaluation), and the best policy
its single training run found within that target (its "front").

Run: .venv/bin/python benchmarks/bench_agents.py [--episodes 300] [--warmup 100] [--seed 0]
     [--skip-bc] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def build_problem(seed: int) -> Any:
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.problem import Problem

    return Problem.build("resnet20", data="digits", seed=seed, knobs=("prune",),
                         evaluator=EvaluatorConfig(latency="none"), progress=False)


def rescore(problem: Any, records: list[Any], k: int = 5) -> dict[str, Any]:
    """Best full-fidelity accuracy among the ``k`` best records (by search reward)."""
    top = sorted(records, key=lambda r: r.reward, reverse=True)[:k]
    best = None
    for r in top:
        res = problem.evaluator.evaluate(r.policy, fidelity="full")
        acc = res.metrics["acc"] if res.ok else 0.0
        if best is None or acc > best["acc"]:
            best = {"acc": acc, "search_reward": r.reward, "macs": res.metrics.get("macs"),
                    "policy": {n: round(a.prune, 4) for n, a in r.policy.layers.items()}}
    return best or {}


def run_strategy(problem: Any, name: str, episodes: int, seed: int, fidelity: str, **kw: Any) -> dict[str, Any]:
    from autocompress.envs import Budget, CompressionEnv
    from autocompress.policies import create_agent

    env = CompressionEnv(problem, budgets={"macs": Budget(0.5)}, fidelity=fidelity)
    agent = create_agent(name, env, seed=seed, **kw)
    t = time.perf_counter()
    agent.learn(episodes)
    seconds = time.perf_counter() - t
    base = env.base_costs["macs"]
    assert all(env.cost("macs", r.policy) <= 0.5 * base for r in agent.history)
    best = rescore(problem, agent.history)
    rewards = [r.reward for r in agent.history]
    return {
        "strategy": name, "evaluations": env.n_evaluations, "seconds": round(seconds, 1),
        "best_search_acc": max(rewards), "best_full_acc": best.get("acc"),
        "mean_last_50": sum(rewards[-50:]) / len(rewards[-50:]),
        "best_macs_fraction": (best.get("macs") or 0) / base, "best_policy": best.get("policy"),
    }


def run_conditioned(problem: Any, args: argparse.Namespace) -> dict[str, Any]:
    from autocompress.envs import Budget, CompressionEnv
    from autocompress.policies import create_agent

    out: dict[str, Any] = {"targets": args.targets, "per_budget_episodes": args.per_budget,
                           "bc_episodes": args.bc_episodes, "bc_range": args.bc_range, "rows": []}
    env = CompressionEnv(problem, budgets={}, budget_range=tuple(args.bc_range), fidelity=args.fidelity)
    bc = create_agent("ddpg", env, seed=args.seed, warmup_episodes=args.bc_warmup)
    t = time.perf_counter()
    bc.learn(args.bc_episodes)
    out["bc_seconds"] = round(time.perf_counter() - t, 1)
    base = env.base_costs["macs"]
    for target in args.targets:
        penv = CompressionEnv(problem, budgets={"macs": Budget(target)}, fidelity=args.fidelity)
        per = create_agent("ddpg", penv, seed=args.seed, warmup_episodes=args.per_budget_warmup)
        per.learn(args.per_budget)
        per_best = rescore(problem, per.history)
        proposal = bc.propose(target)
        res = problem.evaluator.evaluate(proposal, fidelity="full")
        within = [r for r in bc.history if env.cost("macs", r.policy) <= target * base]
        front = rescore(problem, within) if within else {}
        out["rows"].append({
            "target": target,
            "per_budget_ddpg_best": per_best.get("acc"),
            "bc_proposal": res.metrics["acc"] if res.ok else 0.0,
            "bc_proposal_macs_fraction": env.cost("macs", proposal) / base,
            "bc_front_best": front.get("acc"),
            "bc_front_candidates": len(within),
        })
    out["evaluations"] = {"bc": args.bc_episodes + len(args.targets),
                          "per_budget_total": args.per_budget * len(args.targets)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=300, help="evaluated policies per strategy")
    ap.add_argument("--warmup", type=int, default=100, help="DDPG random warm-up episodes (AMC: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fidelity", default="low", choices=("low", "full"))
    ap.add_argument("--skip-bc", action="store_true", help="skip part 2")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--per-budget", type=int, default=100)
    ap.add_argument("--per-budget-warmup", type=int, default=30)
    ap.add_argument("--bc-episodes", type=int, default=150)
    ap.add_argument("--bc-warmup", type=int, default=40)
    ap.add_argument("--bc-range", type=float, nargs=2, default=[0.25, 0.75])
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    problem = build_problem(args.seed)
    print(f"resnet20/digits: base acc {problem.base.metrics['acc']:.4f}, "
          f"{len(problem.space.decision_points)} prune points, built in {time.perf_counter() - t0:.0f}s")
    results: dict[str, Any] = {"settings": vars(args), "base_acc": problem.base.metrics["acc"], "part1": []}
    for name, kw in (("uniform", {}), ("random", {}), ("ddpg", {"warmup_episodes": args.warmup})):
        row = run_strategy(problem, name, args.episodes, args.seed, args.fidelity, **kw)
        results["part1"].append(row)
        print(f"{name:8s} evals {row['evaluations']:4d}  best acc (full) {row['best_full_acc']:.4f}  "
              f"best search acc {row['best_search_acc']:.4f}  MACs {row['best_macs_fraction']:.3f}  "
              f"{row['seconds']:.0f}s")
    by = {r["strategy"]: r for r in results["part1"]}
    gap = by["ddpg"]["best_full_acc"] - by["uniform"]["best_full_acc"]
    results["ddpg_minus_uniform"] = gap
    results["ddpg_minus_random"] = by["ddpg"]["best_full_acc"] - by["random"]["best_full_acc"]
    print(f"DDPG - uniform: {100 * gap:+.2f} points; DDPG - random: {100 * results['ddpg_minus_random']:+.2f} points")

    if not args.skip_bc:
        bc = run_conditioned(problem, args)
        results["part2"] = bc
        print(f"budget-conditioned DDPG ({args.bc_episodes} episodes, range {args.bc_range}) vs "
              f"one DDPG per target ({args.per_budget} episodes each):")
        for row in bc["rows"]:
            print(f"  target {row['target']:.2f}: per-budget best {row['per_budget_ddpg_best']:.4f}  "
                  f"BC proposal {row['bc_proposal']:.4f} (MACs {row['bc_proposal_macs_fraction']:.3f})  "
                  f"BC front best {row['bc_front_best'] if row['bc_front_best'] is not None else float('nan'):.4f} "
                  f"({row['bc_front_candidates']} candidates)")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total {results['seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
