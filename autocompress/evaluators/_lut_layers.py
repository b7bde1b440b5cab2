"""The latency table's layers: each compute layer recorded at its input shape, and its widths' sources.

``discover_layers`` records what the table times standalone (a layer's input shape, and the BN and
activation modules that consume its output), which the compression space's records do not keep.
``_width_sources`` reads which decision point changes which layer's widths, by how many channels at
each ratio of a small grid, from the compression space (its probed coefficients, the numbers
``compress`` prunes to), so the table probes nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
         nn.LeakyReLU, nn.ELU, nn.Mish)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Recurrent modules timed as one entry each (exact types: what ``compression.rnn`` handles).
_RNN_MODES: dict[type[nn.Module], str] = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
_RNN_CLASSES: dict[str, type[nn.RNNBase]] = {v: k for k, v in _RNN_MODES.items()}  # type: ignore[misc]


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


def _width_sources(space: CompressionSpace, model: nn.Module, layers: list[_Layer],
                   points: int) -> None:
    """Fill each layer's width sources and rank point from what the space knows.

    At every prunable point, the channels each layer loses at the ratios of ``_probe_grid`` come
    from the space's probed coefficients (``CompressionSpace.channels_removed``, the numbers
    ``compress`` prunes to, ``round_to`` rounding included): exact there, interpolated in between.
    """
    by_name = {lay.name: lay for lay in layers}
    for point in space.decision_points:
        knobs = point.knobs
        if "prune" in knobs:
            high = float(knobs["prune"].most_compressed)
            grid = _probe_grid(high, int(point.features.get("out_channels", 0)), points)
            removed = space.channels_removed(model, point.name, grid) if grid else {}
            for lname, lay in by_name.items():
                if lname not in removed:
                    continue
                for sources, delta in zip((lay.in_sources, lay.out_sources), removed[lname],
                                          strict=True):
                    if any(delta[1:]):
                        sources[point.name] = [grid, [0.0, *delta[1:]]]
        for kname in ("rank", "proj_rank"):  # a space offers one of the two
            if kname in knobs and point.name in by_name:
                by_name[point.name].rank_point = point.name
                by_name[point.name].rank_knob = kname


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

