"""Recurrent layers (survey §3): hidden-size pruning with every gate consistent, and low rank.

Low rank (``LowRankRNN``, after Prabhavalkar et al. 2016): each layer's input matrix ``weight_ih``
and recurrent matrix ``weight_hh`` is replaced by the truncated SVD of the rank the ``rank`` knob
keeps (``lowrank.factorised_rank`` per matrix, so a matrix stays dense where no rank saves), and
the gates run in a Python loop that follows PyTorch's equations. The rest of this docstring is
about hidden-size pruning.

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
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from autocompress.compression.counting import eval_mode
from autocompress.compression.lowrank import (
    LowRank,
    _truncated_factors,
    factorise,
    factorised_rank,
)
from autocompress.compression.prune import GroupSpec, removed_units
from autocompress.compression.quantize import ActQuant, quantize_factorised_, quantize_module_

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

#: Gates per hidden unit of each recurrent type (rows of ``weight_ih`` / ``weight_hh`` per unit).
GATES: dict[type[nn.Module], int] = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
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


# --- low rank ---------------------------------------------------------------------------------------
def can_factorise(module: nn.Module) -> bool:
    """Plain unidirectional ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` without ``proj_size``.

    Its recurrent matrix ``G H x H`` can always be factorised with a saving (``r < G H / (G + 1)``).
    """
    return (
        type(module) in GATES
        and not module.bidirectional
        and not getattr(module, "proj_size", 0)
        and module.hidden_size >= 2
    )


def _matrix(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    bias_name = name.replace("weight", "bias")
    return getattr(module, name).detach(), (getattr(module, bias_name).detach() if module.bias else None)


@torch.no_grad()
def _linear(w: Tensor, b: Tensor | None, r: int | None) -> nn.Module:
    """``x -> x w^T + b`` as one ``nn.Linear``, or as a rank-``r`` ``LowRank`` pair (truncated SVD)."""
    m, n = w.shape
    if r is None:
        dense = nn.Linear(n, m, bias=b is not None).to(w.device, w.dtype)
        dense.weight.copy_(w)
        if b is not None:
            dense.bias.copy_(b)
        return dense
    template = nn.Linear(n, m, bias=b is not None).to(w.device, w.dtype)
    template.weight.copy_(w)
    if b is not None:
        template.bias.copy_(b)
    return factorise(template, r)


@torch.no_grad()
def shared_factors(w_hh: Tensor, w_ih_next: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(Z_h, Z_x, P)`` with ``W_hh^l ~ Z_h P`` and ``W_ih^(l+1) ~ Z_x P`` (Prabhavalkar et al. 2016).

    Both matrices read layer ``l``'s hidden state, so one projection ``P`` (``r x H``) can serve
    both: the truncated SVD of the stacked ``[W_hh^l; W_ih^(l+1)]`` (``2 G H x H``) gives ``Z P``
    with ``Z = [Z_h; Z_x]``, the best rank-``r`` approximation of the pair jointly; at ``r = H``
    it is exact (up to float rounding).
    """
    z, p = _truncated_factors(torch.cat([w_hh, w_ih_next]), r)
    m = w_hh.shape[0]
    return z[:m].contiguous(), z[m:].contiguous(), p.contiguous()


class LowRankRNN(nn.Module):
    """An ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` whose input and recurrent matrices may be factorised.

    Low-rank RNNs (Prabhavalkar et al. 2016, survey §3): per layer ``k``, ``ih[k]`` computes
    ``W_ih x + b_ih`` and ``hh[k]`` computes ``W_hh h + b_hh``, each an ``nn.Linear`` or a
    ``LowRank`` pair ``(n -> r) -> (r -> m)`` holding the rank-``r`` truncated SVD of the matrix.
    With a shared projection between layers ``k`` and ``k + 1`` (``shared[k] = r``), ``proj[k]``
    computes ``p = P h`` (``H -> r``) once per step and ``hh[k]`` (``Z_h``) and ``ih[k + 1]``
    (``Z_x``) read ``p`` (``shared_factors``): layer ``k + 1``'s input sequence is ``p``, and layer
    ``k``'s next step reuses it. ``proj[k]`` is an ``nn.Identity`` where nothing is shared. The
    gates follow PyTorch's equations exactly (LSTM i, f, g, o; GRU r, z, n with the reset gate
    applied to ``W_hn h + b_hn``), so with no matrix factorised (or at full rank) it computes what
    the original module computes, up to float rounding. The input projections of all steps are one
    batched product; the recurrence is a Python loop over steps (an ONNX export unrolls it for the
    sequence length it was traced with). Returns ``(output, (h_n, c_n))`` for an LSTM and
    ``(output, h_n)`` otherwise, as the original does; inter-layer dropout is applied in training.
    """

    def __init__(self, module: nn.RNNBase, ranks: list[tuple[int | None, int | None]],
                 shared: list[int | None] | None = None) -> None:
        super().__init__()
        if not can_factorise(module):
            raise TypeError(f"cannot factorise a {type(module).__name__} of this configuration")
        shared = list(shared or [])
        if len(shared) >= module.num_layers:
            raise ValueError(f"shared: {len(shared)} projections for {module.num_layers} layers "
                             f"(at most one between each pair of layers)")
        self.mode = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[type(module)]
        self.nonlinearity = getattr(module, "nonlinearity", "tanh")
        self.input_size, self.hidden_size = module.input_size, module.hidden_size
        self.num_layers, self.batch_first = module.num_layers, module.batch_first
        self.dropout = float(module.dropout)
        self.ih = nn.ModuleList()
        self.hh = nn.ModuleList()
        self.proj = nn.ModuleList()
        for k, (r_ih, r_hh) in enumerate(ranks):
            r_in = shared[k - 1] if 0 < k <= len(shared) else None
            r_out = shared[k] if k < len(shared) else None
            if r_in is None:
                self.ih.append(_linear(*_matrix(module, f"weight_ih_l{k}"), r_ih))
            if r_out is None:
                self.hh.append(_linear(*_matrix(module, f"weight_hh_l{k}"), r_hh))
                self.proj.append(nn.Identity())
                continue
            (w_hh, b_hh), (w_ih, b_ih) = _matrix(module, f"weight_hh_l{k}"), _matrix(module, f"weight_ih_l{k + 1}")
            z_h, z_x, p = shared_factors(w_hh, w_ih, r_out)
            self.proj.append(_linear(p, None, None))
            self.hh.append(_linear(z_h, b_hh, None))
            self.ih.append(_linear(z_x, b_ih, None))  # ih[k + 1]: layer k + 1 reads P h

    def _step(self, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.mode == "lstm":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.mode == "gru":
            ir, iz, inn = gi.chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            return (1.0 - z) * n + z * h, None
        pre = gi + gh
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)), None

    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        b, steps = x.shape[0], x.shape[1]
        zeros = x.new_zeros(self.num_layers, b, self.hidden_size)
        if hx is None:
            h0, c0 = zeros, zeros
        elif self.mode == "lstm":
            h0, c0 = (s.unsqueeze(1) if unbatched else s for s in hx)
        else:
            h0, c0 = (hx.unsqueeze(1) if unbatched else hx), zeros
        hs, cs = [], []
        for k in range(self.num_layers):
            gi = self.ih[k](x)  # every step's input projection at once
            h, c = h0[k], c0[k] if self.mode == "lstm" else None
            proj = self.proj[k]
            shared = not isinstance(proj, nn.Identity)
            # what hh[k] reads: h, or its shared projection (P 0 = 0: no product for a zero state)
            p = (proj(h) if hx is not None else h.new_zeros(b, proj.out_features)) if shared else h
            outs, pouts = [], []
            for t in range(steps):
                h, c = self._step(gi[:, t], self.hh[k](p), h, c)
                outs.append(h)
                if shared:
                    p = proj(h)
                    pouts.append(p)
                else:
                    p = h
            x = torch.stack(outs, 1)
            if self.dropout and self.training and k + 1 < self.num_layers:
                x = nn.functional.dropout(x, self.dropout, training=True)
                if shared:  # the next layer reads P dropout(h), not the recurrence's P h
                    x = proj(x)
            elif shared:
                x = torch.stack(pouts, 1)
            hs.append(h)
            cs.append(c)
        out = x if self.batch_first else x.transpose(0, 1)
        h_n = torch.stack(hs)
        if unbatched:
            out, h_n = out.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        if self.mode == "lstm":
            c_n = torch.stack(cs)
            return out, (h_n, c_n.squeeze(1) if unbatched else c_n)
        return out, h_n

    def matrices(self) -> list[nn.Module]:
        """The layers' matrix modules in ``weight_ih_l0, weight_hh_l0, weight_ih_l1, ...`` order,
        each shared projection after the ``hh`` of its layer."""
        return [m for k in range(self.num_layers) for m in (self.ih[k], self.hh[k], self.proj[k])
                if not isinstance(m, nn.Identity)]

    def quantize_(self, w_bits: int, a_bits: int) -> None:
        """Quantize every matrix to ``w_bits``; ``a_bits`` applies to the input sequence only.

        The recurrent inputs (the hidden state) and the inputs of later layers stay float, as in a
        quantized ``nn.LSTM`` (``quantize.QuantLSTM``): the states are not quantized. A shared
        projection ``P`` stores integer levels, its scales folded into ``Z_h`` and ``Z_x``
        (``quantize.quantize_factorised_``), so sharing never adds scales.
        """
        done: set[int] = set()
        for k, proj in enumerate(self.proj):  # a shared P folds its scales into Z_h and Z_x
            if not isinstance(proj, nn.Identity):
                quantize_factorised_(proj, [self.hh[k], self.ih[k + 1]], w_bits, 32)
                done |= {id(proj), id(self.hh[k]), id(self.ih[k + 1])}
        for idx, m in enumerate(self.matrices()):
            a = a_bits if idx == 0 else 32
            if id(m) in done:
                continue
            if isinstance(m, LowRank):
                quantize_factorised_(m[0], m[1], w_bits, 32)
                if a < 32:  # the input sequence only, not the factor between the two
                    m[0].act_quant = ActQuant(a).to(m[0].weight.device)
            else:
                quantize_module_(m, w_bits, a)


def matrix_ranks(
    gates: int, input_size: int, hidden_size: int, num_layers: int, rank: float
) -> list[tuple[int | None, int | None]] | None:
    """``rnn_ranks`` from the shapes alone (``gates`` rows per unit, see ``GATES``): what the
    latency table needs to know which matrices a rank fraction factorises at given widths."""
    ranks = []
    for k in range(num_layers):
        n_ih = input_size if k == 0 else hidden_size
        ranks.append((factorised_rank(gates * hidden_size, n_ih, rank),
                      factorised_rank(gates * hidden_size, hidden_size, rank)))
    return ranks if any(r is not None for pair in ranks for r in pair) else None


def rnn_ranks(module: nn.Module, rank: float) -> list[tuple[int | None, int | None]] | None:
    """The kept rank of each layer's ``(weight_ih, weight_hh)`` at fraction ``rank`` (None: stays
    dense, as ``lowrank.factorised_rank`` decides per matrix), or None if no matrix is factorised."""
    ranks = []
    for k in range(module.num_layers):
        pair = []
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
            m, n = getattr(module, name).shape
            pair.append(factorised_rank(m, n, rank))
        ranks.append((pair[0], pair[1]))
    return ranks if any(r is not None for pair in ranks for r in pair) else None


def factorise_rnn(module: nn.Module, rank: float) -> LowRankRNN | None:
    """``LowRankRNN`` of ``module`` with each matrix kept at fraction ``rank`` of its full rank, or
    None when no matrix would save anything (``lowrank.factorised_rank``)."""
    ranks = rnn_ranks(module, rank)
    return None if ranks is None else LowRankRNN(module, ranks)


def shared_rank(gates: int, hidden: int, fraction: float) -> int | None:
    """The rank of a shared projection at ``fraction`` of ``hidden``, or None when sharing saves
    nothing: ``r = max(1, floor(fraction * H + 0.5))`` stores ``r (H + 2 G H)`` weights instead of
    the pair's ``2 G H^2``."""
    if fraction >= 1.0:
        return None
    r = max(1, int(math.floor(fraction * hidden + 0.5)))
    return r if r * (hidden + 2 * gates * hidden) < 2 * gates * hidden * hidden else None


