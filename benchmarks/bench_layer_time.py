"""Where an exported point's time goes: ONNX Runtime time per layer group, next to its MACs.

Two points with the same MACs can run at different speeds: a MAC saved in a layer that ONNX
Runtime runs efficiently saves more time than one saved in a layer it runs poorly (few channels
at a large spatial size, a layout reorder around it). This script shows it per group of layers
(a ResNet's stem and stages by default) for the base model and any points of a run directory:

1. Each point's policy is read from its run (``RUN:ID``, IDs as ``autocompress show`` prints
   them); the base model is the run's model with the run's ``round_to``, ``importance`` and input
   shape, and each point is compressed from it with ``compress`` (the shapes are what is timed; the
   weights are the run's checkpoint when it has one, else the model's initialisation). Meant for
   pruning and low-rank points: the export timed is the float one, so quantized layers run
   their simulated quantization, not low-bit kernels.
2. Every model is exported with the engine's ONNX export and run on ONNX Runtime (CPU, 1
   thread, full graph optimisation, as ``export`` times it) with per-node profiling on. The
   models run interleaved, round by round; each node's time is its median over all runs.
3. Node times are summed per group (the node's module path cut at ``--depth`` components; the
   layout reorders ONNX Runtime adds, and the model's top-level ops, form their own groups), with the MACs counted on
   the compressed module (a forward hook on every Conv / Linear). Per group: the base's ms and
   MACs, and each point's ms and MACs as a fraction of the base's.

Run (ResNet-20 on CIFAR-10; the run directories of the 50-epoch base's section in
benchmarks/README.md)::

    .venv/bin/python benchmarks/bench_layer_time.py \\
        --points ~/.cache/autocompress/bench/e50/runs/ladder-s0:54 \\
                 ~/.cache/autocompress/bench/e50/runs/uniform-s0:ID --batch 64 --json /tmp/layer-time.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.compression import CompressionSpace, compress
from autocompress.deploy import ort_session
from autocompress.deploy.onnx_export import onnx_node_module
from autocompress.errors import UserInputError
from autocompress.models import create_model, load_checkpoint
from autocompress.report.export import onnx_bytes
from autocompress.report.run import load_run
from autocompress.rundir import read_spec_dict

#: The group of the layout reorders ONNX Runtime adds around its blocked (NCHWc) convolutions.
REORDER = "(layout reorders)"
#: The group of nodes of no module (the model's own top-level ops: flatten, concat, add).
TOP = "(top level)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", nargs="+", required=True, metavar="RUN:ID",
                   help="points to time, each a run directory and a point id; all from runs of one model")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (each model runs --runs times per round)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--depth", type=int, default=1,
                   help="module path components a group keeps (1: conv1, layer1, ...; 2: layer1.0, ...)")
    p.add_argument("--json", default=None, help="also write every figure to this file")
    args = p.parse_args(argv)
    for name in ("batch", "threads", "rounds", "runs", "depth"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)} is not allowed: it must be >= 1")
    return args


def split_point(text: str) -> tuple[Path, str]:
    """``RUN:ID`` -> (run directory, point id); a one-line error for anything else."""
    run, sep, pid = text.rpartition(":")
    if not sep or not run or not pid:
        raise UserInputError(f"point {text!r} is not RUN:ID (a run directory and a point id)")
    path = Path(os.path.expanduser(run))
    if not path.is_dir():
        raise UserInputError(f"point {text!r}: run directory {str(path)!r} does not exist")
    return path, pid


def _model_key(spec: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree for points of several runs to compress one base model."""
    return (spec["model"], spec.get("num_classes"), tuple(spec["input_shape"]),
            spec.get("round_to_used", spec["round_to"]))


def load_points(texts: Sequence[str]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The runs' shared spec and the (label, policy) of each point."""
    spec: dict[str, Any] | None = None
    points = []
    for text in texts:
        run_dir, pid = split_point(text)
        s = read_spec_dict(run_dir)
        if spec is not None and _model_key(s) != _model_key(spec):
            raise UserInputError(f"point {text!r} is from a run of another model, input or round_to than "
                                 f"{texts[0]!r}: {_model_key(s)} vs {_model_key(spec)}")
        spec = spec or s
        cand = {str(c.id): c for c in load_run(run_dir).trials}.get(pid)
        if cand is None:
            raise UserInputError(f"point {text!r}: run {str(run_dir)!r} has no candidate {pid!r}")
        points.append((f"{run_dir.name}:{pid}", cand.policy))
    assert spec is not None
    return spec, points


def base_model(spec: dict[str, Any]) -> tuple[nn.Module, CompressionSpace, torch.Tensor]:
    model = create_model(spec["model"], num_classes=int(spec.get("num_classes") or 10))
    ckpt = spec.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        model = load_checkpoint(model, ckpt)
    model.eval()
    x = torch.randn(1, *spec["input_shape"], generator=torch.Generator().manual_seed(0))
    space = CompressionSpace.from_model(model, x, knobs=spec.get("knobs") or ("prune",),
                                        max_prune=float(spec.get("max_prune", 0.8)),
                                        round_to=int(spec.get("round_to_used", spec["round_to"])),
                                        importance=spec.get("importance", "l1"))
    return model, space, x


def group_of(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth]) if module else TOP


#: Ops ONNX Runtime fuses into the convolution before them (a blocked convolution is then named
#: after the last one's output).
FUSED_AFTER_CONV = ("Relu", "BatchNormalization", "Add", "Sum", "Clip", "LeakyRelu", "Sigmoid")


