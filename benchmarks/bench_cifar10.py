"""Benchmark: every search strategy on CIFAR-10 ResNet-20 at half the MACs, after fine-tuning.

One process, one prebuilt ``Problem`` (the trained base from ``--checkpoint``, the image folder's
``train/`` carved into train / validation / calibration, its ``test/`` used only for the final
figures). Steps:

1. Base: the training record ``CHECKPOINT.json`` (written by ``autocompress train``: epochs,
   seconds, val / test top-1) and the base's ONNX Runtime fp32 latency at batch 1 and 64.
2. ``run_search`` at ``--budget macs=50%`` for each strategy x seed, the same number of evaluated
   candidates each; per strategy (mean +- sd over seeds): hypervolume, best feasible proxy top-1
   and its MACs ratio. ``--budget`` takes several budgets; a latency one (``macs=50% latency=58%``)
   is checked on the predicted latency of the per-layer table at ``--latency-batch`` (64).
3. The best feasible point of each run (highest search top-1, as ``--finetune-top 1`` picks it)
   is fine-tuned with the same KD schedule (``autocompress.report.finetune_point``); test top-1
   before / after, MACs and params ratio, and the fine-tuned model exported to ONNX (the engine's
   ``onnx_bytes``) and timed on ONNX Runtime at batch 1 and 64 interleaved with the base (1
   thread, medians; speed-up = base / compressed within the same rounds).
4. ``--fastnas-row``: one more ladder search at ``macs=73%`` with channels in multiples of 16,
   the budget and channel rule of the FastNAS anchor below, reported the same way.
5. A markdown table for ``benchmarks/README.md`` with the published anchors next to it, and the
   machine's load average at start and end. Everything printed also goes to ``--json``.

Published anchors (``ANCHORS``; relative figures are what compares across bases):

* FastNAS, NVIDIA Model Optimizer's pruning notebook, ResNet-20 / CIFAR-10: base 90.9%, subnet at
  29.6M of 40.6M MACs (73%), 60.4% before and 90.3% after a 120-epoch fine-tune (delta -0.6),
  channels in multiples of 16.
* AMC (He et al., ECCV 2018), ResNet-56 / CIFAR-10 at 50% FLOPs: 92.8% -> 91.9% after fine-tuning
  (delta -0.9); the fine-tune length is not part of the figure quoted here.
* Uniform L1-norm filter pruning (Li et al. 2017) as reproduced in "A comprehensive survey on model
  compression and acceleration" (Choudhary et al., Artif. Intell. Rev. 2020), Table 5, AlexNet /
  CIFAR-10: 30% filters pruned from all layers, 74.0% -> 73.92% at 56.78M of 92.21M FLOPs; 50%
  filters pruned, 74.0% -> 74.52% at 38.56M of 92.21M FLOPs (fine-tune epochs not stated).

Run (the full benchmark, hours on 2 cores; in the background with its log)::

    .venv/bin/python benchmarks/bench_cifar10.py --checkpoint ~/.cache/autocompress/bench/resnet20-cifar10-e15.pt \\
        --fastnas-row --json /tmp/bench-cifar10.json > /tmp/bench-cifar10.log 2>&1 &

A row can be a strategy with some settings changed (an ablation run side by side), written
``NAME:KEY=VALUE[,KEY=VALUE]``, e.g. ``--strategies ladder ladder:polish_fraction=0``.

Seeds run separately (one process each, e.g. to interleave other jobs) are merged into one table,
mean +- sd over all their seeds, without running anything::

    .venv/bin/python benchmarks/bench_cifar10.py --merge s0.json s1.json s2.json --json all.json

Smoke run (8 evaluations, 1 seed, 2 strategies, fine-tune on 5% of train)::

    .venv/bin/python benchmarks/bench_cifar10.py --checkpoint /tmp/cifar-partial.pt --quick --threads 1

A run directory that already holds the same search is resumed (only missing candidates are
evaluated) and an existing fine-tune of the same point and epochs is reused, so an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_STRATEGIES = ("ladder", "uniform", "random", "greedy", "nsga2", "tpe", "ddpg")
DEFAULT_DATA = "imagefolder:~/.cache/autocompress/data/cifar10"

#: Published figures set beside ours (sources in the module docstring). Accuracies in percent,
#: ``macs`` as the fraction of the base's MACs / FLOPs kept; None where the source gives none.
ANCHORS: tuple[dict[str, Any], ...] = (
    {"name": "FastNAS (Model Optimizer), ResNet-20, ×16 channels", "base": 90.9, "before": 60.4,
     "after": 90.3, "macs": 29.6 / 40.6, "ft_epochs": "120"},
    {"name": "AMC, ResNet-56", "base": 92.8, "before": None, "after": 91.9, "macs": 0.50,
     "ft_epochs": "not stated"},
    {"name": "uniform L1, 30% filters (survey Table 5, AlexNet)", "base": 74.0, "before": None,
     "after": 73.92, "macs": 56.78 / 92.21, "ft_epochs": "not stated"},
    {"name": "uniform L1, 50% filters (survey Table 5, AlexNet)", "base": 74.0, "before": None,
     "after": 74.52, "macs": 38.56 / 92.21, "ft_epochs": "not stated"},
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` shrinks every count for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="trained base weights (autocompress train --out)")
    p.add_argument("--data", default=DEFAULT_DATA, help="imagefolder:PATH with train/ and test/ (~ expanded)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--evals", type=int, default=None, help="evaluated candidates per search (100; quick 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="searcher seeds (0 1 2; quick 0)")
    p.add_argument("--strategies", nargs="+", default=None,
                   help=f"default: {' '.join(DEFAULT_STRATEGIES)} (quick: ladder uniform); a variant "
                        "with settings as NAME:KEY=VALUE[,KEY=VALUE], e.g. ladder:polish_fraction=0")
    p.add_argument("--budget", nargs="+", default=["macs=50%"],
                   help="hard budgets of every search (macs=50%%); a latency budget, e.g. latency=58%%, "
                        "turns on the predicted latency (per-layer table) at --latency-batch")
    p.add_argument("--latency-batch", type=int, default=64,
                   help="batch the predicted latency of a latency budget is for (64, the batch the "
                        "table's b64 speed-up is measured at)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-fraction", type=float, default=None,
                   help="share of the training split each fine-tune epoch passes over (1.0; quick 0.05)")
    p.add_argument("--finetune-eval-samples", type=int, default=None,
                   help="validation / test samples the fine-tune records score (all; quick 1000)")
    p.add_argument("--val-samples", type=int, default=1000, help="validation samples a candidate is scored on")
    p.add_argument("--threads", type=int, default=2, help="torch threads for search and fine-tune")
    p.add_argument("--latency-rounds", type=int, default=None, help="interleaved timing rounds (9; quick 3)")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="cpu: CPU time of the single inference thread (robust on a shared machine)")
    p.add_argument("--fastnas-row", action="store_true",
                   help="add a ladder search at macs=73%%, channels in multiples of --fastnas-round-to")
    p.add_argument("--fastnas-round-to", type=int, default=16, help="channel multiple of the FastNAS row (16)")
    p.add_argument("--out", default="/tmp/bench-cifar10", help="directory of the run directories")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 evals, 1 seed, 2 strategies")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: merge the --json files of runs made separately (e.g. one per seed) "
                        "into one table, mean +- sd over every seed they hold")
    args = p.parse_args(argv)
    quick = args.quick
    if args.evals is None:
        args.evals = 8 if quick else 100
    if args.seeds is None:
        args.seeds = [0] if quick else [0, 1, 2]
    if args.strategies is None:
        args.strategies = ["ladder", "uniform"] if quick else list(DEFAULT_STRATEGIES)
    if args.finetune_fraction is None:
        args.finetune_fraction = 0.05 if quick else 1.0
    if args.finetune_eval_samples is None and quick:
        args.finetune_eval_samples = 1000
    if args.latency_rounds is None:
        args.latency_rounds = 3 if quick else 9
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings with one line each, before anything is built or written."""
    from autocompress.errors import UserInputError, check_checkpoint_path

    if args.checkpoint is None:
        raise UserInputError("--checkpoint is missing; allowed: the weights written by `autocompress train "
                             "--out`, or --merge JSON... to merge earlier results")
    check_checkpoint_path(args.checkpoint)
    for name in ("evals", "finetune_epochs", "val_samples", "threads", "latency_rounds", "fastnas_round_to",
                 "latency_batch"):
        v = getattr(args, name)
        if v < 1:
            raise UserInputError(f"--{name.replace('_', '-')}={v}; allowed: an integer >= 1")
    if not 0.0 < args.finetune_fraction <= 1.0:
        raise UserInputError(f"--finetune-fraction={args.finetune_fraction}; allowed: 0 < f <= 1")
    if args.finetune_eval_samples is not None and args.finetune_eval_samples < 1:
        raise UserInputError(f"--finetune-eval-samples={args.finetune_eval_samples}; allowed: >= 1")
    for s in args.strategies:
        strategy_variant(s)  # a one-line error for an unknown strategy or setting
    from autocompress.metrics import parse_budget

    for b in args.budget:
        parse_budget(b)  # a one-line error naming the budget and what is allowed
    if any(s < 0 for s in args.seeds):
        raise UserInputError(f"--seeds {args.seeds}; allowed: integers >= 0")
    if args.data.startswith("imagefolder:"):
        folder = Path(args.data.split(":", 1)[1])
        if not folder.is_dir():
            raise UserInputError(f"--data {args.data!r}: {str(folder)!r} is not a directory")


