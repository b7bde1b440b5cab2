"""Cost and effect of least-squares reconstruction in ``compress`` (resnet20 on digits, 32x32).

For each of ``--policies`` random channel-pruning policies, times ``compress`` without
reconstruction, with the current reconstruction, and with the previous implementation (kept
below as ``_old_reconstruct_``, swapped in for the comparison), all in one run on one thread.
Reports medians, the median of per-policy ratios of the *extra* time reconstruction costs, and
top-1 on the validation split with/without reconstruction, also after BatchNorm recalibration.

    .venv/bin/python benchmarks/bench_reconstruct.py [--policies 10] [--old-policies 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.compression import apply, compress
from autocompress.compression.counting import eval_mode
from autocompress.evaluators import recalibrate_bn
from autocompress.problem import Problem


# --- the previous implementation (two full passes over all calibration batches per layer, full
# float64 patch matrices subsampled afterwards), verbatim, for the same-run comparison ---
def _old_capture(model: nn.Module, module: nn.Module, inputs: list[Any], take: str) -> list[Tensor]:
    got: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        got.append((args[0] if take == "in" else out).detach())

    h = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for x in inputs:
                model(x)
    finally:
        h.remove()
    return got


def _old_as_rows(m: nn.Module, t: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return t.reshape(-1, t.shape[-1])
    return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])


def _old_patches(m: nn.Conv2d, x: Tensor) -> Tensor:
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def _old_reconstruct_(
    original: nn.Module,
    pruned: nn.Module,
    out_removed: dict[str, list[int]],
    inputs: list[Any],
    max_rows: int = 8192,
) -> list[str]:
    targets = apply._reconstruction_targets(original, pruned)
    orig_mods = dict(original.named_modules())
    gen = torch.Generator().manual_seed(0)
    done = []
    for name in targets:
        pm, om = pruned.get_submodule(name), orig_mods[name]
        xs = _old_capture(pruned, pm, inputs, "in")
        ys = _old_capture(original, om, inputs, "out")
        X = torch.cat(
            [_old_patches(pm, x) if isinstance(pm, nn.Conv2d) else _old_as_rows(pm, x) for x in xs]
        ).double()
        Y = torch.cat([_old_as_rows(om, y) for y in ys]).double()
        if X.shape[0] > max_rows:
            idx = torch.randperm(X.shape[0], generator=gen)[:max_rows]
            X, Y = X[idx], Y[idx]
        if X.shape[0] < X.shape[1]:
            continue
        keep = sorted(set(range(om.weight.shape[0])) - set(out_removed.get(name, [])))
        Y = Y[:, keep]
        if om.bias is not None:
            Y = Y - om.bias.double()[keep]
        gram = X.T @ X
        lam = 1e-3 * gram.diagonal().mean().clamp(min=1e-12)
        W = torch.linalg.solve(gram + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y).T
        pm.weight.copy_(W.reshape(pm.weight.shape).to(pm.weight.dtype))
        done.append(name)
    return done


def _top1(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[float, float, Any]:
    """``(wall s, CPU s of this process, result)``; on one thread CPU s is less load-sensitive."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policies", type=int, default=10)
    parser.add_argument("--old-policies", type=int, default=10,
                        help="how many of the policies also run the previous implementation")
    parser.add_argument("--calib-batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)

    problem = Problem.build("resnet20", knobs=("prune",), progress=False)
    model, space, data = problem.model, problem.space, problem.data
    x_tr, _ = data.tensors("train")
    calib = [x_tr[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.calib_batches)]
    bn_batches = list(data.batches("calib", 64))
    x_val, y_val = data.tensors("val")
    base = space.macs(space.identity())
    print(f"resnet20 on digits {tuple(problem.input_shape)}: base top-1 {_top1(model, x_val, y_val):.4f}, "
          f"{len(calib)} calibration batches of {args.batch_size}, {len(y_val)} validation samples")

    new_impl = apply._reconstruct_
    rows = []
    compress(model, space.sample(10_000), space=space, calib=calib, reconstruct=True)  # warm-up
    for seed in range(args.policies):
        policy = space.sample(seed)
        kw = {"space": space, "calib": calib}
        t_plain, c_plain, plain = _timed(compress, model, policy, **kw)
        t_new, c_new, refit = _timed(compress, model, policy, reconstruct=True, **kw)
        t_old = c_old = old = None
        if seed < args.old_policies:
            apply._reconstruct_ = _old_reconstruct_
            try:
                t_old, c_old, old = _timed(compress, model, policy, reconstruct=True, **kw)
            finally:
                apply._reconstruct_ = new_impl
        acc = {"plain": _top1(plain, x_val, y_val), "new": _top1(refit, x_val, y_val)}
        if old is not None:
            acc["old"] = _top1(old, x_val, y_val)
        for key, m in (("plain", plain), ("new", refit), ("old", old)):
            if m is not None:
                recalibrate_bn(m, bn_batches)
                acc[key + "+bn"] = _top1(m, x_val, y_val)
        r = {"seed": seed, "macs": space.macs(policy) / base, "t_plain": t_plain, "t_new": t_new,
             "t_old": t_old, "c_plain": c_plain, "c_new": c_new, "c_old": c_old, **acc}
        rows.append(r)
        old_txt = f"old {t_old:6.2f}s acc {acc['old']:.4f}/{acc['old+bn']:.4f}" if old else ""
        print(f"policy {seed}: MACs {r['macs']:.1%}  plain {t_plain:5.2f}s acc "
              f"{acc['plain']:.4f}/{acc['plain+bn']:.4f}  new {t_new:5.2f}s acc "
              f"{acc['new']:.4f}/{acc['new+bn']:.4f}  {old_txt}", flush=True)

    def med(key: str, rs: list[dict[str, Any]] = rows) -> float:
        return statistics.median(r[key] for r in rs)

    with_old = [r for r in rows if r["t_old"] is not None]
    print("\nmedians over", len(rows), "policies (accuracy: no BN recal / after BN recal)")
    print(f"  compress, no reconstruction      {med('t_plain'):6.3f} s   top-1 "
          f"{med('plain'):.4f} / {med('plain+bn'):.4f}")
    print(f"  compress, reconstruction (new)   {med('t_new'):6.3f} s   top-1 "
          f"{med('new'):.4f} / {med('new+bn'):.4f}")
    print(f"  extra time of reconstruction (new), median of per-policy differences: wall "
          f"{statistics.median(r['t_new'] - r['t_plain'] for r in rows):.3f} s, CPU "
          f"{statistics.median(r['c_new'] - r['c_plain'] for r in rows):.3f} s")
    if with_old:
        extra_old = [r["t_old"] - r["t_plain"] for r in with_old]
        extra_new = [r["t_new"] - r["t_plain"] for r in with_old]
        print(f"  on the {len(with_old)} policies also run with the previous implementation:")
        print(f"  compress, reconstruction (old)   {med('t_old', with_old):6.3f} s   top-1 "
              f"{med('old', with_old):.4f} / {med('old+bn', with_old):.4f}")
        cpu_old = [r["c_old"] - r["c_plain"] for r in with_old]
        cpu_new = [r["c_new"] - r["c_plain"] for r in with_old]
        for what, o_s, n_s in (("wall", extra_old, extra_new), ("CPU", cpu_old, cpu_new)):
            ratio = statistics.median(o / max(n, 1e-9) for o, n in zip(o_s, n_s, strict=True))
            print(f"  extra {what} time old / new: {statistics.median(o_s):.3f} s / "
                  f"{statistics.median(n_s):.3f} s; median per-policy ratio {ratio:.1f}x")
        whole = statistics.median(r["t_old"] / r["t_new"] for r in with_old)
        print(f"  whole compress call (wall), median per-policy ratio old / new: {whole:.1f}x")
        print(f"  top-1 new - old, median per policy: "
              f"{statistics.median(r['new'] - r['old'] for r in with_old):+.4f} (no recal), "
              f"{statistics.median(r['new+bn'] - r['old+bn'] for r in with_old):+.4f} (BN recal)")


if __name__ == "__main__":
    main()
