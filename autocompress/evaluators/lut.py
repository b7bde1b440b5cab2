"""Predicted latency: a NetAdapt-style per-layer lookup table, profiled once and cached on disk.

Every compute layer (conv / linear, with the BatchNorm and activation module that follow it) of
the base model is rebuilt as a standalone module at its input shape and timed on a grid of input
and output widths (keep fractions set by the decision points that prune them) and, for layers the
policy may factorise, on a grid of ranks for its two factors. A recurrent module (``nn.LSTM`` /
``nn.GRU`` / ``nn.RNN``) is one entry over its steps, on a grid of input widths and hidden sizes
and, when factorised (its steps then run unrolled, not as one fused node), on a grid of rank
fractions at the extreme widths. A prediction interpolates each
layer's entry at the widths a policy gives it, sums the entries and adds a constant measured once:
the whole model's latency minus the sum of its layers' entries (what the table does not see:
call overhead, adds, pooling, reshapes).

Which decision point changes which layer's widths is found by compressing the base model with only
that point pruned, at each ratio of the grid (probing), so the table relies on nothing but the
public ``compress`` contract: widths are exact at the grid ratios (``round_to`` included) and
interpolated linearly in between. The constant (and a scale) are fitted robustly on a few random
compressed models measured whole, which absorbs what standalone layers see differently from the
same layers inside the graph.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.errors import UserInputError
from autocompress.evaluators.config import GPU_LATENCY_BACKENDS
from autocompress.evaluators.latency import (
    check_backend,
    check_clock,
    make_ort_runner,
    make_runner,
    measure_latency,
    time_backend,
    torch_threads,
)

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace

_CALIBRATION_SEED = 1_000_003  # far from the seeds searches and benchmarks draw policies with
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
         nn.LeakyReLU, nn.ELU, nn.Mish)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Recurrent modules timed as one entry each (exact types: what ``compression.rnn`` handles).
_RNN_MODES: dict[type[nn.Module], str] = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
_RNN_CLASSES: dict[str, type[nn.RNNBase]] = {v: k for k, v in _RNN_MODES.items()}  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# machine / model identity


def machine_id() -> dict[str, Any]:
    """What a lookup table's timings depend on besides the model: CPU, OS, library versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime

    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "ort": onnxruntime.__version__}


def gpu_name() -> str:
    """Name of the current CUDA device (what a ``torch-cuda`` table's timings depend on)."""
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 of the class and every ``state_dict`` name, dtype and shape (not the values).

    Latency depends on shapes, not on weights: a retrained model of the same architecture reuses
    its lookup table.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
    return h.hexdigest()


def space_signature(space: CompressionSpace) -> str:
    """sha256 of the decision points and their knobs (names, ranges, choices)."""
    items = []
    for p in space.decision_points:
        knobs = {}
        for kname, knob in sorted(p.knobs.items()):
            knobs[kname] = [repr(getattr(knob, a, None)) for a in ("low", "high", "choices")]
        items.append([p.name, str(p.kind), knobs])
    items.append(repr(getattr(space, "round_to", None)))
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# layer discovery


@dataclass
class _Layer:
    """A compute layer of the base model and how a policy changes it."""

    name: str
    spec: dict[str, Any]                  # standalone-module description at full width
    # point -> [prune grid, channels removed at each grid value] (exact, probed)
    in_sources: dict[str, list[list[float]]] = field(default_factory=dict)
    out_sources: dict[str, list[list[float]]] = field(default_factory=dict)
    rank_point: str | None = None
    in_grid: list[float] = field(default_factory=list)    # keep fractions
    out_grid: list[float] = field(default_factory=list)
    table: list[list[float]] = field(default_factory=list)     # ms, [in][out]
    r_grid: list[int] = field(default_factory=list)       # absolute ranks of the factors
    first: list[list[float]] = field(default_factory=list)     # ms, [in][r]
    second: list[list[float]] = field(default_factory=list)    # ms, [r][out]
    # recurrent layers factorised (``rank`` < 1): the whole module at rank fractions ``f_grid``,
    # at the extreme input / hidden keep fractions ``lr_in`` / ``lr_out``
    f_grid: list[float] = field(default_factory=list)
    rank_knob: str = "rank"  # or ``proj_rank`` (shared projections, ``compression.projection``)
    lr_in: list[float] = field(default_factory=list)
    lr_out: list[float] = field(default_factory=list)
    lowrank: list[list[list[float]]] = field(default_factory=list)  # ms, [in][out][f]

    @property
    def depthwise(self) -> bool:
        s = self.spec
        return s["kind"] == "conv" and s["groups"] > 1 and s["groups"] == s["cin"] == s["cout"]


def _describe_act(m: nn.Module) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if isinstance(m, nn.LeakyReLU):
        kw["negative_slope"] = m.negative_slope
    if isinstance(m, nn.ELU):
        kw["alpha"] = m.alpha
    if isinstance(m, nn.GELU):
        kw["approximate"] = m.approximate
    return {"type": type(m).__name__, "kw": kw}


