"""What a model offers to compress, measured once on a scratch copy: its layers and its groups.

``_record_layers`` runs one forward pass with hooks and records, per MAC-bearing layer (conv,
linear, RNN, attention), the positions or time steps per sample, the weight tensors whose numel
gives its MACs, the tensors ``w_bits`` quantizes and the static shape features. ``_discover_groups``
finds the prunable groups (torch-pruning's dependency graph, plus recurrent hidden units, which
torch-pruning does not build) and *measures* how every parameter shape changes when one unit of
each atom of each group is removed (``_probe``): the coefficients the cost model
(``costmodel.py``) is compiled from. Nothing here knows about policies or costs, so a latency
lookup table can start from the same records.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.compression import lowrank, lowrank_rnn, prune, quantize, rnn
from autocompress.compression.counting import (
    _batch_size,
    _full_inputs,
    _rnn_steps,
    eval_mode,
    module_macs_formula,
)

#: Elements each parameter dim loses per unit removed: ``{(tensor, dim): {(group, atom): count}}``.
Coefs = dict[tuple[str, int], dict[tuple[int, int], float]]


@dataclass
class _Layer:
    """One MAC-bearing layer as the example forward pass saw it (calls of a shared module add)."""

    name: str
    kind: str
    steps: float = 0.0  # output positions (conv/linear) or time steps (RNN), per sample
    weights: list[str] = field(default_factory=list)  # tensors whose numel x steps = MACs
    qweights: list[str] = field(default_factory=list)  # tensors quantized by w_bits
    const_q: float = 0.0  # MACs not modelled by weights but quantized (attention projections)
    const_f: float = 0.0  # MACs that stay float (attention products)
    fmap: tuple[int, int] = (1, 1)
    in_ch: int = 0
    out_ch: int = 0
    kernel: int = 1
    stride: int = 1
    quant: bool = False
    rank: bool = False


def _layer_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed:
            return None
        if m.groups == 1:
            return "conv"
        return "depthwise_conv" if m.groups == m.out_channels else "grouped_conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.LSTM):
        return "lstm"
    if isinstance(m, nn.GRU):
        return "gru"
    if isinstance(m, nn.RNNBase):
        return "rnn"
    if isinstance(m, nn.MultiheadAttention):
        return "attention"
    return None


def _record_layers(model: nn.Module, x: Any) -> dict[str, _Layer]:
    """Run one forward pass and record, per MAC-bearing layer, positions/steps and shapes (and
    whether its module can be quantized and factorised)."""
    layers: dict[str, _Layer] = {}
    batch = _batch_size(x)
    mha_names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    handles = []

    def hook(name: str, m: nn.Module, kind: str):  # type: ignore[no-untyped-def]
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            rec = layers.get(name)
            first = rec is None
            if rec is None:
                rec = layers[name] = _Layer(name, kind)
            params = dict(module.named_parameters(recurse=kind == "attention"))
            if kind in ("conv", "depthwise_conv", "grouped_conv", "linear"):
                o = out[0] if isinstance(out, tuple) else out
                n_out = module.out_channels if kind != "linear" else module.out_features
                rec.steps += o.numel() / (batch * n_out)
                rec.weights = rec.qweights = [f"{name}.weight"]
                if first:
                    if kind == "linear":
                        rec.in_ch, rec.out_ch = module.in_features, module.out_features
                        rec.fmap = (int(o.numel() // (batch * n_out)), 1)
                    else:
                        rec.in_ch, rec.out_ch = module.in_channels, module.out_channels
                        spatial = list(o.shape[2:]) if o.dim() > 2 else [1]
                        rec.fmap = (int(math.prod(spatial[:-1])), int(spatial[-1]))
                        rec.kernel = int(math.prod(module.kernel_size))
                        rec.stride = int(math.prod(module.stride))
            elif kind in ("lstm", "gru", "rnn"):
                rec.steps += _rnn_steps(module, _full_inputs(module, args, kwargs))
                rec.weights = rec.qweights = [
                    f"{name}.{n}" for n in params if n.startswith("weight_")
                ]
                rec.in_ch, rec.out_ch = module.input_size, module.hidden_size
                rec.fmap = (int(rec.steps), 1)
            else:  # attention
                full = _full_inputs(module, args, kwargs)
                total = module_macs_formula(module, full)
                lq = full[0].shape[0 if full[0].dim() == 2 or not module.batch_first else 1]
                lk = full[1].shape[0 if full[1].dim() == 2 or not module.batch_first else 1]
                att = 2.0 * lq * lk * module.embed_dim
                rec.const_q += total - att
                rec.const_f += att
                rec.qweights = [f"{name}.{n}" for n in params if n.endswith("proj_weight")] + [
                    f"{name}.out_proj.weight"
                ]
                rec.in_ch = rec.out_ch = module.embed_dim
                rec.fmap = (int(lq), 1)

        return fn

    for name, m in model.named_modules():
        kind = _layer_kind(m)
        if kind is None or name == "":
            continue
        if any(name.startswith(a + ".") for a in mha_names):
            continue  # MultiheadAttention uses its out_proj's weight directly
        handles.append(m.register_forward_hook(hook(name, m, kind), with_kwargs=True))
    try:
        with torch.no_grad(), eval_mode(model):
            _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    for rec in layers.values():  # which of the bits and rank knobs the module type allows
        module = model.get_submodule(rec.name)
        rec.quant = quantize.quantizable(module)
        rec.rank = lowrank.can_factorise(module) or lowrank_rnn.can_factorise(module)
    return layers


def _forward(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


class _ProbeFailure(Exception):
    """Probing a group failed; ``reason`` becomes the group's reason for having no prune knob."""

    def __init__(self, root: str, reason: str) -> None:
        super().__init__(root, reason)
        self.root = root
        self.reason = reason


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _probe(
    model: nn.Module, x: Any, skip: dict[str, str], use_graph: bool = True
) -> tuple[list[prune.GroupSpec], Coefs]:
    """Analyse the groups on a scratch copy and measure shape coefficients, one unit per atom.

    ``use_graph=False``: only the groups that need no torch-pruning graph (RNN hidden units).
    """
    work = copy.deepcopy(model)
    DG = prune.build_graph(work, x) if use_graph else None
    specs = prune.analyse_groups(DG, work) if DG is not None else []
    order = {n: i for i, n in enumerate(dict(work.named_modules()))}
    specs += rnn.hidden_groups(work, x)  # torch-pruning does not handle RNN hidden units
    specs.sort(key=lambda s: order.get(s.root, len(order)))
    for s in specs:
        if s.reason is None and s.root in skip:
            s.reason = skip[s.root]
    modules = dict(work.named_modules())
    coef: Coefs = {}
    # torch-pruning's groups first, on the graph as traced; then the groups that prune themselves
    for gi, spec in sorted(enumerate(specs), key=lambda t: t[1].own_pruner):
        if not spec.prunable:
            continue
        if spec.own_pruner:  # remove one unit per layer, after checking that this is exact
            before = _shapes(work)
            try:
                spec.probe_(work, x)  # type: ignore[attr-defined]
            except ValueError as exc:
                raise _ProbeFailure(spec.root, str(exc)) from exc
            _record_coefs(coef, gi, 0, before, _shapes(work), spec.root)
            continue
        assert DG is not None
        module = modules[spec.root]
        pruner = DG.get_pruner_of_module(module)
        removed: list[int] = []
        for ai, atom in enumerate(spec.atoms):
            if len(atom) // spec.unit < 2:
                continue
            if spec.unit > 1:
                block = spec.n // spec.unit
                idxs = [b * block for b in range(spec.unit)]
            else:
                idxs = [atom[0]]
            current = [i - sum(1 for r in removed if r < i) for i in idxs]
            before = _shapes(work)
            try:
                with prune.quiet_torch_pruning():
                    DG.get_pruning_group(module, pruner.prune_out_channels, current).prune()
                with torch.no_grad(), eval_mode(work):
                    _forward(work, x)
            except Exception as exc:  # noqa: BLE001 - any failure disables this group's knob
                raise _ProbeFailure(
                    spec.root, f"torch-pruning failed ({type(exc).__name__}: {exc})"
                ) from exc
            removed.extend(idxs)
            _record_coefs(coef, gi, ai, before, _shapes(work), spec.root)
    return specs, coef


