"""Low-rank recurrent layers (Prabhavalkar et al. 2016, survey §3): the ``rank`` and ``proj_rank`` knobs.

``rank``: each layer's input matrix ``weight_ih`` and recurrent matrix ``weight_hh`` of an
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` is replaced by the truncated SVD of the rank the knob keeps
(``lowrank.factorised_rank`` per matrix, so a matrix stays dense where no rank saves), and the
gates run in a Python loop that follows PyTorch's equations (``LowRankRNN``). ``proj_rank``: one
projection shared by a layer's recurrent matrix and the next layer's input matrix
(:func:`share_projections`, ``projection.py``). Hidden-size pruning of the same layers is
``rnn.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from autocompress.compression.lowrank import (
    LowRank,
    _truncated_factors,
    factorise,
    factorised_rank,
)
from autocompress.compression.quantize import ActQuant, quantize_factorised_, quantize_module_

__all__ = [
    "GATES",
    "LowRankRNN",
    "can_factorise",
    "factorise_rnn",
    "matrix_ranks",
    "rnn_ranks",
    "share_projections",
    "shared_factors",
    "shared_rank",
    "shared_ranks",
]

#: Gates per hidden unit of each recurrent type (rows of ``weight_ih`` / ``weight_hh`` per unit).
GATES: dict[type[nn.Module], int] = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


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
