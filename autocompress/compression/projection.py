"""Shared projections of stacked recurrent layers (Prabhavalkar et al. 2016): the ``proj_rank`` knob.

In a stacked LSTM / GRU / RNN, layer ``l``'s recurrent matrix ``W_hh^l`` and layer ``l + 1``'s input
matrix ``W_ih^(l+1)`` both multiply layer ``l``'s hidden state ``h^l``. ``proj_rank = s`` replaces
the pair by one projection ``P`` (``r x H``, ``r = max(1, floor(s H + 0.5))``) and two thin matrices,
``W_hh^l ~ Z_h P`` and ``W_ih^(l+1) ~ Z_x P``, from the truncated SVD of the stacked
``[W_hh^l; W_ih^(l+1)]`` (``lowrank_rnn.shared_factors``; exact at ``r = H``). ``P h^l_t`` is computed once
per step: layer ``l + 1`` reads it as its input and layer ``l`` as its next recurrent input. The
last layer's ``W_hh`` has no partner and is factorised alone at the same fraction
(``lowrank.factorised_rank``); the first layer's ``W_ih`` stays dense. A pair is shared only where
``r (H + 2 G H) < 2 G H^2`` (``G`` gates), so the knob never adds work. The compressed module is a
``lowrank_rnn.LowRankRNN`` (its steps unrolled in ONNX, like the ``rank`` knob's).

Cost model: ``cost_delta`` gives the change of MACs (per step: ``r H + 2 G H r`` instead of
``2 G H^2`` per pair, ``r (G H + H)`` instead of ``G H^2`` for the last ``W_hh``, times the steps),
parameters, storage at the layer's weight bits (per-row scales of ``Z_h`` and ``Z_x``; ``P`` folds
its scales into both, as the last ``W_hh``'s first factor does into its second,
``quantize.quantize_factorised_``, so sharing never adds scales) and BOPs, at the hidden size the ``prune`` knob leaves. The ``rank`` knob factorises the same matrices
separately, so a space offers one of the two.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autocompress.compression.knobs import (
    Knob,
    KnobType,
    _set_submodule,
    register_knob,
    weight_storage_bytes,
)

if TYPE_CHECKING:
    from torch import nn

    from autocompress.compression.policy import CompressionPolicy
    from autocompress.compression.space import CompressionSpace

__all__ = ["ProjRankKnob", "shared_projection_costs"]

_RNN_KINDS = ("lstm", "gru", "rnn")


def _stored(numel: int, rows: int, bits: int, folded: bool = False) -> float:
    """Bytes of one weight of ``numel`` entries in ``rows`` rows at ``bits`` (``count_size_bytes``)."""
    # quantize loads torch, which the registry's modules must not at import
    from autocompress.compression.quantize import weight_scale_count

    scales = 0 if folded else weight_scale_count((rows,), bits)
    return weight_storage_bytes(numel, numel, rows, bits, scales)


def shared_projection_costs(
    gates: int, hidden: int, num_layers: int, steps: float, fraction: float, bits: int
) -> dict[str, float]:
    """``macs`` (per sample), ``params`` and ``size_bytes`` saved (negative) by ``proj_rank =
    fraction`` on a module of ``num_layers`` layers of ``hidden`` units, against the dense matrices
    it replaces, with weights at ``bits``."""
    # lowrank_rnn loads torch, which the registry's modules must not at import
    from autocompress.compression.lowrank_rnn import shared_ranks

    out = {"macs": 0.0, "params": 0.0, "size_bytes": 0.0}
    found = shared_ranks(gates, hidden, num_layers, fraction)
    if found is None:
        return out
    pairs, last = found
    g_h = gates * hidden
    dense = g_h * hidden
    for r in pairs:
        if r is None:
            continue
        new = r * hidden + 2 * g_h * r
        out["macs"] += steps * (new - 2 * dense)
        out["params"] += new - 2 * dense
        out["size_bytes"] += (_stored(r * hidden, r, bits, folded=bits < 32) + 2 * _stored(g_h * r, g_h, bits)
                              - 2 * _stored(dense, g_h, bits))
    if last is not None:
        new = last * (g_h + hidden)
        out["macs"] += steps * (new - dense)
        out["params"] += new - dense
        out["size_bytes"] += (_stored(last * hidden, last, bits, folded=bits < 32)
                              + _stored(g_h * last, g_h, bits) - _stored(dense, g_h, bits))
    return out


class ProjRankKnob(KnobType):
    """Fraction of the hidden size kept by the shared projection of each pair of stacked
    recurrent layers (see the module docstring)."""

    name = "proj_rank"
    identity = 1.0
    default = False
    stage = 20
    costs = ("macs", "params", "size_bytes", "bops", "latency_ms")
    restats = True
    label = "proj rank"
    allowed = "0 < proj_rank <= 1"
    excludes = ("rank",)
    excludes_why = "both factorise the recurrent matrices"

    def in_range(self, value: float) -> bool:
        return math.isfinite(value) and 0.0 < value <= 1.0

    def layer_knob(self, kind: str, module: nn.Module) -> Any:
        # lowrank_rnn loads torch, which the registry's modules must not at import
        from autocompress.compression import lowrank_rnn

        if kind not in _RNN_KINDS:
            return f"{kind} layers have no recurrent matrices to share a projection"
        if not lowrank_rnn.can_factorise(module):
            return "bidirectional and proj_size layers are not factorised"
        if module.num_layers < 2:
            return "one layer: no pair of layers to share a projection (the rank knob factorises it)"
        low = 1.0 / module.hidden_size
        return Knob(self.name, low=low, high=1.0, most_compressed=low, least_compressed=1.0)

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        # lowrank_rnn loads torch, which the registry's modules must not at import
        from autocompress.compression import lowrank_rnn

        for point in space.decision_points:
            value = policy.get(point.name).proj_rank
            if value >= 1.0 or self.name not in point.knobs:
                continue
            new = lowrank_rnn.share_projections(model.get_submodule(point.name), value)
            if new is not None:
                _set_submodule(model, point.name, new)

    def cost_delta(self, value: float | int, space: CompressionSpace, name: str,
                   policy: CompressionPolicy) -> dict[str, float]:
        # prune loads torch, which the registry's modules must not at import
        from autocompress.compression.prune import removed_units

        shapes, action = space._base_shapes, policy.get(name)
        gates_h, hidden = shapes[f"{name}.weight_hh_l0"]
        layers = sum(1 for k in shapes if k.startswith(f"{name}.weight_hh_l"))
        if action.prune > 0:
            hidden -= int(removed_units(action.prune, hidden, space.round_to))
        out = shared_projection_costs(gates_h // shapes[f"{name}.weight_hh_l0"][1], hidden, layers,
                                      space._layers[name].steps, float(value), action.w_bits)
        out["bops"] = out["macs"] * action.w_bits * action.a_bits
        return out


register_knob(ProjRankKnob())