def _record_coefs(
    coef: Coefs,
    gi: int,
    ai: int,
    before: dict[str, tuple[int, ...]],
    after: dict[str, tuple[int, ...]],
    root: str,
) -> None:
    """Store how many elements each parameter dim lost when atom ``ai`` of group ``gi`` lost a unit."""
    for name, shape in before.items():
        new = after.get(name)
        if new is None or len(new) != len(shape):
            raise _ProbeFailure(root, f"parameter {name!r} changed rank when pruned")
        for d, (a, b) in enumerate(zip(shape, new, strict=True)):
            if a != b:
                coef.setdefault((name, d), {})[(gi, ai)] = float(a - b)


def _discover_groups(
    model: nn.Module, x: Any, layers: dict[str, _Layer]
) -> tuple[list[prune.GroupSpec], Coefs, list[str]]:
    """The groups of ``model``, their shape coefficients and notes on what could not be probed.

    A group whose probe fails gets that failure as its ``reason`` (no prune knob) and the probe is
    repeated; a model torch-pruning cannot trace keeps only the groups that need no graph
    (recurrent hidden units). Each group's knob is named after its first member layer in module
    order (``GroupSpec.point``). ``model`` is not modified (probing prunes a copy).
    """
    skip: dict[str, str] = {}
    notes: list[str] = []
    groups: list[prune.GroupSpec] = []
    coef: Coefs = {}
    use_graph, untraced = True, ""
    while True:  # each failure disables one more group (or the graph), so this ends
        try:
            groups, coef = _probe(model, x, skip, use_graph)
            break
        except _ProbeFailure as fail:
            if fail.root in skip:  # cannot happen unless tracing is not deterministic
                notes.append(f"probing group {fail.root!r} failed twice; no prune knobs")
                groups, coef = [], {}
                break
            skip[fail.root] = fail.reason
        except Exception as exc:  # noqa: BLE001 - tracing failed: no graph groups
            if not use_graph:
                groups, coef = [], {}
                break
            untraced = f"torch-pruning could not trace this model ({type(exc).__name__}: {exc})"
            use_graph = False  # recurrent hidden units are still probed without it
    if untraced:
        rest = ("only recurrent hidden sizes have a prune knob"
                if any(g.prunable for g in groups) else "no layer has a prune knob")
        notes.append(f"{untraced}; {rest}")
    order = {n: i for i, n in enumerate(dict(model.named_modules()))}
    for g in groups:  # name each group's knob after its first member layer
        members = sorted((m for m in g.members if m in layers), key=lambda m: order[m])
        g.point = members[0] if members else g.root
    return groups, coef, notes


