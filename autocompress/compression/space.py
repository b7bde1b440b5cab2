"""The per-layer compression space of a model, and its closed-form cost model.

``CompressionSpace.from_model`` discovers the decision points once (one per conv / linear /
RNN / attention layer, the ``prune`` knob on the root layer of each prunable torch-pruning group)
and precomputes numpy arrays so that ``macs/params/size_bytes/bops(policy)`` are evaluated without
building any model (tens of microseconds; used inside search loops).

How the prediction is made exact: every parameter tensor's shape is an affine function of the
number of channels removed from each *atom* of each group (see ``prune.py``). Rather than encode
torch-pruning's rules by hand, ``from_model`` *measures* those coefficients on a scratch copy by
removing one channel (unit) per atom and reading the new parameter shapes. A layer's MACs are
then ``positions x weight numel`` (conv: ``H_out W_out x C_out x C_in/groups x k x k``; linear:
``positions x out x in``; RNN: ``steps x sum of weight-matrix numels``), plus a constant for work
no knob changes (attention products, functional matmuls). ``verify=True`` (default) checks the
prediction against a really pruned copy at ``max_prune`` and drops the prune knob of any group
where they disagree or torch-pruning fails, recording why (``describe()``).

Units: MACs per input sample (batch 1; FLOPs = 2 x MACs); params in elements; size in bytes;
BOPs = MACs x w_bits x a_bits (layers without a quantization knob count 32 x 32).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.compression import lowrank, prune, quantize, rnn
from autocompress.compression.counting import (
    _batch_size,
    _full_inputs,
    _rnn_steps,
    count_macs,
    count_params,
    eval_mode,
    module_macs_formula,
)
from autocompress.compression.knobs import (
    ALLOWED_BITS,
    KNOB_TYPES,
    check_knob_set,
    default_knob_names,
    knob_names,
    weight_storage_bytes,
)
from autocompress.compression.policy import _EXTRA_KNOBS, CompressionPolicy, LayerAction
from autocompress.errors import UserInputError

__all__ = ["DEFAULT_KNOBS", "FEATURE_NAMES", "KNOB_NAMES", "CompressionSpace", "DecisionPoint", "Knob"]

#: Every registered knob type (``compression/knobs.py``), and those a space offers by default.
KNOB_NAMES: tuple[str, ...] = knob_names()
DEFAULT_KNOBS: tuple[str, ...] = default_knob_names()
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
_IDENTITY = LayerAction()


@dataclass(frozen=True)
class Knob:
    """One knob of a decision point: a continuous range (``prune``, ``rank``) or bit-width choices.

    ``most_compressed`` / ``least_compressed`` are the values at the two ends (``least_compressed``
    is also the identity value).
    """

    name: str
    low: float | None = None
    high: float | None = None
    choices: tuple[int, ...] | None = None
    most_compressed: float | int = 0
    least_compressed: float | int = 0

    def contains(self, value: float) -> bool:
        """Whether ``value`` is allowed."""
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        if self.name == "rank":  # any fraction in (0, 1]; below `low` behaves as rank 1
            return 0.0 < value <= self.high
        return self.low - 1e-12 <= value <= self.high + 1e-12

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.choices is not None:
            return f"one of {tuple(self.choices)}"
        if self.name == "rank":
            return f"0 < rank <= {self.high:g} (below {self.low:.4g} acts as rank 1)"
        return f"{self.low:g} <= {self.name} <= {self.high:g}"

    def sample(self, rng: np.random.Generator) -> float | int:
        """A uniformly random allowed value."""
        if self.choices is not None:
            return int(self.choices[int(rng.integers(len(self.choices)))])
        assert self.low is not None and self.high is not None
        return float(rng.uniform(self.low, self.high))


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


@dataclass
class _Layer:
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
    """Run one forward pass and record, per MAC-bearing layer, positions/steps and shapes."""
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
    return layers


def _forward(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


class _TooManyDims(Exception):
    def __init__(self, name: str, groups: set[str]) -> None:
        super().__init__(name, groups)
        self.name = name
        self.groups = groups


class _ProbeFailure(Exception):
    def __init__(self, root: str, reason: str) -> None:
        super().__init__(root, reason)
        self.root = root
        self.reason = reason


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _probe(
    model: nn.Module, x: Any, skip: dict[str, str], use_graph: bool = True
) -> tuple[list[prune.GroupSpec], dict[tuple[str, int], dict[tuple[int, int], float]]]:
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
    coef: dict[tuple[str, int], dict[tuple[int, int], float]] = {}
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
    coef: dict[tuple[str, int], dict[tuple[int, int], float]],
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


class CompressionSpace:
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
        quantizable = {n for n, m in work.named_modules() if quantize.quantizable(m)}
        rankable = {n for n, m in work.named_modules()
                    if lowrank.can_factorise(m) or rnn.can_factorise(m)}
        for layer in self._layers.values():
            layer.quant = layer.name in quantizable
            layer.rank = layer.name in rankable
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
        skip: dict[str, str] = {}
        self.groups, coef = [], {}
        if "prune" in knobs and max_prune > 0:
            use_graph, untraced = True, ""
            while True:  # each failure disables one more group (or the graph), so this ends
                try:
                    self.groups, coef = _probe(work, example_input, skip, use_graph)
                    break
                except _ProbeFailure as fail:
                    if fail.root in skip:  # cannot happen unless tracing is not deterministic
                        self.notes.append(
                            f"probing group {fail.root!r} failed twice; no prune knobs"
                        )
                        self.groups, coef = [], {}
                        break
                    skip[fail.root] = fail.reason
                except Exception as exc:  # noqa: BLE001 - tracing failed: no graph groups
                    if not use_graph:
                        self.groups, coef = [], {}
                        break
                    untraced = f"torch-pruning could not trace this model ({type(exc).__name__}: {exc})"
                    use_graph = False  # recurrent hidden units are still probed without it
            if untraced:
                rest = ("only recurrent hidden sizes have a prune knob"
                        if any(g.prunable for g in self.groups) else "no layer has a prune knob")
                self.notes.append(f"{untraced}; {rest}")
        order = {n: i for i, n in enumerate(self._modules_kind)}
        for g in self.groups:  # name each group's knob after its first member layer
            members = sorted((m for m in g.members if m in self._layers), key=lambda m: order[m])
            g.point = members[0] if members else g.root
        self._coef = coef
        while True:
            try:
                self._build_arrays()
                break
            except (
                _TooManyDims
            ) as exc:  # the closed form handles at most two pruned dims per tensor
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
        """Precompute the numpy arrays of the cost model from the recorded layers and coefficients."""
        groups = [g for g in self.groups if g.prunable]
        self._pgroups = groups
        self._group_index = {g.point: i for i, g in enumerate(groups)}
        gi_of_spec = {id(g): i for i, g in enumerate(groups)}
        cols: list[tuple[int, int]] = []  # (spec index in self.groups, atom index)
        col_group, col_units, col_round = [], [], []
        for si, g in enumerate(self.groups):
            if not g.prunable:
                continue
            for ai, units in enumerate(g.atom_units()):
                if units < 2:
                    continue
                cols.append((si, ai))
                col_group.append(gi_of_spec[id(g)])
                col_units.append(units)
                col_round.append(math.lcm(self.round_to, g.unit) // g.unit)
        col_index = {c: j for j, c in enumerate(cols)}
        self._col_group = np.asarray(col_group, dtype=np.int64)
        self._col_units = np.asarray(col_units, dtype=np.int64)
        self._col_round = np.asarray(col_round, dtype=np.int64)
        n_cols = len(cols)

        names = list(self._base_shapes)
        self._tensor_index = {n: i for i, n in enumerate(names)}
        T = len(names)
        n0 = np.ones(T)
        n1 = np.ones(T)
        const = np.ones(T)
        rows_src = np.full(T, -1, dtype=np.int64)
        rows_const = np.ones(T)
        C0 = np.zeros((T, n_cols))
        C1 = np.zeros((T, n_cols))
        for t, name in enumerate(names):
            shape = self._base_shapes[name]
            dims = sorted(d for (n, d) in self._coef if n == name)
            dims = [
                d for d in dims if any(col_index.get(c) is not None for c in self._coef[(name, d)])
            ]
            if len(dims) > 2:
                groups = {self.groups[si].point for d in dims for (si, _) in self._coef[(name, d)]}
                raise _TooManyDims(name, groups)
            numel = float(math.prod(shape)) if shape else 1.0
            denom = 1.0
            for k, d in enumerate(dims):
                (n0 if k == 0 else n1)[t] = shape[d]
                denom *= shape[d]
                Ck = C0 if k == 0 else C1
                for c, v in self._coef[(name, d)].items():
                    j = col_index.get(c)
                    if j is not None:
                        Ck[t, j] = v
                if d == 0:
                    rows_src[t] = k
            const[t] = numel / denom
            rows_const[t] = shape[0] if shape else 1
        self._n0, self._n1, self._const, self._C0, self._C1 = n0, n1, const, C0, C1
        self._rows_src, self._rows_const = rows_src, rows_const
        self._sparse = n_cols > 0

        layers = list(self._layers.values())
        self._layer_list = layers
        L = len(layers)
        self._lsteps = np.array([lay.steps for lay in layers], dtype=np.float64)
        self._lconst_q = np.array([lay.const_q for lay in layers], dtype=np.float64)
        self._lconst_f = np.array([lay.const_f for lay in layers], dtype=np.float64)
        W = np.zeros((L, T))
        Q = np.zeros((L, T))
        wt = np.zeros(L, dtype=np.int64)
        for i, lay in enumerate(layers):
            for n in lay.weights:
                if n in self._tensor_index:
                    W[i, self._tensor_index[n]] = 1.0
            for n in lay.qweights:
                if n in self._tensor_index:
                    Q[i, self._tensor_index[n]] = 1.0
            if lay.weights and lay.weights[0] in self._tensor_index:
                wt[i] = self._tensor_index[lay.weights[0]]
        self._W, self._Q, self._wt = W, Q, wt
        # Fast-path structures. Total parameters as a quadratic form in the removal vector x:
        # sum_t const_t (n0_t - c0_t.x)(n1_t - c1_t.x) = K0 - g.x + x.H.x
        self._K0 = float((const * n0 * n1).sum())
        self._g = (const * n1) @ C0 + (const * n0) @ C1
        self._H = (C0 * const[:, None]).T @ C1
        used = np.nonzero(W.any(0) | Q.any(0))[0] if T else np.zeros(0, dtype=np.int64)
        if used.size == 0:
            used = np.zeros(1, dtype=np.int64) if T else used
        pos = {int(t): k for k, t in enumerate(used)}
        self._u_n0, self._u_n1, self._u_const = n0[used], n1[used], const[used]
        self._u_C0, self._u_C1 = C0[used], C1[used]
        self._u_rows_src, self._u_rows_const = rows_src[used], rows_const[used]
        self._u_W = W[:, used]
        self._u_wt = np.array([pos.get(int(t), 0) for t in wt], dtype=np.int64)
        # owning layer of each used quantizable tensor (len(layers) = none: stays float)
        qlayer = np.full(len(used), L, dtype=np.int64)
        for li_, row in enumerate(Q[:, used]):
            qlayer[row > 0] = li_
        self._u_qlayer = qlayer
        self._col_units_f = self._col_units.astype(np.float64)
        self._col_round_f = self._col_round.astype(np.float64)
        self._round_one = bool((self._col_round == 1).all())
        U = len(used)
        self._U = U
        self._u_C01 = np.vstack([self._u_C0, self._u_C1])
        self._u_n01 = np.concatenate([self._u_n0, self._u_n1])
        # where each used tensor's row count (dim 0) lives in concat(d0, d1, rows_const)
        src = self._u_rows_src
        self._u_rows_idx = np.where(
            src == 0, np.arange(U), np.where(src == 1, U + np.arange(U), 2 * U + np.arange(U))
        )
        # One entry per factorisable weight matrix: a conv/linear layer's weight, or each input and
        # recurrent matrix of an RNN (all factorised at the layer's one rank fraction).
        pairs = [
            (li, pos[self._tensor_index[n]])
            for li, lay in enumerate(layers) if lay.rank
            for n in (lay.weights if lay.kind in ("lstm", "gru", "rnn") else lay.weights[:1])
        ]
        self._R = np.array([li for li, _ in pairs], dtype=np.int64)
        self._R_wt = np.array([t for _, t in pairs], dtype=np.int64)
        self._R_pos = {}  # a layer's first matrix (storage knobs are offered on one-weight layers)
        for i, li in enumerate(self._R.tolist()):
            self._R_pos.setdefault(int(li), i)
        self._R_rows_idx = self._u_rows_idx[self._R_wt]
        self._R_steps = self._lsteps[self._R]
        self._const_q_total = float(self._lconst_q.sum())
        modelled = float((self._lsteps * (W @ self._numel(np.zeros(n_cols)))).sum())
        modelled += float(self._lconst_q.sum() + self._lconst_f.sum())
        self._residual = float(self.base_macs) - modelled
        self._const_f_total = float(self._lconst_f.sum()) + self._residual

    def _numel(self, x: np.ndarray) -> np.ndarray:
        if self._sparse:
            d0 = self._n0 - self._C0 @ x
            d1 = self._n1 - self._C1 @ x
        else:
            d0, d1 = self._n0, self._n1
        return self._const * d0 * d1

    def _rows(self, x: np.ndarray) -> np.ndarray:
        if not self._sparse:
            return self._rows_const
        d0 = self._n0 - self._C0 @ x
        d1 = self._n1 - self._C1 @ x
        return np.where(
            self._rows_src == 0, d0, np.where(self._rows_src == 1, d1, self._rows_const)
        )

    def _build_points(self) -> None:
        """One decision point per MAC-bearing layer that has at least one knob."""
        bits = self.bits
        bits_knob = {
            k: Knob(k, choices=bits, most_compressed=min(bits), least_compressed=32)
            for k in ("w_bits", "a_bits")
        }
        reasons = {g.point: g.reason for g in self.groups if not g.prunable}
        follows = {}
        for g in self.groups:
            for mname in g.members:
                follows.setdefault(mname, g.point)
        points: list[DecisionPoint] = []
        self._point_layer: list[int] = []
        self._point_group: list[int] = []
        x0 = np.zeros(len(self._col_units))
        numel0 = self._numel(x0)
        rows0 = self._rows(x0)
        for li, lay in enumerate(self._layer_list):
            if lay.steps == 0 and lay.const_q == 0:
                continue  # never called in the forward pass
            knobs: dict[str, Knob] = {}
            notes: list[str] = []
            gi = self._group_index.get(lay.name, -1)
            if "prune" in self.knob_types:
                if gi >= 0:
                    knobs["prune"] = Knob(
                        "prune",
                        low=0.0,
                        high=self.max_prune,
                        most_compressed=self.max_prune,
                        least_compressed=0.0,
                    )
                elif lay.name in reasons:
                    notes.append(f"prune: {reasons[lay.name]}")
                elif lay.name in follows and follows[lay.name] in self._group_index:
                    notes.append(f"prune: output channels follow group {follows[lay.name]!r}")
                elif lay.name in follows:
                    notes.append(f"prune: in unprunable group {follows[lay.name]!r}")
                elif self.notes:
                    notes.append("prune: model not traceable by torch-pruning")
                elif lay.kind in ("lstm", "gru", "rnn"):
                    notes.append("prune: hidden size is not pruned")
                else:
                    notes.append("prune: not a group root")
            for k in ("w_bits", "a_bits"):
                if k in self.knob_types:
                    if lay.quant:
                        knobs[k] = bits_knob[k]
                    else:
                        cls_name = self._modules_kind[lay.name].__name__
                        notes.append(f"{k}: {cls_name} layers are not quantized")
            if "rank" in self.knob_types:
                if lay.rank:
                    # the most compressed value keeps rank 1 of every matrix (an RNN has several)
                    tensors = (lay.weights if lay.kind in ("lstm", "gru", "rnn") else lay.weights[:1])
                    full = 0.0
                    for t in (self._tensor_index[n] for n in tensors):
                        full = max(full, min(rows0[t], numel0[t] / rows0[t]))
                    low = 1.0 / full
                    knobs["rank"] = Knob(
                        "rank", low=low, high=1.0, most_compressed=low, least_compressed=1.0
                    )
                elif lay.kind in ("depthwise_conv", "grouped_conv"):
                    notes.append("rank: grouped/depthwise conv is not factorised")
                elif self._modules_kind[lay.name] in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
                    notes.append("rank: no rank saves MACs here (r < m*n/(m+n) impossible)")
                elif lay.kind in ("lstm", "gru", "rnn"):
                    notes.append("rank: bidirectional and proj_size layers are not factorised")
                else:
                    notes.append("rank: not supported for this layer type")
            for k, offered in self._extra_knobs.get(lay.name, {}).items():
                if isinstance(offered, str):
                    notes.append(f"{k}: {offered}")
                else:
                    knobs[k] = offered
            if not knobs:
                continue
            macs = float(lay.steps * (self._W[li] @ numel0) + lay.const_q + lay.const_f)
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
                "params": float(self._Q[li] @ numel0),
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
            self._point_layer.append(li)
            self._point_group.append(gi)
        self.decision_points = points
        self._points_by_name = {p.name: p for p in points}
        self._pt_layer = {p.name: self._point_layer[i] for i, p in enumerate(points)}
        # allowed bit-widths per layer as a lookup table for the fast validity check
        allowed = np.zeros((len(self._layer_list), 33), dtype=bool)
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
    # cost model
    def _names_entry(self, names: tuple[str, ...]) -> dict[str, Any] | None:
        """Gather indices and bounds for one name tuple (policies of one space share theirs)."""
        entry = self._names_cache.get(names)
        if entry is None:
            pos = {n: i for i, n in enumerate(names)}
            if any(n not in self._pt_layer for n in names):
                return None
            k = len(names)
            layer_pos = np.full(len(self._layer_list), k, dtype=np.int64)
            for n, i in pos.items():
                layer_pos[self._pt_layer[n]] = i
            group_pos = np.array([pos.get(g.point, k) for g in self._pgroups], dtype=np.int64)
            lo = np.zeros((k, 4))
            hi = np.zeros((k, 4))
            for n, i in pos.items():
                knobs = self._points_by_name[n].knobs
                hi[i, 0] = self.max_prune + 1e-12 if "prune" in knobs else 0.0
                lo[i, 1] = 1.0 if "w_bits" in knobs else 32.0
                lo[i, 2] = 1.0 if "a_bits" in knobs else 32.0
                hi[i, 1] = hi[i, 2] = 32.0
                lo[i, 3] = 0.0 if "rank" in knobs else 1.0
                hi[i, 3] = 1.0
            entry = {
                "layer_pos": layer_pos,
                "group_pos": group_pos,
                "rank_pos": layer_pos[self._R],
                "lo": lo,
                "hi": hi,
                "rows": np.arange(k),
            }
            # rows of the allowed-bits tables in name order (only read when bits are restricted)
            order = np.array([self._pt_layer[n] for n in names], dtype=np.int64)
            entry["allowed_w"] = self._allowed_w[order]
            entry["allowed_a"] = self._allowed_a[order]
            if len(self._names_cache) > 256:
                self._names_cache.clear()
            self._names_cache[names] = entry
        return entry

    def _entry_and_values(
        self, policy: CompressionPolicy, validate: bool
    ) -> tuple[dict[str, Any], np.ndarray]:
        names, vals = policy._vectors()
        entry = self._names_entry(names)
        if entry is None:  # a name that is not a decision point
            if validate:
                self.validate(policy)
            keep = [i for i, n in enumerate(names) if n in self._pt_layer]
            entry = self._names_entry(tuple(names[i] for i in keep))
            vals = vals[keep + [len(names)]]
            assert entry is not None
        if validate and policy._extras():
            for name, items in policy._extras().items():
                knobs = self._points_by_name[name].knobs if name in self._points_by_name else {}
                if any(k not in knobs or not knobs[k].contains(v) for k, v in items):
                    self.validate(policy)  # raises with a precise message
        if validate:
            v = vals[:-1]
            if ((v < entry["lo"]) | (v > entry["hi"])).any() or (
                self._restricted_bits
                and not (
                    entry["allowed_w"][entry["rows"], v[:, 1].astype(np.int64)].all()
                    and entry["allowed_a"][entry["rows"], v[:, 2].astype(np.int64)].all()
                )
            ):
                self.validate(policy)  # raises with a precise message
        return entry, vals

    def _evaluate(
        self, policy: CompressionPolicy, full: bool, validate: bool = True
    ) -> dict[str, float]:
        entry, vals = self._entry_and_values(policy, validate)
        U = self._U
        x = None
        if self._sparse:
            p = vals[entry["group_pos"], 0][self._col_group]
            if self._round_one:  # same result as removed_units_f when round_to == 1 (p < 1)
                x = np.floor(p * self._col_units_f + 1e-9)
            else:
                x = prune.removed_units_f(p, self._col_units_f, self._col_round_f)
            d = self._u_n01 - self._u_C01 @ x
        else:
            d = self._u_n01
        numel = self._u_const * d[:U] * d[U:]
        lw = self._u_W @ numel  # MAC-weight elements per layer
        rkR = vals[entry["rank_pos"], 3]
        lowr = rkR < 1.0
        any_rank = bool(lowr.any())
        if any_rank:
            dext = np.concatenate((d, self._u_rows_const))
            m = dext[self._R_rows_idx]
            n = numel[self._R_wt] / m
            r = np.maximum(1.0, np.floor(rkR * np.minimum(m, n) + 0.5))
            fw = r * (m + n)
            fact = lowr & (fw < m * n)
            saved = np.where(fact, numel[self._R_wt] - fw, 0.0)  # weight elements saved per matrix
        if not full:
            macs = self._lsteps @ lw + self._const_q_total + self._const_f_total
            if any_rank:
                macs -= self._R_steps @ saved
            return {"macs": float(macs)}
        lv = vals[entry["layer_pos"]]
        wb, ab = lv[:, 1], lv[:, 2]
        layer_macs = self._lsteps * lw + self._lconst_q
        if not any_rank:
            dext = np.concatenate((d, self._u_rows_const))
        total = self._K0 if x is None else self._K0 - self._g @ x + x @ self._H @ x
        # Storage of quantized weights, per tensor: numel x bits/8 + 4 bytes per scale (per row at
        # 3-16 bits, one per tensor at 1-2 bits), never more than float32 (count_size_bytes).
        wt_bits = np.append(wb, 32.0)[self._u_qlayer]
        per_elem = wt_bits / 8.0 - 4.0
        scales = np.where(wt_bits >= 3, dext[self._u_rows_idx], 1.0)
        delta = np.where(wt_bits < 32, np.minimum(numel * per_elem + 4.0 * scales, 0.0), 0.0)
        if any_rank:
            np.subtract.at(layer_macs, self._R, self._R_steps * saved)  # RNNs: several per layer
            total -= saved.sum()
            # A factorised pair stores r*n + m*r weights; the first factor's scales are folded
            # into the second (quantize_factorised_), which keeps the dense layer's scales.
            t = self._R_wt[fact]
            rf, mf, nf = r[fact], m[fact], n[fact]
            bits_f = wt_bits[t]
            pe = per_elem[t]
            delta[t] = np.where(
                bits_f < 32,
                rf * nf * pe
                + np.minimum(mf * rf * pe + 4.0 * np.where(bits_f >= 3, mf, 1.0), 0.0),
                0.0,
            )
        params = float(total)
        size = float(4.0 * params + delta.sum())
        if policy._extras():
            fact_info = (r, m, n, fact) if any_rank else None
            d_params, d_size = self._storage_terms(policy, numel, dext, wt_bits, fact_info)
            params += d_params
            size += d_size
        return {
            "macs": float(layer_macs.sum() + self._const_f_total),
            "params": params,
            "size_bytes": size,
            "bops": float((layer_macs * wb * ab).sum() + self._const_f_total * 1024.0),
        }

    def _storage_terms(
        self,
        policy: CompressionPolicy,
        numel: np.ndarray,
        dext: np.ndarray,
        wt_bits: np.ndarray,
        fact_info: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[float, float]:
        """``(params, bytes)`` changes of the knobs outside the closed form (storage knobs).

        Per weight tensor of each such layer (both factors of a factorised one) the knob types say
        the bits per value, the side tables and the entries kept; ``knobs.weight_storage_bytes``
        (which ``count_size_bytes`` applies to the compressed model) turns them into bytes.
        """
        d_params = d_size = 0.0
        for name, items in policy._extras().items():
            li = self._pt_layer.get(name)
            if li is None:
                continue
            t = self._u_wt[li]
            bits = int(wt_bits[t])
            ri = self._R_pos.get(li)
            if fact_info is not None and ri is not None and bool(fact_info[3][ri]):
                r, m, n = (int(round(float(a[ri]))) for a in fact_info[:3])
                # the first factor's scales are folded into the second (quantize_factorised_)
                tensors = [(r * n, r, 0), (m * r, m, quantize.weight_scale_count((m,), bits))]
            else:
                rows = int(round(float(dext[self._u_rows_idx[t]])))
                tensors = [(int(round(float(numel[t]))), rows, quantize.weight_scale_count((rows,), bits))]
            for n_el, rows, scales in tensors:
                vbits, side, kept = bits, 0.0, n_el
                for k, v in items:
                    kt = KNOB_TYPES[k]
                    vbits, side, kept = kt.value_bits(v, vbits), side + kt.side_bytes(v), kt.stored_params(v, kept)
                d_size += weight_storage_bytes(n_el, kept, rows, vbits, scales, side)
                d_size -= weight_storage_bytes(n_el, n_el, rows, bits, scales)
                d_params += kept - n_el
        return d_params, d_size

    def costs(self, policy: CompressionPolicy, *, validate: bool = True) -> dict[str, float]:
        """All four predicted costs at once: ``macs``, ``params``, ``size_bytes``, ``bops``.

        Units: MACs per sample (batch 1; FLOPs = 2 x MACs), parameter elements, bytes,
        bit-operations (MACs x w_bits x a_bits). The last policy's result is memoised, so calling
        ``macs``, ``params``, ``size_bytes`` and ``bops`` on one policy evaluates it once.
        """
        last_policy, last = self._last
        if last_policy is policy:
            return dict(last)
        out = self._evaluate(policy, True, validate)
        if validate:
            self._last = (policy, out)
        return dict(out)

    def macs(self, policy: CompressionPolicy) -> int:
        """Predicted MACs per sample (batch 1) of ``compress(model, policy)``; FLOPs = 2 x MACs."""
        last_policy, last = self._last
        if last_policy is policy:
            return int(round(last["macs"]))
        return int(round(self._evaluate(policy, False)["macs"]))

    def params(self, policy: CompressionPolicy) -> int:
        """Predicted parameter count (elements) of the compressed model."""
        return int(round(self.costs(policy)["params"]))

    def size_bytes(self, policy: CompressionPolicy) -> float:
        """Predicted parameter storage in bytes at the real bit-widths (see ``count_size_bytes``)."""
        return self.costs(policy)["size_bytes"]

    def bops(self, policy: CompressionPolicy) -> float:
        """Predicted bit-operations: sum over layers of MACs x w_bits x a_bits (32 x 32 elsewhere)."""
        return self.costs(policy)["bops"]

    def structure(self, policy: CompressionPolicy) -> dict[str, Any]:
        """The model ``compress(model, policy)`` builds, as plain data (not the ratios asked for).

        Two policies whose ratios round to the same channel counts, bits and ranks build the same
        model; searches use :meth:`structure_key` to evaluate and list such a model once.

        Returns:
            ``{"removed": {group point: [units removed per atom]}, "layers": {layer: [w_bits,
            a_bits, rank(, {storage knob: value})]}}`` where ``rank`` is the kept rank of a
            factorised layer (None when it stays dense; for an RNN a list, one per weight matrix)
            and the dict holds the knobs outside the closed form (``sparsity``) that are set; only
            groups and layers that differ from the uncompressed model appear.
        """
        entry, vals = self._entry_and_values(policy, True)
        removed: dict[str, list[int]] = {}
        if self._sparse:
            p = vals[entry["group_pos"], 0][self._col_group]
            x = prune.removed_units_f(p, self._col_units_f, self._col_round_f)
            for j, g in enumerate(self._col_group):
                removed.setdefault(self._pgroups[int(g)].point, []).append(int(round(x[j])))
            removed = {k: v for k, v in removed.items() if any(v)}
            d = self._u_n01 - self._u_C01 @ x
        else:
            d = self._u_n01
        U = self._U
        ranks: dict[int, Any] = {}
        rkR = vals[entry["rank_pos"], 3]
        if bool((rkR < 1.0).any()):
            numel = self._u_const * d[:U] * d[U:]
            dext = np.concatenate((d, self._u_rows_const))
            m = dext[self._R_rows_idx]
            n = numel[self._R_wt] / m
            r = np.maximum(1.0, np.floor(rkR * np.minimum(m, n) + 0.5))
            fact = (rkR < 1.0) & (r * (m + n) < m * n)
            per_layer: dict[int, list[int | None]] = {}
            for i, li in enumerate(self._R.tolist()):
                per_layer.setdefault(li, []).append(int(r[i]) if fact[i] else None)
            for li, rs in per_layer.items():
                if any(v is not None for v in rs):  # one matrix: its rank; an RNN: one per matrix
                    ranks[li] = rs[0] if len(rs) == 1 else rs
        lv = vals[entry["layer_pos"]]
        extras = policy._extras()
        layers: dict[str, list[Any]] = {}
        for i, lay in enumerate(self._layer_list):
            wb, ab, rank = int(lv[i, 1]), int(lv[i, 2]), ranks.get(i)
            if wb < 32 or ab < 32 or rank is not None:
                layers[lay.name] = [wb, ab, rank]
            if lay.name in extras:  # storage knobs, only where set (older keys stay the same)
                layers.setdefault(lay.name, [wb, ab, rank]).append(dict(extras[lay.name]))
        return {"removed": removed, "layers": layers}

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Stable hash of :meth:`structure`: equal keys mean the same compressed model."""
        import hashlib
        import json

        blob = json.dumps(self.structure(policy), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    # ------------------------------------------------------------------------------------------
    # introspection
    def feature_matrix(self) -> np.ndarray:
        """Static AMC-style features, ``(n_points, len(FEATURE_NAMES))``, min-max normalised to [0, 1]."""
        raw = np.array(
            [[p.features[f] for f in FEATURE_NAMES] for p in self.decision_points],
            dtype=np.float64,
        )
        if raw.size == 0:
            return raw.reshape(0, len(FEATURE_NAMES))
        lo, hi = raw.min(0), raw.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (raw - lo) / span

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
