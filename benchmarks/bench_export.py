"""Exported models: file size and ONNX Runtime latency of the original, a pruned and an int8 point.

By default it builds the points itself: resnet20 trained on digits (cached after the first run), a
pruned point (uniform channel pruning, ``--prune``) and the same pruning with 8-bit weights and
activations; both are written as a run directory in the search engine's format and exported with
``export_point`` (ONNX fp32, and the ORT static int8 model for the 8-bit point). With ``--run RUN
--pruned K --int8 K`` it exports points of an existing search instead.

Both points are first fine-tuned for ``--finetune-epochs`` epochs with distillation from the
original (``finetune_point``), as a user would before deploying, and their fine-tuned models are
exported. Every file is then timed in this one process by ONNX Runtime (CPU, ``--threads`` intra-op threads)
at each batch size, interleaving the models repeat by repeat so that machine noise hits them
alike; ratios are against the original model's fp32 ONNX file.

Run: .venv/bin/python benchmarks/bench_export.py [--model resnet20] [--prune 0.5] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_run(root: Path, model: str, prune: float, seed: int) -> tuple[Path, str, str]:
    """A run directory holding two points: ``1`` pruned (float), ``2`` pruned + 8-bit."""
    from autocompress.search import SearchSpec, pareto_report
    from autocompress.search.runner import build_problem
    from autocompress.search.storage import write_spec

    spec = SearchSpec.from_dict({
        "model": model, "data": "digits", "seed": seed, "knobs": ["prune", "w_bits", "a_bits"],
        "strategy": "random", "trials": 2, "budgets": ["macs=60%"], "out": str(root),
    })
    problem = build_problem(spec, progress=True)
    base = problem.base.metrics
    records = []
    for pid, knobs in (("1", {"prune": prune}), ("2", {"prune": prune, "w_bits": 8, "a_bits": 8})):
        policy = problem.space.uniform(**knobs)
        res = problem.evaluator.evaluate(policy)
        records.append({"id": int(pid), "policy": policy.to_dict(), "metrics": res.metrics,
                        "fidelity": "full", "status": "ok", "feasible": True, "final": True})
    root.mkdir(parents=True, exist_ok=True)
    write_spec(root, spec, {"num_classes": problem.num_classes,
                            "input_shape": list(problem.input_shape)})
    (root / "base.json").write_text(json.dumps({
        "metrics": base, "checkpoint": str(problem.checkpoint_path) if problem.checkpoint_path else None}))
    (root / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = pareto_report(records, [(o.name, o.direction) for o in spec.objectives],
                           base_metrics=base, extra={"base": base})
    report["points"] = [{k: r[k] for k in ("id", "policy", "metrics")} for r in records]
    (root / "pareto.json").write_text(json.dumps(report))
    return root, "1", "2"


def time_files(files: dict[str, bytes], example: torch.Tensor, batch: int, threads: int,
               repeats: int) -> dict[str, float]:
    """Median ms per call of each ONNX file, repeats interleaved across the files."""
    from autocompress.evaluators.latency import ort_session

    x = example[:1].expand(batch, *example.shape[1:]).contiguous().numpy().astype(np.float32)
    runs = {}
    for name, blob in files.items():
        sess = ort_session(blob, threads)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(5):
            sess.run(None, feed)
        runs[name] = (sess, feed)
    times: dict[str, list[float]] = {n: [] for n in files}
    for _ in range(repeats):
        for name, (sess, feed) in runs.items():
            inner = 1 if batch > 8 else 10
            t0 = time.perf_counter()
            for _ in range(inner):
                sess.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1e3 / inner)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--prune", type=float, default=0.5, help="uniform prune ratio of the points")
    parser.add_argument("--run", default=None, help="an existing run directory (else one is made)")
    parser.add_argument("--pruned", default=None, help="point id of a float pruned point (with --run)")
    parser.add_argument("--int8", default=None, help="point id of an 8-bit point (with --run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=3,
                        help="KD fine-tune both points before export (0: export them as scored)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from autocompress.report import load_run
    from autocompress.report._rebuild import rebuild_problem
    from autocompress.report.export import export_point, onnx_bytes
    from autocompress.report.finetune import finetune_point

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    if args.run:
        run_dir, pruned_id, int8_id = Path(args.run), args.pruned, args.int8
        if pruned_id is None or int8_id is None:
            parser.error("--run needs --pruned and --int8 point ids")
    else:
        run_dir, pruned_id, int8_id = make_run(tmp / "run", args.model, args.prune, args.seed)
    run = load_run(run_dir)
    ft = args.finetune_epochs > 0
    for pid in (pruned_id, int8_id) if ft else ():
        res = finetune_point(run_dir, pid, epochs=args.finetune_epochs, seed=args.seed)
        print(f"fine-tuned point {pid}: top-1 {100 * res.acc_before:.2f}% -> {100 * res.acc_after:.2f}%")
    pruned = export_point(run_dir, pruned_id, "onnx", tmp / "pruned.onnx", force=True, repeats=5,
                          finetuned=ft)
    quant = export_point(run_dir, int8_id, "onnx", tmp / "q.onnx", int8=True, force=True,
                         repeats=5, finetuned=ft)
    problem = rebuild_problem(run)
    assert quant.int8_path is not None
    files = {
        "original fp32": onnx_bytes(problem.model, problem.example_input)[0],
        f"pruned fp32 (point {pruned_id})": pruned.path.read_bytes(),
        f"pruned int8 (point {int8_id})": quant.int8_path.read_bytes(),
    }
    accs = {
        "original fp32": run.base_metrics.get("acc", float("nan")),
        f"pruned fp32 (point {pruned_id})": pruned.acc,
        f"pruned int8 (point {int8_id})": quant.int8_acc or float("nan"),
    }
    macs = {
        "original fp32": run.base_metrics.get("macs", float("nan")),
        f"pruned fp32 (point {pruned_id})": run.point(pruned_id).metrics.get("macs", float("nan")),
        f"pruned int8 (point {int8_id})": run.point(int8_id).metrics.get("macs", float("nan")),
    }
    lat = {b: time_files(files, problem.example_input, b, args.threads, args.repeats)
           for b in args.batches}
    orig = "original fp32"
    print(f"{run.spec.get('model')} on {run.spec.get('data')}; ONNX Runtime CPU, {args.threads} "
          f"thread(s), median of {args.repeats} interleaved repeats")
    head = f"{'model':28s} {'top-1':>7s} {'MACs':>8s} {'file KB':>8s} {'size x':>7s}"
    for b in args.batches:
        head += f" {f'ms@b{b}':>9s} {'speedup':>8s}"
    print(head)
    for name, blob in files.items():
        row = (f"{name:28s} {100 * accs[name]:6.2f}% {macs[name] / 1e6:7.2f}M "
               f"{len(blob) / 1e3:8.1f} {len(files[orig]) / len(blob):6.2f}x")
        for b in args.batches:
            row += f" {lat[b][name]:9.3f} {lat[b][orig] / lat[b][name]:7.2f}x"
        print(row)
    print(f"ONNX vs PyTorch max |diff|: pruned {pruned.max_abs_diff:.1e}, 8-bit (rounding as "
          f"clipping) {quant.max_abs_diff:.1e}; int8 top-1 agreement with the PyTorch 8-bit model "
          f"{100 * (quant.int8_agreement or 0):.1f}%")


if __name__ == "__main__":
    main()
