"""Single layers rebuilt at given widths, as torch modules and as ONNX graphs, and their timing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.evaluators._lut_layers import _BNS, _CONV, _RNN_CLASSES
from autocompress.evaluators.latency import make_ort_runner, make_runner, time_backend


def _rnn_gates(spec: dict[str, Any]) -> int:
    from autocompress.compression.rnn import GATES

    return GATES[_RNN_CLASSES[spec["mode"]]]


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