def expand_data(data: str) -> str:
    """``imagefolder:~/x`` -> ``imagefolder:/home/me/x`` (the engine does not expand ``~``)."""
    if data.startswith("imagefolder:"):
        return "imagefolder:" + str(Path(data.split(":", 1)[1]).expanduser().resolve())
    return data


def training_record(checkpoint: str) -> dict[str, Any] | None:
    """``CHECKPOINT.json`` written next to the weights by ``autocompress train`` (None if absent)."""
    path = Path(checkpoint + ".json")
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def strategy_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE]`` as (strategy, checked settings): a row of the
    table can be one strategy with some of its settings changed (an ablation, side by side)."""
    from autocompress.errors import UserInputError
    from autocompress.search.base import list_searchers
    from autocompress.search.spec import check_strategy_settings

    name, _, rest = text.partition(":")
    known = list_searchers()
    if name not in known:
        raise UserInputError(f"--strategies {text!r} is unknown; allowed: {', '.join(known)}")
    settings: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserInputError(f"--strategies {text!r}: {item!r} is not KEY=VALUE")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return name, check_strategy_settings(name, settings)


def _spec(args: argparse.Namespace, **kw: Any) -> Any:
    from autocompress.search.spec import SearchSpec

    evaluator: dict[str, Any] = {"val_samples": args.val_samples}
    if uses_latency(args):  # the per-layer table, at the batch and clock the table is timed with
        evaluator.update(latency="predicted", latency_batch=args.latency_batch, latency_threads=1,
                         latency_clock=args.clock)
    base = dict(model=args.model, checkpoint=args.checkpoint, data=args.data,
                evaluator=evaluator, threads=args.threads)
    base.update(kw)
    return SearchSpec(**base)


def uses_latency(args: argparse.Namespace) -> bool:
    """Whether a budget is on latency (then every search of the run predicts it)."""
    from autocompress.metrics import budget_name

    return any(budget_name(b.split("=", 1)[0]) == "latency" for b in args.budget)


def build(args: argparse.Namespace, round_to: int | str = "auto") -> Any:
    """The one ``Problem`` every search of this space shares (data loaded, base scored once)."""
    from autocompress.search.runner import build_problem

    spec = _spec(args, round_to=round_to)
    return build_problem(spec, checkpoint=args.checkpoint, progress=False)


def _subset(ds: Any, n: int | float, seed: int) -> Any:
    """The first ``n`` samples (count, or fraction of the split) of a seeded permutation of ``ds``;
    a subset of the same in-memory image set keeps tensor batching and augmentation."""
    from torch.utils.data import Subset

    size = len(ds)
    k = max(1, min(size, int(round(n * size)) if isinstance(n, float) else int(n)))
    if k >= size:
        return ds
    pick = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:k].tolist()
    if isinstance(ds, Subset):
        return Subset(ds.dataset, [ds.indices[i] for i in sorted(pick)])
    return Subset(ds, sorted(pick))


def finetune_problem(problem: Any, args: argparse.Namespace) -> Any:
    """``problem`` with the fine-tune's training split (and scored splits) cut as asked.

    ``finetune_point`` passes over the whole training split each epoch and scores the whole
    validation and test splits; a smoke run cannot afford that on CIFAR-10 with 2 cores.
    """
    data = problem.data
    changes: dict[str, Any] = {}
    if args.finetune_fraction < 1.0:
        changes["train"] = _subset(data.train, float(args.finetune_fraction), 0)
    if args.finetune_eval_samples is not None:
        changes["val"] = _subset(data.val, int(args.finetune_eval_samples), 1)
        if data.test is not None:
            changes["test"] = _subset(data.test, int(args.finetune_eval_samples), 2)
    if not changes:
        return problem
    return dataclasses.replace(problem, data=dataclasses.replace(data, **changes))


class Timer:
    """ONNX Runtime fp32 runners of the base, built once; times others interleaved with it."""

    def __init__(self, problem: Any, args: argparse.Namespace) -> None:
        from autocompress.report.export import onnx_bytes

        self.x = problem.example_input[:1]
        self.rounds = args.latency_rounds
        self.clock = args.clock
        self.base_blob = onnx_bytes(problem.model.eval(), self.x)[0]
        self.base_runners = {b: self._runner(self.base_blob, b) for b in (1, 64)}

    def _runner(self, blob: bytes, batch: int) -> Any:
        from autocompress.evaluators.latency import make_ort_runner

        return make_ort_runner(blob, self.x, backend="ort", batch=batch, threads=1)

    def _time(self, run: Any) -> list[float]:
        from autocompress.evaluators.latency import time_runner

        return time_runner(run, warmup=1, repeats=5, clock=self.clock)

    def base_only(self) -> dict[str, float]:
        """Median ms of the base at batch 1 and 64."""
        from autocompress.evaluators.latency import torch_threads

        out = {}
        with torch_threads(1):
            for b, run in self.base_runners.items():
                times: list[float] = []
                for _ in range(self.rounds):
                    times += self._time(run)
                out[f"b{b}_ms"] = float(np.median(times))
        return out

    def versus(self, model: torch.nn.Module) -> dict[str, float]:
        """Export ``model`` to ONNX, check it against PyTorch, and time it round by round with the
        base: medians of each, and the speed-up within the same rounds."""
        from autocompress.evaluators.latency import torch_threads
        from autocompress.report.export import onnx_bytes

        model = model.eval()
        blob = onnx_bytes(model, self.x)[0]
        out: dict[str, float] = {"onnx_bytes": float(len(blob)), "base_onnx_bytes": float(len(self.base_blob))}
        with torch_threads(1):
            for b in (1, 64):
                run = self._runner(blob, b)
                got = run()[0]
                with torch.inference_mode():
                    ref = model(self.x.expand(b, *self.x.shape[1:]).contiguous()).numpy()
                out["onnx_max_abs_diff"] = max(out.get("onnx_max_abs_diff", 0.0),
                                               float(np.abs(got - ref).max()))
                t_base: list[float] = []
                t_small: list[float] = []
                for _ in range(self.rounds):
                    t_base += self._time(self.base_runners[b])
                    t_small += self._time(run)
                mb, ms = float(np.median(t_base)), float(np.median(t_small))
                out[f"b{b}_ms"], out[f"base_b{b}_ms"], out[f"b{b}_speedup"] = ms, mb, mb / ms
        return out


def _existing_finetune(run_dir: Path, point_id: str, epochs: int) -> dict[str, Any] | None:
    from autocompress.report.run import latest_finetune

    rec = latest_finetune(run_dir, point_id)
    return rec if rec is not None and rec.get("epochs") == epochs else None


def run_one(args: argparse.Namespace, problem: Any, ft_problem: Any, timer: Timer, strategy: str,
            seed: int, budget: Sequence[str], name: str) -> dict[str, Any]:
    """One search, then the fine-tune, export and timing of its best feasible point."""
    from autocompress.report import finetune_point, load_run
    from autocompress.report.finetune import FinetuneResult, load_finetuned
    from autocompress.search.runner import run_search

    strategy, settings = strategy_variant(strategy)
    out_dir = Path(args.out) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}-s{seed}"
    spec = _spec(args, strategy=strategy, strategy_settings=settings, seed=seed, trials=args.evals,
                 budgets=list(budget), round_to=problem.settings["round_to"], out=str(out_dir))
    t0 = time.perf_counter()
    result = run_search(spec, problem=problem)
    search_s = time.perf_counter() - t0
    base_macs = result.base_metrics["macs"]
    base_params = result.base_metrics["params"]
    row: dict[str, Any] = {
        "strategy": strategy, "settings": settings, "seed": seed, "budget": " ".join(budget), "run_dir": str(out_dir),
        "evaluated": result.n_evaluated, "feasible": result.n_feasible, "search_s": search_s,
        "hypervolume": result.hypervolume,
    }
    run = load_run(out_dir)
    ranked = run.by_proxy_rank()
    if not ranked:
        row["note"] = "no feasible point"
        print(f"  {name} seed {seed}: {result.summary()}; no feasible point", flush=True)
        return row
    point = ranked[0]
    row.update(point_id=point.id, proxy_acc=point.metrics["acc"],
               macs_ratio=point.metrics["macs"] / base_macs, params_ratio=point.metrics["params"] / base_params)
    t1 = time.perf_counter()
    rec = _existing_finetune(out_dir, point.id, args.finetune_epochs)
    if rec is None:
        ft = finetune_point(out_dir, point.id, epochs=args.finetune_epochs, seed=seed, problem=ft_problem)
        rec = {**ft.to_dict(), "policy": point.policy.to_dict()}
    else:
        ft = FinetuneResult.from_record(rec)
    row.update(finetune_s=time.perf_counter() - t1, val_before=ft.acc_before, val_after=ft.acc_after,
               test_before=ft.test_before, test_after=ft.test_after, teacher_test=ft.teacher_test_acc,
               teacher_val=ft.teacher_acc)
    small = load_finetuned(run, point, rec, problem=problem)
    row.update(timer.versus(small))
    shown = ft.test_after if ft.test_after is not None else ft.acc_after
    hv = "-" if row["hypervolume"] is None else f"{row['hypervolume']:.3f}"
    print(f"  {name} seed {seed}: {result.summary()}; HV {hv}; point {point.id} proxy "
          f"{100 * row['proxy_acc']:.2f}% at {row['macs_ratio']:.3f}x MACs; after FT {100 * shown:.2f}%; "
          f"ORT b64 {row['b64_speedup']:.2f}x ({search_s:.0f} s search, {row['finetune_s']:.0f} s FT)",
          flush=True)
    return row


def _ms(values: Sequence[float | None], scale: float = 1.0, fmt: str = ".2f") -> str:
    """``mean ± sd`` of the values that are numbers (sd only with 2 or more)."""
    vals = [scale * v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(vals), fmt.replace('+', ''))}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of each reported figure of one strategy."""
    keys = ("hypervolume", "proxy_acc", "test_before", "test_after", "val_before", "val_after",
            "macs_ratio", "params_ratio", "b1_ms", "b64_ms", "b1_speedup", "b64_speedup")
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), int | float) and math.isfinite(r[k])]
        out[k] = {"mean": statistics.fmean(vals) if vals else None,
                  "sd": statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None),
                  "n": len(vals)}
    return out


