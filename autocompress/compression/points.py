"""Decision points: the layers a policy acts on, the knobs each offers (and why not others).

``build_points`` turns the discovered layers and groups (``discovery.py``) and the compiled cost
model (``costmodel.py``) into one ``DecisionPoint`` per MAC-bearing layer with at least one knob:
the ``prune`` knob on the first member layer of each prunable group, ``w_bits``/``a_bits`` where
the layer can be quantized, ``rank`` where a factorisation can save MACs (its lowest value keeps
rank 1 of the largest matrix), and the storage knobs their types offer. A knob left out is noted
with its reason (``CompressionSpace.describe``). Each point carries raw AMC-style features
(``FEATURE_NAMES``), min-max normalised by :func:`feature_matrix`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from autocompress.compression.knobs import Knob

if TYPE_CHECKING:
    from autocompress.compression import prune
    from autocompress.compression.costmodel import CostModel

FEATURE_NAMES: tuple[str, ...] = (
    "index",
    "kind",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "fmap_h",
    "fmap_w",
    "macs",
    "params",
    "prunable",
    "rankable",
)
_KINDS: tuple[str, ...] = (
    "conv",
    "depthwise_conv",
    "grouped_conv",
    "linear",
    "lstm",
    "gru",
    "rnn",
    "attention",
)


@dataclass(frozen=True)
class DecisionPoint:
    """A layer the policy can act on.

    Attributes:
        name: module FQN (the key in ``CompressionPolicy.layers``).
        kind: ``conv``, ``depthwise_conv``, ``grouped_conv``, ``linear``, ``lstm``, ``gru``,
            ``rnn`` or ``attention``.
        index: position in ``space.decision_points``.
        knobs: ``{knob name: Knob}`` for the knobs this layer supports (others are absent).
        features: static raw features (see ``FEATURE_NAMES``); normalised in
            ``space.feature_matrix()``.
        notes: knobs left out here and why.
    """

    name: str
    kind: str
    index: int
    knobs: Mapping[str, Knob]
    features: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mapping proxies do not pickle / deep-copy: rebuild them from plain dicts
        return (
            _make_point,
            (self.name, self.kind, self.index, dict(self.knobs), dict(self.features), self.notes),
        )


def _make_point(
    name: str,
    kind: str,
    index: int,
    knobs: dict[str, Knob],
    features: dict[str, float],
    notes: tuple[str, ...],
) -> DecisionPoint:
    return DecisionPoint(
        name, kind, index, MappingProxyType(knobs), MappingProxyType(features), notes
    )


def build_points(
    cost: CostModel,
    groups: Sequence[prune.GroupSpec],
    *,
    knob_types: Sequence[str],
    max_prune: float,
    bits: tuple[int, ...],
    modules_kind: Mapping[str, type[nn.Module]],
    extra_knobs: Mapping[str, Mapping[str, Any]],
    untraced: bool,
) -> tuple[list[DecisionPoint], list[int], list[int]]:
    """One decision point per MAC-bearing layer that has at least one knob.

    Returns the points and, per point, its layer index in ``cost`` and its prunable group's index
    (-1: none). ``extra_knobs`` holds what each storage knob type offers per layer (a ``Knob`` or
    why not); ``untraced``: group discovery left notes (the model could not be fully probed).
    """
    bits_knob = {
        k: Knob(k, choices=bits, most_compressed=min(bits), least_compressed=32)
        for k in ("w_bits", "a_bits")
    }
    reasons = {g.point: g.reason for g in groups if not g.prunable}
    follows = {}
    for g in groups:
        for mname in g.members:
            follows.setdefault(mname, g.point)
    points: list[DecisionPoint] = []
    point_layer: list[int] = []
    point_group: list[int] = []
    x0 = np.zeros(cost.n_cols)
    numel0 = cost.numel(x0)
    rows0 = cost.rows(x0)
    for li, lay in enumerate(cost.layer_list):
        if lay.steps == 0 and lay.const_q == 0:
            continue  # never called in the forward pass
        knobs: dict[str, Knob] = {}
        notes: list[str] = []
        gi = cost.group_index.get(lay.name, -1)
        if "prune" in knob_types:
            if gi >= 0:
                knobs["prune"] = Knob(
                    "prune",
                    low=0.0,
                    high=max_prune,
                    most_compressed=max_prune,
                    least_compressed=0.0,
                )
            elif lay.name in reasons:
                notes.append(f"prune: {reasons[lay.name]}")
            elif lay.name in follows and follows[lay.name] in cost.group_index:
                notes.append(f"prune: output channels follow group {follows[lay.name]!r}")
            elif lay.name in follows:
                notes.append(f"prune: in unprunable group {follows[lay.name]!r}")
            elif untraced:
                notes.append("prune: model not traceable by torch-pruning")
            elif lay.kind in ("lstm", "gru", "rnn"):
                notes.append("prune: hidden size is not pruned")
            else:
                notes.append("prune: not a group root")
        for k in ("w_bits", "a_bits"):
            if k in knob_types:
                if lay.quant:
                    knobs[k] = bits_knob[k]
                else:
                    cls_name = modules_kind[lay.name].__name__
                    notes.append(f"{k}: {cls_name} layers are not quantized")
        if "rank" in knob_types:
            if lay.rank:
                # the most compressed value keeps rank 1 of every matrix (an RNN has several)
                tensors = (lay.weights if lay.kind in ("lstm", "gru", "rnn") else lay.weights[:1])
                full = 0.0
                for t in (cost.tensor_index[n] for n in tensors):
                    full = max(full, min(rows0[t], numel0[t] / rows0[t]))
                low = 1.0 / full
                knobs["rank"] = Knob(
                    "rank", low=low, high=1.0, most_compressed=low, least_compressed=1.0
                )
            elif lay.kind in ("depthwise_conv", "grouped_conv"):
                notes.append("rank: grouped/depthwise conv is not factorised")
            elif modules_kind[lay.name] in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
                notes.append("rank: no rank saves MACs here (r < m*n/(m+n) impossible)")
            elif lay.kind in ("lstm", "gru", "rnn"):
                notes.append("rank: bidirectional and proj_size layers are not factorised")
            else:
                notes.append("rank: not supported for this layer type")
        for k, offered in extra_knobs.get(lay.name, {}).items():
            if isinstance(offered, str):
                notes.append(f"{k}: {offered}")
            else:
                knobs[k] = offered
        if not knobs:
            continue
        macs = float(lay.steps * (cost.W[li] @ numel0) + lay.const_q + lay.const_f)
        feats = {
            "index": float(len(points)),
            "kind": float(_KINDS.index(lay.kind)),
            "in_channels": float(lay.in_ch),
            "out_channels": float(lay.out_ch),
            "kernel": float(lay.kernel),
            "stride": float(lay.stride),
            "fmap_h": float(lay.fmap[0]),
            "fmap_w": float(lay.fmap[1]),
            "macs": macs,
            "params": float(cost.Q[li] @ numel0),
            "prunable": float("prune" in knobs),
            "rankable": float("rank" in knobs),
        }
        points.append(
            DecisionPoint(
                name=lay.name,
                kind=lay.kind,
                index=len(points),
                knobs=MappingProxyType(knobs),
                features=MappingProxyType(feats),
                notes=tuple(notes),
            )
        )
        point_layer.append(li)
        point_group.append(gi)
    return points, point_layer, point_group


def feature_matrix(points: Sequence[DecisionPoint]) -> np.ndarray:
    """Static AMC-style features, ``(n_points, len(FEATURE_NAMES))``, min-max normalised to [0, 1]."""
    raw = np.array([[p.features[f] for f in FEATURE_NAMES] for p in points], dtype=np.float64)
    if raw.size == 0:
        return raw.reshape(0, len(FEATURE_NAMES))
    lo, hi = raw.min(0), raw.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (raw - lo) / span