def discover_layers(model: nn.Module, example_input: Tensor) -> list[_Layer]:
    """Compute layers in execution order, each with its input shape and the BN/activation after it.

    A BN (then an activation) module is attached to a layer when, in the traced forward pass, it
    consumes exactly the tensor that layer produced.
    """
    events: list[tuple[str, nn.Module, Any, Any]] = []
    keep: list[Any] = []  # hold tensors so their ids stay unique during the pass
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if args else None
        keep.extend([x, out])
        events.append((names[mod], mod, x, out))

    for m in model.modules():
        if isinstance(m, _CONV + (nn.Linear,) + _BNS + _ACTS) or type(m) in _RNN_MODES:
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)

    layers: list[_Layer] = []
    seen: set[str] = set()
    for i, (name, mod, x, out) in enumerate(events):
        if type(mod) in _RNN_MODES:
            if name not in seen and isinstance(x, Tensor):  # not a packed sequence
                seen.add(name)
                layers.append(_Layer(name=name, spec=_rnn_spec(mod, x)))
            continue
        if not isinstance(mod, _CONV + (nn.Linear,)) or name in seen or not isinstance(x, Tensor):
            continue
        seen.add(name)
        if isinstance(mod, nn.Linear):
            spec: dict[str, Any] = {"kind": "linear", "cin": mod.in_features, "cout": mod.out_features,
                                    "bias": mod.bias is not None, "shape": list(x.shape[1:-1])}
        else:
            if mod.transposed or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                padding: Any = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
            else:
                padding = list(mod.padding)
            spec = {"kind": "conv", "dims": len(mod.kernel_size), "cin": mod.in_channels,
                    "cout": mod.out_channels, "kernel": list(mod.kernel_size),
                    "stride": list(mod.stride), "padding": padding, "dilation": list(mod.dilation),
                    "groups": mod.groups, "bias": mod.bias is not None, "shape": list(x.shape[2:]),
                    "transposed": bool(mod.transposed)}
        spec["bn"] = False
        spec["act"] = None
        cur = out
        for _, nxt, nx, nout in events[i + 1 : i + 3]:
            if nx is not cur:
                break
            if isinstance(nxt, _BNS) and not spec["bn"] and spec["act"] is None:
                spec["bn"] = True
            elif isinstance(nxt, _ACTS) and spec["act"] is None:
                spec["act"] = _describe_act(nxt)
            else:
                break
            cur = nout
        layers.append(_Layer(name=name, spec=spec))
    return layers


def _rnn_spec(mod: nn.Module, x: Tensor) -> dict[str, Any]:
    """A recurrent module as a table entry: the whole module (all its layers) over its steps.

    Its widths are the input features (``cin``) and hidden units (``cout``); the standalone module
    reads a batch-first ``(1, steps, cin)`` sequence from a zero state, as the model's module does
    unless it is given one.
    """
    steps = x.shape[0] if x.dim() == 2 else x.shape[1 if mod.batch_first else 0]
    return {"kind": "rnn", "mode": _RNN_MODES[type(mod)], "cin": mod.input_size,
            "cout": mod.hidden_size, "num_layers": mod.num_layers, "bias": bool(mod.bias),
            "steps": int(steps), "bidirectional": bool(mod.bidirectional),
            "proj_size": int(getattr(mod, "proj_size", 0)),
            "nonlinearity": getattr(mod, "nonlinearity", "tanh"), "bn": False, "act": None}


def _widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    for name, m in model.named_modules():
        if type(m) in _RNN_MODES:
            out[name] = (m.input_size, m.hidden_size)
        elif isinstance(m, _CONV):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def _probe_dependencies(
    model: nn.Module, space: CompressionSpace, example_input: Tensor, layers: list[_Layer],
    points: int,
) -> int:
    """Fill each layer's width sources and rank point by compressing with one point changed.

    Every prunable point is compressed alone at the ratios of ``_probe_grid``, so
    the channels each layer loses are known exactly there (``round_to`` rounding included) and
    interpolated in between. Returns the number of probes.
    """
    from autocompress.compression import CompressionPolicy, LayerAction, compress

    base = _widths(model)
    by_name = {lay.name: lay for lay in layers}
    probes = 0
    for point in space.decision_points:
        knobs = point.knobs
        if "prune" in knobs:
            high = float(knobs["prune"].most_compressed)
            grid = _probe_grid(high, int(point.features.get("out_channels", 0)), points)
            for k, ratio in enumerate(grid[1:], start=1):
                small = compress(model, CompressionPolicy({point.name: LayerAction(prune=ratio)}),
                                 space=space, example_input=example_input)
                probes += 1
                now = _widths(small)
                for lname, lay in by_name.items():
                    if lname not in now:
                        continue
                    (ci, co), (ni, no) = base[lname], now[lname]
                    for sources, delta in ((lay.in_sources, ci - ni), (lay.out_sources, co - no)):
                        if delta and point.name not in sources:
                            sources[point.name] = [grid, [0.0] * len(grid)]
                        if point.name in sources:
                            sources[point.name][1][k] = float(delta)
        for kname in ("rank", "proj_rank"):  # a space offers one of the two
            if kname in knobs and point.name in by_name:
                by_name[point.name].rank_point = point.name
                by_name[point.name].rank_knob = kname
    return probes


