"""The four structural knobs: ``prune``, ``w_bits``, ``a_bits`` and ``rank``.

Their costs are the space's closed form (``costmodel.py``), not ``KnobType`` hooks; here are their
range checks, report formats and transforms. Registered by ``knobs.py`` before every other knob
(registration order is the order of env actions and report columns). Like the registry, this
module loads without torch: the transforms import the modules that touch tensors when applied.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autocompress.compression.knobs import ALLOWED_BITS, KnobType, _set_submodule, register_knob
from autocompress.errors import UserInputError

if TYPE_CHECKING:
    from torch import nn

    from autocompress.compression.policy import CompressionPolicy
    from autocompress.compression.space import CompressionSpace

__all__ = ["BitsKnob", "PruneKnob", "RankKnob"]


class PruneKnob(KnobType):
    """Structured channel pruning (``prune.py``): the fraction of a group's output channels removed."""

    name = "prune"
    identity = 0.0
    stage = 10
    costs = ("macs", "params", "size_bytes", "bops", "latency_ms")
    restats = True
    label = "prune"
    allowed = "0 <= prune < 1"

    def in_range(self, value: float) -> bool:
        return math.isfinite(value) and 0.0 <= value < 1.0

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        # prune loads torch and torch-pruning: the registry (this module) is read without them
        from autocompress.compression import prune

        decisions = [(g, policy.get(g.point).prune) for g in space._pgroups
                     if policy.get(g.point).prune > 0]
        if not decisions:
            return
        graph = any(not g.own_pruner for g, _ in decisions)  # RNN hidden units need none
        DG = prune.build_graph(model, space.example_input) if graph else None
        _, out_removed = prune.prune_groups_(
            model, DG, decisions, round_to=space.round_to,
            importance=ctx.get("importance") or space.importance, calib=ctx.get("raw"),
        )
        del DG
        if ctx.get("reconstruct"):
            # apply loads torch and imports the registry (a cycle at module level)
            from autocompress.compression.apply import _reconstruct_

            _reconstruct_(ctx["original"], model, out_removed, ctx["inputs"])


class RankKnob(KnobType):
    """Low-rank factorisation by truncated SVD (``lowrank.py``; an RNN's input and recurrent matrices,
    ``lowrank_rnn.LowRankRNN``): the fraction of the rank kept."""

    name = "rank"
    identity = 1.0
    stage = 20
    costs = ("macs", "params", "size_bytes", "bops", "latency_ms")
    restats = True
    label = "rank"
    allowed = "0 < rank <= 1"

    def in_range(self, value: float) -> bool:
        return math.isfinite(value) and 0.0 < value <= 1.0

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        # lowrank and lowrank_rnn load torch: the registry (this module) is read without it
        from autocompress.compression import lowrank, lowrank_rnn

        for point in space.decision_points:
            value = policy.get(point.name).rank
            if "rank" not in point.knobs or value >= 1.0:
                continue
            module = model.get_submodule(point.name)
            if lowrank_rnn.can_factorise(module):  # its input and recurrent matrices, each by SVD
                new = lowrank_rnn.factorise_rnn(module, value)
                if new is not None:
                    _set_submodule(model, point.name, new)
                continue
            m, n = lowrank._dims(module)
            r = lowrank.factorised_rank(m, n, value)
            if r is not None:
                _set_submodule(model, point.name, lowrank.factorise(module, r))




class BitsKnob(KnobType):
    """Weight (``w_bits``) or input-activation (``a_bits``) bit-width (``quantize.py``)."""

    identity = 32
    integer = True
    stage = 40
    allowed = f"one of {ALLOWED_BITS}"

    def __init__(self, name: str, costs: tuple[str, ...], label: str) -> None:
        self.name = name  # type: ignore[misc]
        self.costs = costs  # type: ignore[misc]
        self.label = label  # type: ignore[misc]

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise UserInputError(
                f"LayerAction.{self.name}={value!r} is not an integer bit-width; allowed: {ALLOWED_BITS}"
            )
        if int(value) not in ALLOWED_BITS:
            raise UserInputError(
                f"LayerAction.{self.name}={int(value)!r} is not supported; allowed: {ALLOWED_BITS}"
            )
        return int(value)

    def format(self, value: float | int) -> str:
        return "fp32" if value == 32 else str(int(value))

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        # One quantized layer class carries both bit-widths: ``w_bits`` applies the pair.
        if self.name != "w_bits":
            return
        # these modules load torch: the registry (this module) is read without it
        from autocompress.compression import lowrank, lowrank_rnn, quantize

        for point in space.decision_points:
            action = policy.get(point.name)
            if action.w_bits >= 32 and action.a_bits >= 32:
                continue
            module = model.get_submodule(point.name)
            if isinstance(module, lowrank_rnn.LowRankRNN):
                module.quantize_(action.w_bits, action.a_bits)
            elif isinstance(module, lowrank.LowRank):
                quantize.quantize_factorised_(module[0], module[1], action.w_bits, action.a_bits)
            else:
                quantize.quantize_module_(module, action.w_bits, action.a_bits)


register_knob(PruneKnob())
register_knob(BitsKnob("w_bits", ("size_bytes", "bops", "latency_ms"), "w bits"))
register_knob(BitsKnob("a_bits", ("bops", "latency_ms"), "a bits"))
register_knob(RankKnob())
