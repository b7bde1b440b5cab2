"""Recurrent layers (survey §3): hidden-size pruning with every gate consistent.

Low rank of recurrent layers (``LowRankRNN``, the ``rank`` and ``proj_rank`` knobs) lives in
``lowrank_rnn.py``; its names stay importable from here.

torch-pruning (2.x) does not handle recurrent hidden units (its LSTM out-channel pruner selects
rows and columns of different gates, and it has no GRU pruner), so the hidden units of an
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` form a group of their own here (``HiddenGroup``), which
discovery probes and the cost model predicts like every other group (``discovery.py``,
``costmodel.py``).

Unit ``j`` of layer ``k`` (``H`` units, ``G`` gates: LSTM 4 = i, f, g, o; GRU 3 = r, z, n; RNN 1)
owns rows ``j, H + j, ..., (G - 1) H + j`` of ``weight_ih_lk``, ``weight_hh_lk``, ``bias_ih_lk`` and
``bias_hh_lk``, column ``j`` of ``weight_hh_lk`` (its recurrent input to every unit) and column ``j``
of whatever reads the layer's output: ``weight_ih_l(k+1)`` inside the module and, after the last
layer, the *readers* found by probing the model (an ``nn.Linear``'s input, or the input of the next
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``). Removing a unit removes all of these at once.

Why the pruned layer is exact: a unit whose gate rows are all zero keeps a hidden state of exactly
0 from a zero initial state (LSTM: i = f = o = 1/2 and g = 0, so c = c/2 = 0 and h = 0; GRU: n = 0
and h = h/2 = 0; RNN: act(0) = 0). So a model whose removed units have zero gate rows computes
exactly what the pruned model computes; ``HiddenGroup.probe_`` checks precisely that on the model
before the knob is offered (a model that reads the hidden state some other way, e.g. a mean over
it, fails the check and keeps the layer unpruned, with the reason in ``describe()``).

Every layer of a multi-layer module keeps the same number of units (``nn.LSTM`` has one
``hidden_size``); each layer picks its own units by importance: per unit, the norm of its ``G``
gate rows in ``weight_ih_lk`` and ``weight_hh_lk`` (``l1``: sum of ``|w|``; ``l2``: Euclidean norm;
``taylor``: sum of ``|w * dL/dw|``; ``bn`` ranks as ``l1``: no BatchNorm normalises hidden units). Bidirectional layers, ``proj_size`` LSTMs, packed sequences and
layers called more than once are left without the knob.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from autocompress.compression.counting import eval_mode

# the low-rank half of this module moved to lowrank_rnn.py; its names stay importable from here
from autocompress.compression.lowrank_rnn import (  # noqa: F401
    GATES,
    LowRankRNN,
    _linear,
    _matrix,
    can_factorise,
    factorise_rnn,
    matrix_ranks,
    rnn_ranks,
    share_projections,
    shared_factors,
    shared_rank,
    shared_ranks,
)
from autocompress.compression.prune import GroupSpec, removed_units

__all__ = [
    "GATES",
    "HiddenGroup",
    "LowRankRNN",
    "can_factorise",
    "factorise_rnn",
    "hidden_groups",
    "matrix_ranks",
    "rnn_ranks",
    "share_projections",
    "shared_factors",
    "shared_rank",
    "shared_ranks",
]

_READER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU, nn.RNN)


def _forward(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _same(a: Any, b: Any, tol: float = 0.0) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        return False
    if tol == 0.0:
        return all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True))
    return all(
        torch.allclose(x, y, rtol=tol, atol=tol * max(1.0, float(x.abs().max()) if x.numel() else 1.0))
        for x, y in zip(ta, tb, strict=True)
    )


@dataclass
class HiddenGroup(GroupSpec):
    """The hidden units of one recurrent module, as a prunable group (``n`` = ``hidden_size``).

    Attributes:
        readers: FQNs of the modules whose input columns follow the last layer's units.
        num_layers: layers of the module (each keeps the same number of units).
    """

    readers: list[str] = field(default_factory=list)
    num_layers: int = 1
    #: pruned by :meth:`prune_`, not through torch-pruning's dependency graph
    own_pruner: ClassVar[bool] = True

    # --- importance and removal -------------------------------------------------------------
    def scores(self, model: nn.Module, importance: str) -> Tensor:
        """``(num_layers, H)`` importance of every unit (see the module docstring)."""
        rnn = model.get_submodule(self.root)
        g, h = GATES[type(rnn)], rnn.hidden_size
        out = torch.zeros(rnn.num_layers, h, dtype=torch.float64)
        for k in range(rnn.num_layers):
            for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
                p = getattr(rnn, name)
                w = p.detach().double()
                if importance == "taylor":
                    grad = p.grad if p.grad is not None else torch.zeros_like(p)
                    w = (w * grad.detach().double()).abs()
                per_unit = w.reshape(g, h, -1).transpose(0, 1).reshape(h, -1)
                if importance == "l2":
                    out[k] += per_unit.pow(2).sum(1)
                else:
                    out[k] += per_unit.abs().sum(1)
        return out.sqrt() if importance == "l2" else out

    @torch.no_grad()
    def remove_(self, model: nn.Module, keep: list[Tensor]) -> None:
        """Keep units ``keep[k]`` (sorted indices) of each layer ``k``; every reader follows."""
        rnn = model.get_submodule(self.root)
        g, h = GATES[type(rnn)], rnn.hidden_size
        for k in range(rnn.num_layers):
            rows = torch.cat([keep[k] + i * h for i in range(g)])
            w_ih = getattr(rnn, f"weight_ih_l{k}")[rows]
            if k > 0:
                w_ih = w_ih[:, keep[k - 1]]
            _set(rnn, f"weight_ih_l{k}", w_ih)
            _set(rnn, f"weight_hh_l{k}", getattr(rnn, f"weight_hh_l{k}")[rows][:, keep[k]])
            if rnn.bias:
                for b in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                    _set(rnn, b, getattr(rnn, b)[rows])
        rnn.hidden_size = len(keep[0])
        last = keep[-1]
        for name in self.readers:
            reader = model.get_submodule(name)
            if isinstance(reader, nn.Linear):
                _set(reader, "weight", reader.weight[:, last])
                reader.in_features = len(last)
            else:
                for sfx in ("", "_reverse") if reader.bidirectional else ("",):
                    _set(reader, f"weight_ih_l0{sfx}", getattr(reader, f"weight_ih_l0{sfx}")[:, last])
                reader.input_size = len(last)
                reader.flatten_parameters()
        rnn.flatten_parameters()  # cuDNN wants one contiguous weight buffer (a no-op on CPU)

    def prune_(
        self, model: nn.Module, prune: float, *, round_to: int = 1, importance: str = "l1"
    ) -> tuple[list[int], dict[str, list[int]]]:
        """Remove ``removed_units(prune, H, round_to)`` units of every layer, the least important.

        Returns:
            ``(removed units of the last layer, {module: its removed output features})``.
        """
        h = model.get_submodule(self.root).hidden_size
        k = int(removed_units(prune, h, round_to))
        if k == 0:
            return [], {}
        orders = [torch.argsort(row, stable=True) for row in self.scores(model, importance)]
        self.remove_(model, [order[k:].sort().values for order in orders])
        removed = sorted(orders[-1][:k].tolist())
        return removed, {self.root: removed}

    @torch.no_grad()
    def probe_(self, model: nn.Module, x: Any) -> None:
        """Remove unit 0 of every layer, after checking that this equals zeroing its gate rows.

        Raises:
            ValueError: the pruned model does not compute what the zeroed one does (the reason).
        """
        zeroed = copy.deepcopy(model)
        rnn = zeroed.get_submodule(self.root)
        g, h = GATES[type(rnn)], rnn.hidden_size
        rows = torch.tensor([i * h for i in range(g)])
        for name, p in rnn.named_parameters():
            if name.startswith(("weight_", "bias_")):
                p[rows] = 0.0
        with eval_mode(zeroed):
            ref = _forward(zeroed, x)
        self.remove_(model, [torch.arange(1, h)] * self.num_layers)
        try:
            with eval_mode(model):
                got = _forward(model, x)
        except Exception as exc:  # noqa: BLE001 - a reader we did not shrink: not prunable
            raise ValueError(f"pruned model fails ({type(exc).__name__}: {exc})") from exc
        if not _same(ref, got, tol=1e-5):
            raise ValueError("pruned model differs from zeroing the units (hidden state read elsewhere)")


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    # nn.RNNBase.__setattr__ keeps its flat weight list in step with the new parameter
    setattr(module, name, nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad))


# --- discovery -------------------------------------------------------------------------------------
def _why_not(m: nn.Module) -> str | None:
    if m.bidirectional:
        return "bidirectional (not pruned)"
    if getattr(m, "proj_size", 0):
        return "uses proj_size (not pruned)"
    if m.hidden_size < 2:
        return "too few hidden units to prune"
    return None


def _bump(j: int) -> Any:
    """A forward hook adding 1 to unit ``j`` of a recurrent module's outputs and final states."""

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        seq, state = out
        seq = seq.clone()
        seq[..., j] += 1.0
        states = tuple(s.clone() for s in (state if isinstance(state, tuple) else (state,)))
        for s in states:
            s[..., j] += 1.0
        return seq, states if isinstance(state, tuple) else states[0]

    return hook


