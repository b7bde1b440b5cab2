"""The per-layer compression space of a model: its decision points, knobs, policies and costs.

``CompressionSpace.from_model`` discovers the decision points once (one per conv / linear /
RNN / attention layer, the ``prune`` knob on the root layer of each prunable torch-pruning group)
and compiles the closed-form cost model, so that ``macs/params/size_bytes/bops(policy)`` are
evaluated without building any model (tens of microseconds; used inside search loops).

The space is a facade over three modules: ``discovery.py`` records the layers (one forward
pass) and *measures* how every parameter shape changes when one channel (unit) of each atom of
each group is removed (rather than encode torch-pruning's rules by hand); ``costmodel.py``
compiles those records into numpy arrays and evaluates a policy on them; ``points.py`` decides
which knobs each layer offers (and why others are left out). The space builds, validates and
describes policies; its base class ``SpaceCosts`` (``space_costs.py``) maps a policy onto the
cost model's rows and gives its costs. ``verify=True`` (default)
checks the prediction against a really pruned copy at ``max_prune`` and drops the prune knob of
any group where they disagree or torch-pruning fails, recording why (``describe()``).

Units: MACs per input sample (batch 1; FLOPs = 2 x MACs); params in elements; size in bytes;
BOPs = MACs x w_bits x a_bits (layers without a quantization knob count 32 x 32; a ``pow2_bits``
layer counts its ``pow2_bits`` as ``w_bits``, see ``costmodel.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.compression import prune
from autocompress.compression.costmodel import CostModel, _TooManyDims
from autocompress.compression.counting import count_macs, count_params

# discovery's helpers stay importable from here, where they lived before (unused ones: F401)
from autocompress.compression.discovery import (  # noqa: F401
    _discover_groups,
    _forward,
    _Layer,
    _layer_kind,
    _probe,
    _ProbeFailure,
    _record_coefs,
    _record_layers,
    _shapes,
    channels_removed,
)
from autocompress.compression.knobs import (
    ALLOWED_BITS,
    KNOB_TYPES,
    check_knob_set,
    default_knob_names,
    knob_names,
)
from autocompress.compression.points import (  # noqa: F401 - _make_point: older pickles
    FEATURE_NAMES,
    DecisionPoint,
    Knob,
    _make_point,
    build_points,
    feature_matrix,
)
from autocompress.compression.policy import _EXTRA_KNOBS, CompressionPolicy, LayerAction
from autocompress.compression.space_costs import SpaceCosts
from autocompress.errors import UserInputError

__all__ = ["DEFAULT_KNOBS", "FEATURE_NAMES", "KNOB_NAMES", "CompressionSpace", "DecisionPoint", "Knob"]

#: Every registered knob type (``compression/knobs.py``), and those a space offers by default.
KNOB_NAMES: tuple[str, ...] = knob_names()
DEFAULT_KNOBS: tuple[str, ...] = default_knob_names()
_IDENTITY = LayerAction()


class CompressionSpace(SpaceCosts):
    """Decision points of a model and the closed-form cost of any policy over them.

    Build it with ``CompressionSpace.from_model``. Every cost function is monotone: raising
    ``prune``, lowering bits or lowering ``rank`` never raises any cost.

    Example:
        >>> from autocompress.models import create_model
        >>> model = create_model("test_resnet")
        >>> space = CompressionSpace.from_model(model, torch.randn(1, 3, 16, 16))
        >>> policy = space.uniform(prune=0.5, w_bits=8)
        >>> space.macs(policy) < space.macs(space.identity())
        True
    """

    def __init__(self) -> None:  # use from_model
        self.decision_points: list[DecisionPoint] = []
        self.groups: list[prune.GroupSpec] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------------
    # construction
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_input: Any = None,
        *,
        knobs: Sequence[str] = DEFAULT_KNOBS,
        max_prune: float = 0.8,
        round_to: int = 1,
        importance: str = "l1",
        bits: Sequence[int] = ALLOWED_BITS,
        verify: bool = True,
    ) -> CompressionSpace:
        """Discover the decision points of ``model`` (which is not modified).

        Args:
            model: the model to compress.
            example_input: one input batch (a tensor or a tuple of tensors); defaults to
                ``torch.randn(1, *model.input_shape)``. Costs are per sample.
            knobs: which knob types to offer (registered names, ``KNOB_NAMES``; default
                ``DEFAULT_KNOBS``: prune, w_bits, a_bits, rank).
            max_prune: the largest ``prune`` ratio allowed at any point (``0 <= max_prune < 1``).
            round_to: kept channel counts are multiples of this (8/16 run faster on CPUs).
            importance: default channel importance for ``compress``: ``l1``, ``l2``, ``taylor``,
                or ``bn`` (network slimming: BatchNorm |gamma|; groups without a BatchNorm are
                ranked by ``l1``, and a model with none on any prunable group is refused).
            bits: bit-widths offered for ``w_bits``/``a_bits`` (32 is always included).
            verify: check the pruning cost model against a really pruned copy and drop the prune
                knob of groups where it disagrees (recommended; costs one extra pruning pass).

        Returns:
            The space.

        Raises:
            UserInputError: for a bad argument.
        """
        unknown = [k for k in knobs if k not in KNOB_NAMES]
        if unknown:
            raise UserInputError(f"unknown knob(s) {unknown}; allowed: {', '.join(KNOB_NAMES)}")
        if not (0.0 <= float(max_prune) < 1.0):
            raise UserInputError(
                f"max_prune={max_prune!r} is out of range; allowed: 0 <= max_prune < 1"
            )
        if int(round_to) != round_to or round_to < 1:
            raise UserInputError(f"round_to={round_to!r} must be a positive integer")
        if importance not in prune.IMPORTANCES:
            raise UserInputError(
                f"unknown importance {importance!r}; allowed: {', '.join(prune.IMPORTANCES)}"
            )
        check_knob_set(knobs)
        bad_bits = [b for b in bits if b not in ALLOWED_BITS]
        if bad_bits:
            raise UserInputError(f"unsupported bit-width(s) {bad_bits}; allowed: {ALLOWED_BITS}")
        if example_input is None:
            shape = getattr(model, "input_shape", None)
            if shape is None:
                raise UserInputError(
                    "example_input is required for a model without an `input_shape` attribute"
                )
            g = torch.Generator().manual_seed(0)
            example_input = torch.randn(1, *shape, generator=g)

        self = cls()
        self.example_input = example_input
        self.knob_types = tuple(knobs)
        self.max_prune = float(max_prune)
        self.round_to = int(round_to)
        self.importance = importance
        self.bits = tuple(sorted(set(int(b) for b in bits) | {32}))

        work = copy.deepcopy(model)
        self._layers = _record_layers(work, example_input)
        self.base_macs = count_macs(work, example_input)
        self.base_params = count_params(work)
        self._base_shapes = _shapes(work)
        self._modules_kind = {n: type(m) for n, m in work.named_modules()}
        # knobs other than the four structural ones: each type says what it offers per layer
        self._extra_knobs: dict[str, dict[str, Any]] = {
            layer.name: {
                k: KNOB_TYPES[k].layer_knob(layer.kind, work.get_submodule(layer.name))
                for k in _EXTRA_KNOBS
                if k in self.knob_types
            }
            for layer in self._layers.values()
        }

        # groups and shape coefficients
        self.groups, coef = [], {}
        if "prune" in knobs and max_prune > 0:
            self.groups, coef, notes = _discover_groups(work, example_input, self._layers)
            self.notes += notes
        self._coef = coef
        while True:
            try:
                self._build_arrays()
                break
            except _TooManyDims as exc:  # the closed form handles at most two pruned dims per tensor
                hit = [g for g in self.groups if g.point in exc.groups and g.prunable]
                if not hit:
                    raise RuntimeError(f"cannot model parameter {exc.name!r}") from exc
                for g in hit:
                    g.reason = f"parameter {exc.name!r} would be pruned along more than two dims"
        self._build_points()
        prune.check_importance(importance, work, self._pgroups)
        if verify and any(g.prunable for g in self.groups):
            self._verify(model)
        return self

    def _build_arrays(self) -> None:
        """Compile the cost model from the recorded layers, groups and coefficients."""
        self._cost = CostModel(
            self._layers, self.groups, self._coef, self._base_shapes, self.base_macs, self.round_to
        )

    @property
    def _pgroups(self) -> list[prune.GroupSpec]:
        """The prunable groups, in order (what ``compress`` prunes)."""
        return self._cost.pgroups

    def _build_points(self) -> None:
        """The decision points (``points.build_points``) and the tables that validate policies."""
        cost = self._cost
        points, self._point_layer, self._point_group = build_points(
            cost, self.groups, knob_types=self.knob_types, max_prune=self.max_prune,
            bits=self.bits, modules_kind=self._modules_kind, extra_knobs=self._extra_knobs,
            untraced=bool(self.notes),
        )
        bits = self.bits
        self.decision_points = points
        self._points_by_name = {p.name: p for p in points}
        self._pt_layer = {p.name: self._point_layer[i] for i, p in enumerate(points)}
        # allowed bit-widths per layer as a lookup table for the fast validity check
        allowed = np.zeros((len(cost.layer_list), 33), dtype=bool)
        allowed[:, 32] = True
        for p in points:
            if "w_bits" in p.knobs or "a_bits" in p.knobs:
                allowed[self._pt_layer[p.name], list(bits)] = True
        self._allowed_w = allowed.copy()
        self._allowed_a = allowed.copy()
        for p in points:
            li = self._pt_layer[p.name]
            if "w_bits" not in p.knobs:
                self._allowed_w[li, :32] = False
            if "a_bits" not in p.knobs:
                self._allowed_a[li, :32] = False
        self._names_cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self._restricted_bits = tuple(bits) != tuple(sorted(ALLOWED_BITS))
        self._last: tuple[CompressionPolicy | None, dict[str, float]] = (None, {})

    def _verify(self, model: nn.Module) -> None:
        """Prune a copy at ``max_prune`` everywhere; drop prune knobs where the model disagrees."""
        bad = self._check_pruned(model, [g for g in self.groups if g.prunable])
        if bad is None:
            return
        failing: dict[str, str] = {}
        for g in [g for g in self.groups if g.prunable]:
            why = self._check_pruned(model, [g])
            if why is not None:
                failing[g.point] = why
        for g in self.groups:
            if g.point in failing:
                g.reason = failing[g.point]
        if (
            not failing
            or self._check_pruned(model, [g for g in self.groups if g.prunable]) is not None
        ):
            for g in self.groups:
                if g.prunable:
                    g.reason = f"combined pruning disagreed with the cost model ({bad})"
        self._build_arrays()
        self._build_points()

    def _check_pruned(self, model: nn.Module, groups: list[prune.GroupSpec]) -> str | None:
        policy = CompressionPolicy({g.point: LayerAction(prune=self.max_prune) for g in groups})
        try:
            work = copy.deepcopy(model)
            graph = any(not g.own_pruner for g in groups)
            DG = prune.build_graph(work, self.example_input) if graph else None
            prune.prune_groups_(
                work,
                DG,
                [(g, self.max_prune) for g in groups],
                round_to=self.round_to,
                importance="l1",
            )
            del DG
            macs = count_macs(work, self.example_input)
            params = count_params(work)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not offer this knob
            return f"torch-pruning failed ({type(exc).__name__}: {exc})"
        want = self.costs(policy, validate=False)
        if (
            params != round(want["params"])
            or abs(macs - want["macs"]) > 1e-6 * max(1.0, want["macs"]) + 1
        ):
            return (
                f"pruned model has {macs} MACs / {params} params, "
                f"predicted {want['macs']:.0f} / {want['params']:.0f}"
            )
        return None

    # ------------------------------------------------------------------------------------------
    # policies
    @property
    def names(self) -> list[str]:
        """Decision point names, in order."""
        return [p.name for p in self.decision_points]

    def __len__(self) -> int:
        return len(self.decision_points)

    def __getitem__(self, name: str) -> DecisionPoint:
        return self._points_by_name[name]

    def channels_removed(
        self, model: nn.Module, point: str, ratios: list[float]
    ) -> dict[str, tuple[list[float], list[float]]]:
        """Channels each layer of ``model`` (the base model) loses at each prune ratio of ``point``.

        ``{layer: (removed inputs, removed outputs)}`` from the probed coefficients
        (``discovery.channels_removed``): what a latency lookup table needs, without probing again.
        """
        return channels_removed(model, self.groups, self._coef, self.round_to, point, ratios)

    def identity(self) -> CompressionPolicy:
        """prune=0, w_bits=a_bits=32, rank=1.0 at every point: ``compress`` returns an exact copy."""
        return CompressionPolicy({p.name: _IDENTITY for p in self.decision_points})

    def uniform(
        self,
        prune: float = 0.0,
        w_bits: int = 32,
        a_bits: int = 32,
        rank: float = 1.0,
        **others: float | int,
    ) -> CompressionPolicy:
        """The same decision at every point that has the knob (others keep the identity value).

        ``others`` sets the remaining registered knobs by name (``sparsity=0.5``).

        Raises:
            UserInputError: a value outside what the knobs allow, or an unknown knob.
        """
        for k in others:
            if k not in KNOB_TYPES:
                raise UserInputError(f"unknown knob {k!r}; allowed: {', '.join(KNOB_TYPES)}")
        LayerAction(prune=prune, w_bits=w_bits, a_bits=a_bits, rank=rank, **others)  # type checks
        if prune > self.max_prune + 1e-12:
            raise UserInputError(
                f"prune={prune!r} is out of range; allowed: 0 <= prune <= {self.max_prune:g}"
            )
        for k, v in (("w_bits", w_bits), ("a_bits", a_bits)):
            if v not in self.bits:
                raise UserInputError(
                    f"{k}={v!r} is not offered by this space; allowed: {self.bits}"
                )
        want = {"prune": prune, "w_bits": w_bits, "a_bits": a_bits, "rank": rank, **others}
        layers = {}
        for p in self.decision_points:
            layers[p.name] = LayerAction(**{k: v for k, v in want.items() if k in p.knobs})
        return CompressionPolicy(layers)

    def most_compressed(self) -> CompressionPolicy:
        """Every knob at its most compressive value."""
        return CompressionPolicy(
            {
                p.name: LayerAction(**{k: knob.most_compressed for k, knob in p.knobs.items()})
                for p in self.decision_points
            }
        )

    def sample(self, seed: int | np.random.Generator | None = None) -> CompressionPolicy:
        """A random valid policy: every knob uniform over its range / choices."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return CompressionPolicy(
            {
                p.name: LayerAction(**{k: knob.sample(rng) for k, knob in p.knobs.items()})
                for p in self.decision_points
            }
        )

    def validate(self, policy: CompressionPolicy) -> None:
        """Check a policy against this space.

        Raises:
            UserInputError: naming the layer, the value and what is allowed.
        """
        if not isinstance(policy, CompressionPolicy):
            raise UserInputError(f"expected a CompressionPolicy, got {type(policy).__name__}")
        for name, action in policy.layers.items():
            point = self._points_by_name.get(name)
            if point is None:
                known = self.names
                shown = ", ".join(known[:8]) + (
                    f", ... ({len(known)} in all)" if len(known) > 8 else ""
                )
                raise UserInputError(
                    f"policy names unknown layer {name!r}; decision points are: {shown}"
                )
            for k, kt in KNOB_TYPES.items():
                value = getattr(action, k)
                if value == kt.identity:
                    continue
                knob = point.knobs.get(k)
                if knob is None:
                    why = next(
                        (n.split(": ", 1)[1] for n in point.notes if n.startswith(k + ":")), ""
                    )
                    raise UserInputError(
                        f"layer {name!r}: {k}={value!r} is not allowed: this point has no {k!r} knob"
                        + (f" ({why})" if why else "")
                        + f"; its knobs are: {', '.join(point.knobs) or 'none'}"
                    )
                if not knob.contains(value):
                    raise UserInputError(
                        f"layer {name!r}: {k}={value!r} is not allowed; allowed: {knob.allowed()}"
                    )

    # ------------------------------------------------------------------------------------------
    # introspection
    def feature_matrix(self) -> np.ndarray:
        """Static AMC-style features, ``(n_points, len(FEATURE_NAMES))``, min-max normalised to [0, 1]."""
        return feature_matrix(self.decision_points)

    def describe(self) -> str:
        """A table of the decision points, their knobs, and the knobs left out (and why)."""
        ident = self.identity()
        lines = [
            f"CompressionSpace: {len(self.decision_points)} decision points, "
            f"{sum(1 for g in self.groups if g.prunable)}/{len(self.groups)} prunable groups; "
            f"base {self.base_macs:,} MACs/sample, {self.base_params:,} params "
            f"(predicted identity {self.macs(ident):,} MACs)",
            f"max_prune={self.max_prune:g} round_to={self.round_to} importance={self.importance} bits={self.bits}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        w = max([len(p.name) for p in self.decision_points] + [4])
        lines.append(f"{'#':>3}  {'name':<{w}}  {'kind':<14} {'in->out':>11} {'MACs':>12}  knobs")
        for p in self.decision_points:
            f = p.features
            io = f"{int(f['in_channels'])}->{int(f['out_channels'])}"
            knobs = ", ".join(p.knobs)
            lines.append(
                f"{p.index:>3}  {p.name:<{w}}  {p.kind:<14} {io:>11} {int(f['macs']):>12,}  {knobs}"
            )
            for note in p.notes:
                lines.append(f"{'':>3}  {'':<{w}}    - {note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"CompressionSpace({len(self.decision_points)} points, "
            f"{sum(1 for g in self.groups if g.prunable)} prunable groups, base_macs={self.base_macs})"
        )