def table(groups: dict[str, list[dict[str, Any]]], base: dict[str, Any], ft_epochs: int,
          ft_note: str) -> str:
    """The markdown table: our rows (mean ± sd over seeds), then the published anchors."""
    has_test = any(r.get("test_after") is not None for rows in groups.values() for r in rows)
    acc_before, acc_after = ("test_before", "test_after") if has_test else ("val_before", "val_after")
    split = "test" if has_test else "val"
    base_acc = base.get("test_acc") if has_test else base.get("val_acc")
    head = (f"| strategy | HV | proxy top-1 | {split} top-1 before FT | after FT | Δ vs base | MACs | "
            "params | ORT ms b1 (speed-up) | ORT ms b64 (speed-up) | FT epochs |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    if base_acc is not None:
        lines.append(f"| base ({base.get('epochs') or '?'} epochs) | – | – | {100 * base_acc:.2f} | – | – | 1.00× | "
                     f"1.00× | {base['latency']['b1_ms']:.3f} | {base['latency']['b64_ms']:.2f} | – |")
    for name, rows in groups.items():
        n = len(rows)
        # Against the base scored on the same samples as the fine-tuned model (the fine-tune
        # record's teacher figure), so a cut --finetune-eval-samples compares like with like.
        teacher = "teacher_test" if has_test else "teacher_val"
        deltas = [100 * (r[acc_after] - r[teacher]) for r in rows
                  if isinstance(r.get(acc_after), int | float) and isinstance(r.get(teacher), int | float)]
        lines.append(
            f"| {name} ({n} seed{'s' if n > 1 else ''}) | {_ms([r.get('hypervolume') for r in rows], 1, '.3f')} "
            f"| {_ms([r.get('proxy_acc') for r in rows], 100)} | {_ms([r.get(acc_before) for r in rows], 100)} "
            f"| {_ms([r.get(acc_after) for r in rows], 100)} | {_ms(deltas, 1, '+.2f')} "
            f"| {_ms([r.get('macs_ratio') for r in rows], 1, '.3f')}× | {_ms([r.get('params_ratio') for r in rows], 1, '.3f')}× "
            f"| {_ms([r.get('b1_ms') for r in rows], 1, '.3f')} ({_ms([r.get('b1_speedup') for r in rows])}×) "
            f"| {_ms([r.get('b64_ms') for r in rows], 1, '.2f')} ({_ms([r.get('b64_speedup') for r in rows])}×) "
            f"| {ft_epochs}{ft_note} |")
    for a in ANCHORS:
        before = "–" if a["before"] is None else f"{a['before']:.1f}"
        lines.append(f"| *{a['name']}* (base {a['base']:.1f}) | – | – | {before} | {a['after']:.2f} | "
                     f"{a['after'] - a['base']:+.2f} | {a['macs']:.3f}× | – | – | – | {a['ft_epochs']} |")
    return "\n".join(lines)


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """One result from the ``--json`` files of separate runs of the same setting (e.g. one per seed).

    Rows are grouped by table row name; a (row, seed) present in several files is kept once (the
    last file wins), and the base, settings and anchors are the first file's. Files whose model,
    data, budget, candidates or fine-tune settings differ are refused: their rows do not average.
    """
    from autocompress.errors import UserInputError

    loaded = []
    for path in paths:
        try:
            loaded.append(json.loads(Path(path).expanduser().read_text()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserInputError(f"--merge {path!r}: not a readable result file ({exc})") from None
        if not isinstance(loaded[-1], dict) or not isinstance(loaded[-1].get("runs"), dict):
            raise UserInputError(f"--merge {path!r}: not a bench_cifar10.py --json result (no 'runs')")
    same = ("model", "data", "budget", "evals", "finetune_epochs", "finetune_fraction", "val_samples")
    first = loaded[0]
    def setting(res: dict[str, Any], key: str) -> Any:
        v = res.get("settings", {}).get(key)
        return " ".join(v) if key == "budget" and isinstance(v, list) else v  # one budget was a string

    for path, res in zip(paths, loaded, strict=True):
        diff = [k for k in same if setting(res, k) != setting(first, k)]
        if diff:
            raise UserInputError(f"--merge {path!r} differs from {paths[0]!r} in {', '.join(diff)}; "
                                 "allowed: results of the same setting")
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for res in loaded:
        for name, rows in res["runs"].items():
            for row in rows:
                groups.setdefault(name, {})[int(row["seed"])] = row
    runs = {name: [by_seed[s] for s in sorted(by_seed)] for name, by_seed in groups.items()}
    st = first["settings"]
    ft_note = f" (on {100 * st['finetune_fraction']:g}% of train)" if st["finetune_fraction"] < 1 else ""
    md = table(runs, first["base"], st["finetune_epochs"], ft_note)
    return {
        "settings": st, "base": first["base"], "runs": runs,
        "summary": {k: summarize(v) for k, v in runs.items()}, "anchors": first.get("anchors"),
        "table": md, "merged_from": [str(p) for p in paths],
        "load": [(r.get("load_start"), r.get("load_end")) for r in loaded],
        "elapsed_s": sum(r.get("elapsed_s") or 0.0 for r in loaded),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and with ``--json`` writes) every figure."""
    args = parse_args(argv)
    if args.merge:
        result = merge(args.merge)
        print(result["table"])
        print(f"\nmerged from {', '.join(result['merged_from'])}; load average (start, end) per file: "
              f"{result['load']}; {result['elapsed_s'] / 60:.1f} min in all")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        return result
    args.data = expand_data(args.data)
    if args.checkpoint is not None:
        args.checkpoint = str(Path(args.checkpoint).expanduser())
    check_args(args)
    torch.set_num_threads(args.threads)
    started = time.time()
    load_start = load_avg()
    print(f"load average at start: {load_start} ({os.cpu_count()} CPUs)", flush=True)

    # 1. Base
    rec = training_record(args.checkpoint) or {}
    problem = build(args)
    ft_problem = finetune_problem(problem, args)
    timer = Timer(problem, args)
    base: dict[str, Any] = {
        "checkpoint": args.checkpoint, "epochs": (rec.get("train") or {}).get("epochs"),
        "minutes": rec["seconds"] / 60 if isinstance(rec.get("seconds"), int | float) else None,
        "val_acc": rec.get("val_acc"), "test_acc": rec.get("test_acc"),
        "record": "found" if rec else "missing (no CHECKPOINT.json next to the weights)",
        "round_to": problem.settings["round_to"], "latency": timer.base_only(),
    }
    if base["test_acc"] is None:
        from autocompress.report.finetune import _accuracy, test_tensors

        test = test_tensors(problem)
        base["test_acc"] = _accuracy(problem.model.eval(), *test) if test is not None else None
    minutes = "?" if base["minutes"] is None else f"{base['minutes']:.1f}"
    test_s = "?" if base["test_acc"] is None else f"{100 * base['test_acc']:.2f}%"
    print(f"base: {args.model}, {base['epochs']} epochs, {minutes} min of training, test top-1 {test_s} "
          f"(training record {base['record']}); ORT fp32 1 thread b1 {base['latency']['b1_ms']:.3f} ms, "
          f"b64 {base['latency']['b64_ms']:.2f} ms; round_to {base['round_to']}", flush=True)

    # 2-3. Strategies x seeds at the budget, best feasible point fine-tuned and timed
    groups: dict[str, list[dict[str, Any]]] = {}
    for strategy in args.strategies:
        groups[strategy] = [run_one(args, problem, ft_problem, timer, strategy, seed, args.budget, strategy)
                            for seed in args.seeds]

    # 4. FastNAS row: ladder at 73% of the MACs, channels in multiples of 16 (as FastNAS)
    if args.fastnas_row:
        r = args.fastnas_round_to
        p_r = problem if problem.settings["round_to"] == r else build(args, round_to=r)
        groups[f"ladder @73%, ×{r} ch"] = [run_one(args, p_r, finetune_problem(p_r, args), timer, "ladder",
                                                   args.seeds[0], ["macs=73%"], f"ladder-macs73-r{r}")]

    # 5. Table
    ft_note = f" (on {100 * args.finetune_fraction:g}% of train)" if args.finetune_fraction < 1 else ""
    md = table(groups, base, args.finetune_epochs, ft_note)
    load_end = load_avg()
    elapsed = time.time() - started
    print()
    print(f"settings: {args.model} on {args.data}, budget {' '.join(args.budget)}, {args.evals} evaluated candidates "
          f"per search, seeds {args.seeds}, {args.val_samples} validation samples per candidate, "
          f"KD fine-tune {args.finetune_epochs} epoch(s){ft_note}, torch threads {args.threads}, "
          f"ORT fp32 1 thread, {args.latency_rounds} interleaved rounds, {args.clock} clock"
          + (f", fine-tune scores on {args.finetune_eval_samples} val/test samples"
             if args.finetune_eval_samples else ""))
    print(md)
    print(f"\nload average at start {load_start}, at end {load_end}; {elapsed / 60:.1f} min in all")
    result = {
        "settings": {k: v for k, v in vars(args).items()}, "base": base,
        "runs": groups, "summary": {k: summarize(v) for k, v in groups.items()},
        "anchors": list(ANCHORS), "table": md, "load_start": load_start, "load_end": load_end,
        "elapsed_s": elapsed,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    from autocompress.errors import UserInputError

    try:
        main()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