def _probe_grid(high: float, channels: int, points: int) -> list[float]:
    """Prune ratios probed at one point: 0, the ratio removing a single channel, then ``points``
    evenly spaced up to ``high``.

    The single-channel ratio puts a grid point just below full width: ONNX Runtime's blocked
    convolutions run only at channel counts that are multiples of the SIMD block, so latency can
    jump between full width and one channel less, and interpolating across that cliff from the
    next grid point would be badly off.
    """
    if high <= 0:
        return []
    grid = [float(v) for v in np.linspace(0.0, high, max(points, 2))]
    one = 1.5 / channels if channels > 1 else grid[1] / 2
    grid.insert(1, min(one, grid[1] / 2))  # same length at every point: grids align by index
    return grid


def _removed(sources: dict[str, list[list[float]]], policy: CompressionPolicy | None,
             k: int | None = None) -> float:
    """Channels removed from one side of a layer: at ``policy``, or at grid index ``k`` of all."""
    total = 0.0
    for point, (grid, delta) in sources.items():
        if k is not None:
            total += delta[k]
        else:
            assert policy is not None
            total += float(np.interp(policy.get(point).prune, grid, delta))
    return total


# ---------------------------------------------------------------------------------------------
# standalone modules and their timings


def _act_module(desc: dict[str, Any] | None) -> nn.Module | None:
    if desc is None:
        return None
    return getattr(nn, desc["type"])(**desc["kw"])


def build_standalone(spec: dict[str, Any], cin: int, cout: int, *, groups: int | None = None,
                     kernel_one: bool = False, bias: bool | None = None, bn: bool | None = None,
                     act: bool = True, rank: float | None = None,
                     rank_knob: str = "rank") -> tuple[nn.Module, Tensor]:
    """One layer (+ BN + activation) at widths ``cin -> cout`` and a matching batch-1 input.

    A recurrent layer (``kind`` ``rnn``): the module with ``cout`` hidden units, factorised at
    fraction ``rank`` of ``rank_knob`` when given (``compression.rnn.LowRankRNN``, as
    ``compress`` builds it).
    """
    if spec["kind"] == "rnn":
        return _build_rnn(spec, cin, cout, rank, rank_knob)
    use_bias = spec["bias"] if bias is None else bias
    use_bn = spec["bn"] if bn is None else bn
    mods: list[nn.Module] = []
    if spec["kind"] == "linear":
        mods.append(nn.Linear(cin, cout, bias=use_bias))
        x = torch.randn(1, *spec["shape"], cin)
        if use_bn:
            mods.append(nn.BatchNorm1d(cout))
    else:
        dims = spec["dims"]
        conv_cls = _CONV[dims - 1]
        bn_cls = _BNS[dims - 1]
        if kernel_one:
            conv = conv_cls(cin, cout, 1, bias=use_bias)
        else:
            conv = conv_cls(cin, cout, tuple(spec["kernel"]), stride=tuple(spec["stride"]),
                            padding=spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"]),
                            dilation=tuple(spec["dilation"]), groups=groups or 1, bias=use_bias)
        mods.append(conv)
        if use_bn:
            mods.append(bn_cls(cout))
        shape = spec["shape"]
        if kernel_one:  # the second factor sees the first factor's output resolution
            shape = _conv_out_shape(spec)
        x = torch.randn(1, cin, *shape)
    a = _act_module(spec["act"]) if act else None
    if a is not None:
        mods.append(a)
    module = nn.Sequential(*mods).eval()
    return module, x