def shared_ranks(
    gates: int, hidden: int, num_layers: int, fraction: float
) -> tuple[list[int | None], int | None] | None:
    """``(shared projection rank per layer pair, rank of the last layer's recurrent matrix)`` at
    ``fraction`` (Prabhavalkar et al. 2016: the last layer's ``W_hh`` has no partner and is
    factorised alone, as ``lowrank.factorised_rank`` decides), or None when nothing changes."""
    r = shared_rank(gates, hidden, fraction)
    last = factorised_rank(gates * hidden, hidden, fraction)
    if r is None and last is None:
        return None
    return [r] * (num_layers - 1), last


def share_projections(module: nn.Module, fraction: float) -> LowRankRNN | None:
    """``LowRankRNN`` of a stacked ``module`` with one shared projection between each pair of
    layers at ``fraction`` of the hidden size and the last layer's ``W_hh`` factorised alone (the
    first layer's ``W_ih`` stays dense), or None when that saves nothing."""
    g, h, n = GATES[type(module)], module.hidden_size, module.num_layers
    found = shared_ranks(g, h, n, fraction)
    if found is None:
        return None
    pairs, last = found
    ranks: list[tuple[int | None, int | None]] = [(None, None)] * (n - 1) + [(None, last)]
    return LowRankRNN(module, ranks, shared=pairs)
