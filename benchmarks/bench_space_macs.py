"""How many ``CompressionSpace.macs(policy)`` predictions per second on resnet56 (target >= 10,000).

Cycles through a pool of distinct random policies (so the space's one-policy memo never hits),
then checks a few predictions against MACs counted on really compressed models.

    .venv/bin/python benchmarks/bench_space_macs.py [--model resnet56] [--calls 20000] [--pool 1000]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from autocompress.compression import CompressionPolicy, CompressionSpace, compress, count_macs
from autocompress.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--check", type=int, default=3, help="policies compressed and counted")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = create_model(args.model).eval()
    x = torch.randn(1, *model.input_shape)
    t0 = time.perf_counter()
    space = CompressionSpace.from_model(model, x)
    build_s = time.perf_counter() - t0
    pool = [space.sample(seed) for seed in range(args.pool)]
    # Fresh policy objects for every call: a policy memoises its compact vector form, so reusing
    # objects would hide that conversion; each call here pays it, as a search loop does.
    fresh = [CompressionPolicy(dict(pool[i % len(pool)].layers)) for i in range(args.calls)]

    for p in pool[:50]:  # warm-up
        space.macs(p)
    t0, c0 = time.perf_counter(), time.process_time()
    for p in fresh:
        space.macs(p)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate, cpu_rate = args.calls / wall, args.calls / cpu

    again = [CompressionPolicy(dict(p.layers)) for p in fresh[: args.calls // 4]]
    t0 = time.perf_counter()
    for p in again:
        space.costs(p)
    costs_rate = len(again) / (time.perf_counter() - t0)

    worst = 0.0
    for p in pool[: args.check]:
        counted = count_macs(compress(model, p, space=space), x)
        worst = max(worst, abs(space.macs(p) - counted) / counted)

    print(
        f"model                 {args.model} ({len(space.decision_points)} decision points, "
        f"{sum(g.prunable for g in space.groups)} prunable groups)"
    )
    print(f"space build           {build_s:.2f} s")
    print(
        f"space.macs(policy)    {rate:,.0f} calls/s wall ({1e6 / rate:.1f} us/call; {cpu_rate:,.0f}/s by "
        f"process CPU time), {args.calls} fresh policy objects over {len(pool)} distinct policies"
    )
    print(f"load average          {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    print(
        f"space.costs(policy)   {costs_rate:,.0f} calls/s  (macs+params+size_bytes+bops at once)"
    )
    print(
        f"prediction vs counted worst relative error over {args.check} compressed policies: {worst:.2e}"
    )
    print("target                >= 10,000 calls/s (wall):", "PASS" if rate >= 10_000 else "FAIL")


if __name__ == "__main__":
    main()