class _SequenceOut(nn.Module):
    """A recurrent module's output sequence only (what the next layer reads)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


def _rnn_factorised(spec: dict[str, Any], knob: str, cin: int, hidden: int, fraction: float) -> Any:
    """What ``knob`` at ``fraction`` factorises in a recurrent layer at these widths (the ranks
    kept, as plain data), or None when it leaves the module dense."""
    from autocompress.compression.rnn import matrix_ranks, shared_ranks

    if fraction >= 1.0:
        return None
    if knob == "proj_rank":
        return shared_ranks(_rnn_gates(spec), hidden, spec["num_layers"], fraction)
    return matrix_ranks(_rnn_gates(spec), cin, hidden, spec["num_layers"], fraction)


def _build_rnn(spec: dict[str, Any], cin: int, hidden: int, rank: float | None,
               rank_knob: str) -> tuple[nn.Module, Tensor]:
    from autocompress.compression.rnn import LowRankRNN, matrix_ranks, share_projections

    cls = _RNN_CLASSES[spec["mode"]]
    kw: dict[str, Any] = {"num_layers": spec["num_layers"], "bias": spec["bias"], "batch_first": True,
                          "bidirectional": spec["bidirectional"]}
    if spec["proj_size"]:
        kw["proj_size"] = min(spec["proj_size"], hidden - 1)
    if cls is nn.RNN:
        kw["nonlinearity"] = spec["nonlinearity"]
    module: nn.Module = cls(cin, hidden, **kw)
    if rank is not None and rank_knob == "proj_rank":
        module = share_projections(module, rank) or module
    elif rank is not None:
        ranks = matrix_ranks(_rnn_gates(spec), cin, hidden, spec["num_layers"], rank)
        if ranks is not None:
            module = LowRankRNN(module, ranks)  # type: ignore[arg-type]
    return _SequenceOut(module).eval(), torch.randn(1, spec["steps"], cin)


_ONNX_ACTS: dict[str, str] = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
                              "Hardswish": "HardSwish", "LeakyReLU": "LeakyRelu", "ELU": "Elu"}


def standalone_onnx(spec: dict[str, Any], cin: int, cout: int, *, groups: int | None = None,
                    kernel_one: bool = False, bias: bool | None = None, bn: bool | None = None,
                    act: bool = True, rank: float | None = None, rank_knob: str = "rank") -> bytes | None:
    """The ONNX graph of ``build_standalone`` written directly (about 50x faster than exporting).

    BatchNorm is folded into the bias, as ONNX Runtime's optimiser does anyway. Returns None for
    what it does not write (string padding, uncommon activations): the caller then exports the
    torch module.
    """
    from onnx import TensorProto, helper, numpy_helper

    if spec["kind"] == "rnn":  # exported: the exporter's fused LSTM / GRU / RNN node, or the loop
        return None
    rng = np.random.default_rng(0)
    use_bias = (spec["bias"] if bias is None else bias) or (spec["bn"] if bn is None else bn)
    inits, nodes = [], []
    if spec["kind"] == "linear":
        shape = list(spec["shape"])
        x_shape: list[Any] = ["batch", *shape, cin]
        w = rng.standard_normal((cin, cout)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W"))
        if use_bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "B"))
        if not shape and use_bias:
            nodes.append(helper.make_node("Gemm", ["input", "W", "B"], ["y"]))
        else:
            nodes.append(helper.make_node("MatMul", ["input", "W"], ["mm" if use_bias else "y"]))
            if use_bias:
                nodes.append(helper.make_node("Add", ["mm", "B"], ["y"]))
    else:
        if isinstance(spec["padding"], str) or spec.get("transposed"):
            return None
        dims = spec["dims"]
        g = 1 if kernel_one else (groups or 1)
        if kernel_one:
            shape, kernel = _conv_out_shape(spec), [1] * dims
            attrs: dict[str, Any] = {"kernel_shape": kernel, "group": 1}
        else:
            shape, kernel = list(spec["shape"]), list(spec["kernel"])
            attrs = {"kernel_shape": kernel, "strides": list(spec["stride"]),
                     "pads": list(spec["padding"]) * 2, "dilations": list(spec["dilation"]), "group": g}
        x_shape = ["batch", cin, *shape]
        w = rng.standard_normal((cout, cin // g, *kernel)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W"))
        inputs = ["input", "W"]
        if use_bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "B"))
            inputs.append("B")
        nodes.append(helper.make_node("Conv", inputs, ["y"], **attrs))
    desc = spec["act"] if act else None
    out = "y"
    if desc is not None:
        kind, kw = desc["type"], desc["kw"]
        if kind in _ONNX_ACTS:
            extra = {"alpha": float(kw["negative_slope"])} if kind == "LeakyReLU" else (
                {"alpha": float(kw["alpha"])} if kind == "ELU" else {})
            nodes.append(helper.make_node(_ONNX_ACTS[kind], ["y"], ["output"], **extra))
        elif kind == "ReLU6":
            inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                      numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", ["y", "lo", "hi"], ["output"]))
        elif kind == "Hardsigmoid":
            nodes.append(helper.make_node("HardSigmoid", ["y"], ["output"], alpha=1 / 6, beta=0.5))
        elif kind == "SiLU":
            nodes += [helper.make_node("Sigmoid", ["y"], ["s"]),
                      helper.make_node("Mul", ["y", "s"], ["output"])]
        else:
            return None
        out = "output"
    if out == "y":
        nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _conv_out_shape(spec: dict[str, Any]) -> list[int]:
    out = []
    for i, size in enumerate(spec["shape"]):
        k, s, d = spec["kernel"][i], spec["stride"][i], spec["dilation"][i]
        p = spec["padding"][i] if not isinstance(spec["padding"], str) else (k - 1) // 2 * d
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return out


class _Profiler:
    """Times standalone modules once each (memoised by their exact configuration)."""

    def __init__(self, backend: str, batch: int, threads: int, warmup: int, repeats: int,
                 clock: str = "wall") -> None:
        self.backend, self.batch, self.threads, self.clock = backend, batch, threads, clock
        self.warmup, self.repeats = warmup, repeats
        self.memo: dict[str, float] = {}
        self.overhead_ms = 0.0

    def time(self, module: nn.Module, x: Tensor, onnx_bytes: bytes | None = None) -> float:
        if onnx_bytes is not None and self.backend != "torch":
            run = make_ort_runner(onnx_bytes, x, backend=self.backend, batch=self.batch,
                                  threads=self.threads)
        else:
            run = make_runner(module, x, backend=self.backend, batch=self.batch, threads=self.threads)
        times = time_backend(run, self.backend, warmup=self.warmup, repeats=self.repeats,
                             min_repeat_ms=0.5, clock=self.clock)
        return float(np.median(times))

    def measure_overhead(self) -> None:
        module = _AddOne().eval()
        self.overhead_ms = self.time(module, torch.zeros(1, 1))

    def entry(self, key: dict[str, Any], spec: dict[str, Any], cin: int, cout: int,
              **kw: Any) -> float:
        """Milliseconds of one standalone layer configuration (net of the call overhead)."""
        k = json.dumps(key, sort_keys=True)
        if k not in self.memo:
            module, x = build_standalone(spec, cin, cout, **kw)
            graph = standalone_onnx(spec, cin, cout, **kw) if self.backend.startswith("ort") else None
            self.memo[k] = max(self.time(module, x, graph) - self.overhead_ms, 0.0)
        return self.memo[k]


class _AddOne(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


def _channels(full: int, keep: float, multiple: int = 1) -> int:
    c = max(1, int(round(full * keep)))
    if multiple > 1:
        c = max(multiple, int(round(c / multiple)) * multiple)
    return c


# ---------------------------------------------------------------------------------------------
# interpolation


def _interp_axis(grid: Sequence[float], x: float) -> tuple[int, int, float]:
    """Indices (i, j) bracketing ``x`` in ``grid`` and the weight of ``j`` (clamped at the ends)."""
    if len(grid) == 1 or x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        last = len(grid) - 1
        return last, last, 0.0
    j = int(np.searchsorted(grid, x))
    i = j - 1
    return i, j, (x - grid[i]) / (grid[j] - grid[i])


def _interp2(gx: Sequence[float], gy: Sequence[float], table: Sequence[Sequence[float]],
             x: float, y: float) -> float:
    i0, i1, wx = _interp_axis(gx, x)
    j0, j1, wy = _interp_axis(gy, y)
    top = table[i0][j0] * (1 - wy) + table[i0][j1] * wy
    bot = table[i1][j0] * (1 - wy) + table[i1][j1] * wy
    return top * (1 - wx) + bot * wx


def _interp3(gx: Sequence[float], gy: Sequence[float], gz: Sequence[float],
             cube: Sequence[Sequence[Sequence[float]]], x: float, y: float, z: float) -> float:
    i0, i1, wx = _interp_axis(gx, x)
    lo = _interp2(gy, gz, cube[i0], y, z)
    return lo if wx == 0.0 else lo * (1 - wx) + _interp2(gy, gz, cube[i1], y, z) * wx


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class LatencyLUT:
    """Per-layer latency lookup table of one model on one backend, batch and thread count.

    Build it with ``LatencyLUT.build`` (cached on disk, keyed by machine, backend, batch,
    threads, architecture, input shape and space); ``predict(policy)`` returns milliseconds.

    Example:
        >>> lut = LatencyLUT.build(model, space, example_input, backend="ort", batch=1)  # doctest: +SKIP
        >>> lut.predict(space.uniform(prune=0.5))  # doctest: +SKIP
    """

    key: str
    backend: str
    batch: int
    threads: int
    input_shape: list[int]
    layers: list[_Layer]
    constant_ms: float
    base_measured_ms: float
    overhead_ms: float = 0.0
    scale: float = 1.0
    clock: str = "wall"
    meta: dict[str, Any] = field(default_factory=dict)

    schema_version: ClassVar[int] = 5

    # -- prediction -------------------------------------------------------------------------
    def layer_ms(self, layer: _Layer, policy: CompressionPolicy) -> float:
        """Predicted milliseconds of one layer under ``policy``."""
        from autocompress.compression.lowrank import factorised_rank

        s = layer.spec
        cin = s["cin"] - _removed(layer.in_sources, policy)
        cout = s["cout"] - _removed(layer.out_sources, policy)
        kin, kout = cin / s["cin"], cout / s["cout"]
        if layer.rank_point is not None and layer.f_grid:  # a recurrent layer
            rank = float(getattr(policy.get(layer.rank_point), layer.rank_knob))
            if _rnn_factorised(s, layer.rank_knob, max(1, round(cin)), max(1, round(cout)),
                               rank) is not None:
                return _interp3(layer.lr_in, layer.lr_out, layer.f_grid, layer.lowrank,
                                kin, kout, rank)
        elif layer.rank_point is not None and layer.r_grid:
            rank = policy.get(layer.rank_point).rank
            if rank < 1.0:
                per_out = int(np.prod(s["kernel"])) if s["kind"] == "conv" else 1
                r = factorised_rank(max(1, round(cout)), max(1, round(cin)) * per_out, rank)
                if r is not None:
                    g = [float(v) for v in layer.r_grid]
                    return (_interp2(layer.in_grid, g, layer.first, kin, float(r))
                            + _interp2(g, layer.out_grid, layer.second, float(r), kout))
        return _interp2(layer.in_grid, layer.out_grid, layer.table, kin, kout)

    def predict(self, policy: CompressionPolicy) -> float:
        """Predicted latency (ms per forward pass at ``batch``) of the compressed model.

        Bit-widths do not enter: latency is that of the pruned / factorised float network
        (``ort-int8``: the whole network in int8), as measured by ``measure_latency``.
        """
        return max(self.constant_ms + self.scale * self.layer_sum(policy), 1e-6)

    def layer_sum(self, policy: CompressionPolicy) -> float:
        """Sum of the layer entries at ``policy`` (before the constant and scale)."""
        return sum(self.layer_ms(lay, policy) for lay in self.layers)

    def breakdown(self, policy: CompressionPolicy) -> dict[str, float]:
        """Per-layer predicted milliseconds plus ``"<constant>"``."""
        out = {lay.name: self.scale * self.layer_ms(lay, policy) for lay in self.layers}
        out["<constant>"] = self.constant_ms
        return out

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (with schema version)."""
        return {
            "_type": "autocompress.LatencyLUT", "_version": self.schema_version, "key": self.key,
            "backend": self.backend, "batch": self.batch, "threads": self.threads,
            "input_shape": list(self.input_shape), "constant_ms": self.constant_ms,
            "base_measured_ms": self.base_measured_ms, "overhead_ms": self.overhead_ms,
            "scale": self.scale, "clock": self.clock, "meta": self.meta, "layers": [lay.__dict__ for lay in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyLUT:
        """Inverse of ``to_dict``; rejects another type or schema version."""
        if d.get("_type") != "autocompress.LatencyLUT":
            raise UserInputError("not a serialised LatencyLUT (missing _type 'autocompress.LatencyLUT')")
        if d.get("_version") != cls.schema_version:
            raise UserInputError(
                f"LatencyLUT schema _version {d.get('_version')!r} is not supported; "
                f"this autocompress reads version {cls.schema_version}"
            )
        return cls(
            key=d["key"], backend=d["backend"], batch=int(d["batch"]), threads=int(d["threads"]),
            input_shape=list(d["input_shape"]), layers=[_Layer(**lay) for lay in d["layers"]],
            constant_ms=float(d["constant_ms"]), base_measured_ms=float(d["base_measured_ms"]),
            overhead_ms=float(d.get("overhead_ms", 0.0)), scale=float(d.get("scale", 1.0)),
            clock=str(d.get("clock", "wall")),
            meta=dict(d.get("meta") or {}),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (write to a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyLUT:
        """Read a table written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"latency table {str(path)!r} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"latency table {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def cache_key(model: nn.Module, space: CompressionSpace, example_input: Tensor, backend: str,
                  batch: int, threads: int, grid: tuple[int, ...], clock: str = "wall") -> str:
        """Key of a table: machine, backend, batch, threads, clock, architecture, input, space."""
        machine = machine_id()
        if backend in GPU_LATENCY_BACKENDS:  # one table per GPU model
            machine["gpu"] = gpu_name()
        payload = {
            "v": LatencyLUT.schema_version, "machine": machine, "backend": backend,
            "batch": batch, "threads": threads, "clock": clock, "arch": architecture_fingerprint(model),
            "input": list(example_input.shape[1:]), "space": space_signature(space),
            "grid": list(grid),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @classmethod
    def build(
        cls,
        model: nn.Module,
        space: CompressionSpace,
        example_input: Tensor,
        backend: str = "ort",
        batch: int = 1,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        *,
        keep_points: int = 5,
        rank_points: int = 4,
        warmup: int = 2,
        repeats: int = 7,
        calibration_policies: int = 8,
        clock: str = "wall",
        rebuild: bool = False,
    ) -> LatencyLUT:
        """Profile (or load from the cache) the lookup table of ``model`` under ``space``.

        Args:
            model: the base model.
            space: its compression space (decides which widths and ranks can change).
            example_input: one input sample ``(1, ...)``.
            backend, batch, threads: what the table predicts (see ``measure_latency``).
            cache_dir: where tables are cached (default ``cache_dir()/lut``).
            progress: show a rich progress bar while profiling.
            keep_points: width grid points per pruned dimension.
            rank_points: rank grid points of factorisable layers.
            warmup, repeats: timing settings of each entry.
            calibration_policies: random compressed models measured whole to fit the constant
                and scale (0: constant from the base model alone).
            clock: ``wall`` or ``cpu`` (see ``measure_latency``).
            rebuild: profile again even when a cached table exists.
        """
        check_backend(backend)
        for name, v in (("batch", batch), ("threads", threads), ("keep_points", keep_points),
                        ("rank_points", rank_points)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserInputError(f"LatencyLUT.build {name}={v!r}; expected an integer >= 1")
        if cache_dir is None:
            from autocompress.training import cache_dir as default_cache_dir

            cache_dir = default_cache_dir() / "lut"
        check_clock(clock, threads)
        key = cls.cache_key(model, space, example_input, backend, batch, threads,
                            (keep_points, rank_points, calibration_policies), clock)
        path = Path(cache_dir) / f"lut-{key[:24]}.json"
        if path.is_file() and not rebuild:
            try:
                lut = cls.load(path)
                if lut.key == key:
                    return lut
            except (UserInputError, KeyError, TypeError):
                pass  # unreadable / stale: profile again
        model = model.eval()
        example_input = example_input[:1]
        layers = discover_layers(model, example_input)
        _probe_dependencies(model, space, example_input, layers, keep_points)
        prof = _Profiler(backend, batch, threads, warmup, repeats, clock)
        with torch_threads(threads):
            prof.measure_overhead()
            jobs = _plan(layers, space, keep_points, rank_points)
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(TextColumn("[bold]latency table[/] {task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress,
                          transient=True) as bar:
                task = bar.add_task(f"{backend} batch {batch}", total=sum(len(j) for j in jobs))
                for cells in jobs:
                    for cell in cells:
                        cell(prof)
                        bar.advance(task)
                lut = cls(key=key, backend=backend, batch=batch, threads=threads,
                          input_shape=list(example_input.shape[1:]), layers=layers,
                          constant_ms=0.0, base_measured_ms=math.nan,
                          overhead_ms=prof.overhead_ms, clock=clock,
                          meta={"machine": machine_id(), "entries": len(prof.memo),
                                "keep_points": keep_points, "rank_points": rank_points,
                                "calibration_policies": calibration_policies})
                cal = bar.add_task("whole-model calibration", total=calibration_policies + 1)
                lut._calibrate(model, space, example_input, calibration_policies,
                               warmup=warmup, repeats=max(repeats, 15),
                               advance=lambda: bar.advance(cal))
        lut.save(path)
        return lut

    def _calibrate(self, model: nn.Module, space: CompressionSpace, example_input: Tensor,
                   n_policies: int, *, warmup: int, repeats: int, advance: Any) -> None:
        """Fit ``constant_ms`` (and ``scale``) on whole-model measurements.

        The base model is always measured: with no calibration policies the constant is its
        latency minus the sum of its layer entries (exact at the identity). With ``n_policies``
        random compressed models measured as well, ``measured = constant + scale * sum`` is
        fitted robustly (Theil-Sen), which absorbs what standalone layers see differently from layers
        inside the graph (ONNX Runtime's layout reorders at a standalone layer's boundaries,
        fusions across layers); the fit is ignored when it is not well-posed.
        """
        from autocompress.compression import compress
        from autocompress.evaluators.compression_evaluator import structural_policy

        def measure(m: nn.Module) -> float:
            stats = measure_latency(m, example_input, backend=self.backend, batch=self.batch,
                                    threads=self.threads, warmup=warmup, repeats=repeats,
                                    clock=self.clock)
            advance()
            return stats.median_ms

        base = measure(model)
        self.base_measured_ms = base
        sums = [self.layer_sum(space.identity())]
        meas = [base]
        for i in range(n_policies):
            policy = space.sample(_CALIBRATION_SEED + i)
            small = compress(model, structural_policy(policy), space=space)
            sums.append(self.layer_sum(policy))
            meas.append(measure(small))
        self.scale = 1.0
        self.constant_ms = base - sums[0]
        x, y = np.asarray(sums), np.asarray(meas)
        if len(x) >= 3 and float(np.ptp(x)) > 1e-9:
            slope, intercept = _theil_sen(x, y)
            if 0.25 <= slope <= 4.0:
                self.scale, self.constant_ms = float(slope), float(intercept)
        pred = self.constant_ms + self.scale * x
        self.meta["calibration_rel_err"] = [float(v) for v in np.abs(pred - y) / y]


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust line fit: median of pairwise slopes, then median intercept.

    One timing disturbed by a busy neighbour must not tilt the line (least squares would).
    """
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    ok = np.abs(dx) > 1e-12
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
    return slope, float(np.median(y - slope * x))


def _plan(layers: list[_Layer], space: CompressionSpace, keep_points: int,
          rank_points: int) -> list[list[Any]]:
    """Grids of each layer, and one profiling job per table cell (run later, with progress)."""
    from autocompress.compression.lowrank import factorised_rank

    knobs = {p.name: p.knobs for p in space.decision_points}

    def width_grid(sources: dict[str, list[list[float]]], full: int) -> list[float]:
        # the widths every source reaches at the same grid index: exact, achievable widths
        if not sources:
            return [1.0]
        n = len(next(iter(sources.values()))[0])
        return sorted({(full - _removed(sources, None, k)) / full for k in range(n)})

    jobs: list[list[Any]] = []
    for lay in layers:
        s = lay.spec
        dw = lay.depthwise
        fixed_groups = s.get("groups", 1) if (s["kind"] == "conv" and not dw) else 1
        lay.in_grid = width_grid(lay.in_sources, s["cin"])
        lay.out_grid = [1.0] if dw else width_grid(lay.out_sources, s["cout"])
        in_min, out_min = lay.in_grid[0], (lay.in_grid[0] if dw else lay.out_grid[0])
        lay.table = [[math.nan] * len(lay.out_grid) for _ in lay.in_grid]
        cells: list[Any] = []

        def main_cell(i: int, j: int, lay: _Layer = lay, dw: bool = dw, g: int = fixed_groups) -> Any:
            s = lay.spec
            cin = _channels(s["cin"], lay.in_grid[i], g)
            cout = cin if dw else _channels(s["cout"], lay.out_grid[j], g)
            groups = cin if dw else g

            def run(prof: _Profiler) -> None:
                key = {"spec": s, "cin": cin, "cout": cout, "groups": groups, "part": "main"}
                lay.table[i][j] = prof.entry(key, s, cin, cout, groups=groups)

            return run

        for i in range(len(lay.in_grid)):
            for j in range(len(lay.out_grid)):
                cells.append(main_cell(i, j))

        rank_knob = knobs.get(lay.rank_point or "", {}).get(lay.rank_knob) if lay.rank_point else None
        if rank_knob is not None and s["kind"] == "rnn":
            cells += _plan_rnn_rank(lay, float(rank_knob.most_compressed), rank_points)
        elif rank_knob is not None and not dw and fixed_groups == 1:
            per_out = int(np.prod(s["kernel"])) if s["kind"] == "conv" else 1
            m, n = s["cout"], s["cin"] * per_out
            lo = float(rank_knob.most_compressed)
            r_lo = factorised_rank(max(1, round(m * out_min)), max(1, round(s["cin"] * in_min)) * per_out, lo) or 1
            r_hi = max(r_lo, int(m * n / (m + n)))
            lay.r_grid = sorted({int(round(v)) for v in np.linspace(r_lo, r_hi, rank_points)})
            lay.first = [[math.nan] * len(lay.r_grid) for _ in lay.in_grid]
            lay.second = [[math.nan] * len(lay.out_grid) for _ in lay.r_grid]

            def first_cell(i: int, k: int, lay: _Layer = lay) -> Any:
                s = lay.spec
                cin, r = _channels(s["cin"], lay.in_grid[i]), lay.r_grid[k]

                def run(prof: _Profiler) -> None:
                    key = {"spec": s, "cin": cin, "cout": r, "part": "first"}
                    lay.first[i][k] = prof.entry(key, s, cin, r, bias=False, bn=False, act=False)

                return run

            def second_cell(k: int, j: int, lay: _Layer = lay) -> Any:
                s = lay.spec
                r, cout = lay.r_grid[k], _channels(s["cout"], lay.out_grid[j])

                def run(prof: _Profiler) -> None:
                    key = {"spec": s, "cin": r, "cout": cout, "part": "second"}
                    lay.second[k][j] = prof.entry(key, s, r, cout, kernel_one=True)

                return run

            for i in range(len(lay.in_grid)):
                for k in range(len(lay.r_grid)):
                    cells.append(first_cell(i, k))
            for k in range(len(lay.r_grid)):
                for j in range(len(lay.out_grid)):
                    cells.append(second_cell(k, j))
        jobs.append(cells)
    return jobs


def _rnn_gates(spec: dict[str, Any]) -> int:
    from autocompress.compression.rnn import GATES

    return GATES[_RNN_CLASSES[spec["mode"]]]


def _plan_rnn_rank(lay: _Layer, lowest: float, rank_points: int) -> list[Any]:
    """Cells of a recurrent layer's factorised entries: fractions of its rank knob (``rank`` or
    ``proj_rank``) from ``lowest`` up to the largest that still factorises a matrix at full
    width, at the extreme widths of each side.

    A factorised recurrent module runs its steps as separate nodes (``LowRankRNN``), not as one
    fused node, so its latency is not the sum of its factors' matrix products: each entry times
    the whole module, keyed by the ranks it keeps (fractions keeping the same ranks share one).
    """
    s, knob = lay.spec, lay.rank_knob
    grid = np.linspace(lowest, 1.0, 101)[:-1]
    factorising = [float(f) for f in grid
                   if _rnn_factorised(s, knob, s["cin"], s["cout"], float(f)) is not None]
    if not factorising:
        return []
    top = max(factorising)
    lay.f_grid = sorted({round(float(v), 6) for v in np.linspace(lowest, top, max(rank_points, 2))})
    lay.lr_in = sorted({lay.in_grid[0], lay.in_grid[-1]})
    lay.lr_out = sorted({lay.out_grid[0], lay.out_grid[-1]})
    lay.lowrank = [[[math.nan] * len(lay.f_grid) for _ in lay.lr_out] for _ in lay.lr_in]

    def cell(i: int, j: int, k: int) -> Any:
        cin, h = _channels(s["cin"], lay.lr_in[i]), _channels(s["cout"], lay.lr_out[j])
        f = lay.f_grid[k]

        def run(prof: _Profiler) -> None:
            # Only factorised modules are predicted from here; where ``f`` factorises nothing at
            # these widths, the largest fraction below it that does stands in (the step down
            # to the fused dense module is not interpolated across).
            g = f
            while g > lowest and _rnn_factorised(s, knob, cin, h, g) is None:
                g = max(lowest, g - 0.5 / max(h, cin))
            ranks = _rnn_factorised(s, knob, cin, h, g)
            if ranks is None:  # nothing factorises at these widths: the dense module
                key = {"spec": s, "cin": cin, "cout": h, "groups": 1, "part": "main"}
                lay.lowrank[i][j][k] = prof.entry(key, s, cin, h, groups=1)
            else:
                key = {"spec": s, "cin": cin, "cout": h, "ranks": ranks, "part": knob}
                lay.lowrank[i][j][k] = prof.entry(key, s, cin, h, rank=g, rank_knob=knob)

        return run

    return [cell(i, j, k) for i in range(len(lay.lr_in)) for j in range(len(lay.lr_out))
            for k in range(len(lay.f_grid))]