def _traced_run(
    model: nn.Module,
    x: Any,
    watched: list[tuple[str, nn.Module]],
    blocked: dict[str, list[Any]] | None,
    hook: tuple[nn.Module, Any],
) -> tuple[Any, dict[str, list[Any]], dict[str, list[Any]]]:
    """``(output, {module: first input per call}, {module: output per call})`` of one forward pass.

    ``blocked``: modules that return these recorded outputs instead of their own (call by call);
    ``hook``: a ``(module, forward hook)`` pair active during the pass.
    """
    inputs: dict[str, list[Any]] = {n: [] for n, _ in watched}
    outputs: dict[str, list[Any]] = {n: [] for n, _ in watched}

    def pre(n: str, args: tuple[Any, ...]) -> None:
        inputs[n].append(args[0].detach().clone() if args and isinstance(args[0], Tensor) else None)

    def post(n: str, out: Any) -> Any:
        if blocked is not None and n in blocked:
            return copy.deepcopy(blocked[n][len(inputs[n]) - 1])
        outputs[n].append(copy.deepcopy(out))
        return None

    handles = [hook[0].register_forward_hook(hook[1])]
    for n, m in watched:
        handles.append(m.register_forward_pre_hook(lambda _m, a, n=n: pre(n, a)))
        handles.append(m.register_forward_hook(lambda _m, _a, o, n=n: post(n, o)))
    try:
        out = _forward(model, x)
    finally:
        for hd in handles:
            hd.remove()
    return out, inputs, outputs