def producers(blob: bytes) -> dict[str, Any]:
    """Tensor name -> the node of the exported graph that writes it."""
    import onnx

    return {out: n for n in onnx.load_from_string(blob).graph.node for out in n.output}


def node_group(node: str, depth: int, writers: dict[str, Any]) -> str:
    """The group of a profiled node.

    ONNX Runtime renames the nodes it rewrites: ``fused /fc1/Gemm``, and a blocked (NCHWc)
    convolution after the tensor its last fused op writes (``/relu/Relu_output_0_nchwc`` is the
    stem's ``conv1`` + ``bn1`` + ``relu``): that tensor is followed back through the fused ops to
    the convolution in the exported graph (through an ``Add``, its first input: the block's own
    branch). The reorders it adds have no path (``ReorderOutput_token_3``).
    """
    if node.startswith("Reorder"):
        return REORDER
    name = node.removeprefix("fused ")
    if name.endswith("_nchwc"):
        n = writers.get(name[: -len("_nchwc")])
        while n is not None and n.op_type in FUSED_AFTER_CONV and n.input:
            n = writers.get(n.input[0])
        if n is not None:
            name = n.name
    return group_of(onnx_node_module(name), depth)


def macs_by_group(model: nn.Module, x: torch.Tensor, depth: int) -> dict[str, float]:
    """MACs per sample of every Conv / Linear, summed per group (counted on the module itself)."""
    out: dict[str, float] = defaultdict(float)
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def conv(mod: nn.Conv2d, _i: Any, y: torch.Tensor, name: str = name) -> None:
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                out[group_of(name, depth)] += float(k * y[0].numel())
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            def lin(mod: nn.Linear, _i: Any, y: torch.Tensor, name: str = name) -> None:
                out[group_of(name, depth)] += float(mod.in_features * y[0].numel())
            hooks.append(m.register_forward_hook(lin))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return dict(out)


def node_medians(profile_path: str) -> tuple[dict[str, float], float]:
    """(median ms of each node over the profiled runs, median ms of a whole run)."""
    events = json.loads(Path(profile_path).read_text())
    nodes: dict[str, list[float]] = defaultdict(list)
    runs: list[float] = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000.0)
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            runs.append(e["dur"] / 1000.0)
    return {n: statistics.median(v) for n, v in nodes.items()}, statistics.median(runs)


def measure(models: list[tuple[str, nn.Module]], x: torch.Tensor, args: argparse.Namespace
            ) -> dict[str, dict[str, Any]]:
    import numpy as np

    feed = {"input": x.expand(args.batch, *x.shape[1:]).contiguous().numpy().astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i, (label, m) in enumerate(models):
            blob = onnx_bytes(m, x)[0]
            sessions.append((label, ort_session(blob, args.threads, profile_prefix=str(Path(tmp) / f"m{i}")),
                             producers(blob)))
        for _label, sess, _w in sessions:  # warm-up: a few runs before the rounds
            for _ in range(2):
                sess.run(None, feed)
        for _ in range(args.rounds):
            for _label, sess, _w in sessions:
                for _ in range(args.runs):
                    sess.run(None, feed)
        out = {}
        for label, sess, writers in sessions:
            per_node, run_ms = node_medians(sess.end_profiling())
            grouped: dict[str, float] = defaultdict(float)
            for node, ms in per_node.items():
                grouped[node_group(node, args.depth, writers)] += ms
            out[label] = {"run_ms": run_ms, "group_ms": dict(grouped)}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        spec, points = load_points(args.points)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    model, space, x = base_model(spec)
    models = [("base", model)] + [(label, compress(model, policy, space=space)) for label, policy in points]
    macs = {label: macs_by_group(m, x, args.depth) for label, m in models}
    timed = measure(models, x, args)
    groups = sorted({g for t in timed.values() for g in t["group_ms"]} | set(macs["base"]),
                    key=lambda g: (g in (REORDER, TOP), g))
    base = timed["base"]
    print(f"{spec['model']} {tuple(spec['input_shape'])}, round_to {spec.get('round_to_used', spec['round_to'])}, "
          f"ONNX Runtime batch {args.batch}, {args.threads} thread(s), median node times over "
          f"{args.rounds}x{args.runs} interleaved runs")
    for label, _m in models[1:]:
        t = timed[label]
        total_macs = sum(macs[label].values()) / sum(macs["base"].values())
        print(f"\n{label}: {t['run_ms']:.2f} ms vs base {base['run_ms']:.2f} ms "
              f"(speed-up {base['run_ms'] / t['run_ms']:.2f}x) at {total_macs:.3f}x MACs")
        print("| group | base MACs | base ms | base ms / MMAC | MACs | ms | time saved / MACs saved |")
        print("|---|---|---|---|---|---|---|")
        for g in groups:
            bm, pm = macs["base"].get(g, 0.0), macs[label].get(g, 0.0)
            bt, pt = base["group_ms"].get(g, 0.0), t["group_ms"].get(g, 0.0)
            per = f"{bt / (bm * args.batch / 1e6):.4f}" if bm else "–"
            mr = f"{pm / bm:.3f}x" if bm else "–"
            saved = f"{(bt - pt) / bt / (1 - pm / bm):.2f}" if bm and bt and pm < bm else "–"
            print(f"| {g} | {bm / 1e6:.2f}M | {bt:.2f} | {per} | {mr} | {pt:.2f} ({pt / bt if bt else 0:.2f}x) | {saved} |")
    result = {"args": vars(args), "model": spec["model"], "macs": macs, "timed": timed}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