def channels_removed(
    model: nn.Module,
    groups: list[prune.GroupSpec],
    coef: Coefs,
    round_to: int,
    point: str,
    ratios: list[float],
) -> dict[str, tuple[list[float], list[float]]]:
    """Input and output channels each conv / linear / recurrent layer loses at each prune ratio
    of ``point``: ``{layer: (removed inputs, removed outputs)}``, layers that lose none left out.

    Read from the probed coefficients and the units ``removed_units`` takes from each atom, the
    same numbers ``compress`` prunes to (``round_to`` included), so a latency lookup table needs
    no probing of its own.
    """
    out: dict[str, tuple[list[float], list[float]]] = {}
    for gi, g in enumerate(groups):
        if g.point != point or not g.prunable:
            continue
        rnd = math.lcm(round_to, g.unit) // g.unit
        units = g.atom_units()
        rem = [[float(prune.removed_units(r, u, rnd)) if u >= 2 else 0.0 for r in ratios]
               for u in units]

        def delta(tensor: str, dim: int, gi: int = gi, rem: list[list[float]] = rem) -> list[float]:
            c = coef.get((tensor, dim), {})
            return [sum(c.get((gi, a), 0.0) * rem[a][k] for a in range(len(rem)))
                    for k in range(len(ratios))]

        for name, m in model.named_modules():
            if isinstance(m, nn.modules.conv._ConvNd):  # weight (out, in/groups, ...), transposed
                full, part = (1, 0) if m.transposed else (0, 1)  # (in, out/groups, ...)
                whole = delta(f"{name}.weight", full)
                if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
                    i = o = whole
                else:
                    per = [v * m.groups for v in delta(f"{name}.weight", part)]
                    o, i = (per, whole) if m.transposed else (whole, per)
            elif isinstance(m, nn.Linear):
                o, i = delta(f"{name}.weight", 0), delta(f"{name}.weight", 1)
            elif type(m) in lowrank_rnn.GATES:
                o = [v / lowrank_rnn.GATES[type(m)] for v in delta(f"{name}.weight_hh_l0", 0)]
                i = delta(f"{name}.weight_ih_l0", 1)
            else:
                continue
            if any(i) or any(o):
                old_i, old_o = out.get(name, ([0.0] * len(ratios), [0.0] * len(ratios)))
                out[name] = ([a + b for a, b in zip(old_i, i, strict=True)],
                             [a + b for a, b in zip(old_o, o, strict=True)])
    return out