@torch.no_grad()
def _readers(model: nn.Module, name: str, x: Any) -> tuple[list[str], str | None]:
    """The modules reading ``name``'s hidden units directly, or the reason they cannot follow.

    Adds 1 to one unit of the module's outputs (sequence and final states) and records which
    modules' inputs change. Every module with parameters returns its unperturbed output, so only
    direct readers (possibly through parameter-free ops: ReLU, slicing, dropout) see the change;
    a direct reader must be an ``nn.Linear`` or a recurrent module whose input feature ``j``, and
    only that one, moved when unit ``j`` did.
    """
    rnn = model.get_submodule(name)
    h = rnn.hidden_size
    watched = [
        (n, m) for n, m in model.named_modules()
        if n and n != name and not n.startswith(name + ".") and not name.startswith(n + ".")
        and (next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None)
    ]
    has_params = {n for n, m in watched if next(m.parameters(recurse=False), None) is not None}
    calls: list[Any] = []
    base, base_in, base_out = _traced_run(
        model, x, watched, None, (rnn, lambda _m, _a, out: calls.append(out))
    )
    if len(calls) != 1 or not isinstance(calls[0], tuple) or not isinstance(calls[0][0], Tensor):
        return [], "called more than once or on a packed sequence (not pruned)"
    blocked = {n: base_out[n] for n in has_params}

    readers: set[str] = set()
    for j in sorted({0, h // 2, h - 1}):
        out, seen, _ = _traced_run(model, x, watched, blocked, (rnn, _bump(j)))
        if not _same(out, base):
            return [], "its hidden units reach the network output"
        for n, m in watched:
            if len(seen[n]) != len(base_in[n]):
                return [], f"the forward pass changed at {n!r} when a unit moved"
            for a, b in zip(seen[n], base_in[n], strict=True):
                if a is None or b is None or torch.equal(a, b):
                    continue
                if type(m) not in _READER_TYPES:
                    if n in has_params:
                        return [], f"its hidden units reach {n!r} ({type(m).__name__}), which cannot follow"
                    continue  # parameter-free (ReLU, dropout): the change flows on to a reader
                width = m.in_features if isinstance(m, nn.Linear) else m.input_size
                moved = (a - b).abs().reshape(-1, a.shape[-1]).amax(0) > 0
                if a.shape[-1] != h or width != h or moved.nonzero().flatten().tolist() != [j]:
                    return [], f"{n!r} does not read the hidden units one feature per unit"
                readers.add(n)
    if not readers:
        return [], "nothing reads its hidden units"
    order = [n for n, _ in watched]
    return sorted(readers, key=order.index), None


def hidden_groups(model: nn.Module, x: Any) -> list[HiddenGroup]:
    """One ``HiddenGroup`` per ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` of ``model`` (exact types).

    Groups that cannot be pruned carry the ``reason``; ``model`` is run but not modified.
    """
    out = []
    for name, m in model.named_modules():
        if type(m) not in GATES:
            continue
        spec = HiddenGroup(root=name, n=m.hidden_size, atoms=[list(range(m.hidden_size))],
                           members=[name], num_layers=m.num_layers)
        spec.reason = _why_not(m)
        if spec.reason is None:
            with eval_mode(model):  # dropout would move the probe's outputs
                spec.readers, why = _readers(model, name, x)
            if why is not None:
                spec.reason = why
        out.append(spec)
    return out
