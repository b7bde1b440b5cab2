"""The knob registry: the one place a kind of per-layer compression knob is declared.

A knob type (torchao's pattern: a registered config type dispatches to its transform) declares

* its **name** (the ``LayerAction`` field, the policy JSON key, the ``--knob`` name), the global
  **range** check and the **identity** value (the value that leaves a layer untouched);
* whether a default space offers it (``default``);
* its **unit mapping**: ``to_unit`` / ``from_unit`` between a layer's ``Knob`` and [0, 1]
  (0 = least, 1 = most compressed). The environment, the baseline searchers, the ladder searcher
  and the budget projection all read this one mapping;
* its **transform** (``transform_``: applied by ``compress`` in ``stage`` order);
* its **cost contribution**: the metrics it changes (``costs``); the four structural knobs are
  modelled by the space's closed form (``costmodel.py``), a storage knob by the bits per value, side
  tables and entries kept it declares (``value_bits``, ``side_bytes``, ``stored_params``), turned
  into bytes by :func:`weight_storage_bytes`, the one formula of the cost model and of
  ``count_size_bytes``, and by the width its weights multiply at (``compute_bits``, the BOPs
  factor ``count_bops`` reads from the layer's ``w_bits``);
* how reports **show** it (``label``, ``format``).

The four structural knobs (``prune``, ``w_bits``, ``a_bits``, ``rank``) are in ``structural.py``;
the knobs that change each weight tensor on its own share :func:`apply_per_weight_` (and, for a
weight code of ``b`` bits, :class:`WeightCodeKnob`). ``Knob`` is what a space offers at one layer.

Adding a knob = one module with a ``KnobType`` subclass registered by ``register_knob`` (imported
at the end of this file), a ``LayerAction`` field whose default is the identity value, and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.errors import UserInputError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from autocompress.compression.policy import CompressionPolicy
    from autocompress.compression.space import CompressionSpace

__all__ = [
    "ALLOWED_BITS",
    "KNOB_TYPES",
    "WEIGHT_KINDS",
    "Knob",
    "KnobType",
    "WeightCodeKnob",
    "apply_per_weight_",
    "check_knob_set",
    "cost_deltas",
    "default_knob_names",
    "from_unit",
    "knob_names",
    "knob_type",
    "levels",
    "register_knob",
    "to_unit",
    "weight_storage_bytes",
]


# --- a layer's knob --------------------------------------------------------------------------
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


# --- the one unit mapping ----------------------------------------------------------------------
def levels(knob: Any) -> tuple[float, float] | list[Any]:
    """A layer knob's legal values from least to most compressed.

    Choices (bit-widths) give the list of choices, ordered by distance from the least compressed
    one; a continuous knob (prune, rank, sparsity) gives ``(least_compressed, most_compressed)``.
    """
    choices = getattr(knob, "choices", None)
    least, most = knob.least_compressed, knob.most_compressed
    if choices:
        return sorted(choices, key=lambda c: abs(c - least))
    return (float(least), float(most))


def from_unit(knob: Any, u: float) -> float | int:
    """The value of ``knob`` at unit position ``u``: its knob type's mapping (the shared one,
    :func:`shared_from_unit`, unless the type overrides it; knobs of other spaces use it too)."""
    kt = KNOB_TYPES.get(getattr(knob, "name", ""))
    return kt.from_unit(knob, u) if kt is not None else shared_from_unit(knob, u)


def to_unit(knob: Any, value: float) -> float:
    """Relative compression of ``value`` on ``knob`` (0 = least, 1 = most compressed): its knob
    type's mapping (the shared one, :func:`shared_to_unit`, unless the type overrides it)."""
    kt = KNOB_TYPES.get(getattr(knob, "name", ""))
    return kt.to_unit(knob, value) if kt is not None else shared_to_unit(knob, value)


def shared_from_unit(knob: Any, u: float) -> float | int:
    """The value of ``knob`` a share ``u`` in [0, 1] of the way from least (0) to most (1) compressed.

    Continuous knobs interpolate linearly and land exactly on the ends at 0 and 1; choices split
    [0, 1] into equal bins, one per choice (least compressed first).
    """
    u = min(1.0, max(0.0, float(u)))
    lv = levels(knob)
    if isinstance(lv, list):
        return lv[min(int(u * len(lv)), len(lv) - 1)]
    least, most = lv
    if u >= 1.0:
        return most
    if u <= 0.0:
        return least
    value = least + u * (most - least)
    return min(max(least, most), max(min(least, most), value))


def shared_to_unit(knob: Any, value: float) -> float:
    """Relative compression of ``value`` on ``knob``: 0 = least, 1 = most compressed.

    A right inverse of :func:`shared_from_unit` (``from_unit(knob, to_unit(knob, v)) == v`` for every
    legal value): choices map to ``index / (n - 1)``, which lies inside the choice's bin; a value
    that is not a choice maps to the nearest one.
    """
    lv = levels(knob)
    if isinstance(lv, list):
        if len(lv) < 2:
            return 0.0
        idx = min(range(len(lv)), key=lambda i: abs(lv[i] - value))
        return idx / (len(lv) - 1)
    least, most = lv
    if most == least:
        return 0.0
    return min(1.0, max(0.0, (float(value) - least) / (most - least)))


# --- knob types --------------------------------------------------------------------------------
class KnobType:
    """One kind of per-layer knob (see the module docstring). Subclass, then ``register_knob``.

    Class attributes:
        name: ``LayerAction`` field, policy JSON key and ``--knob`` name.
        identity: the value that leaves the layer untouched.
        integer: values are integers (bit-widths), else floats.
        default: offered by a space built without an explicit knob list.
        stage: ``compress`` applies knob types in increasing stage.
        costs: the predicted metrics the knob can lower.
        restats: a non-identity value changes the layer's outputs enough that BatchNorm
            statistics go stale (the evaluator re-estimates them).
        label: report column header.
        allowed: the global range, as error messages say it.
        excludes: knobs a space cannot offer together with this one.
        excludes_why: why (the error message's words).
    """

    name: ClassVar[str]
    identity: ClassVar[float | int]
    integer: ClassVar[bool] = False
    default: ClassVar[bool] = True
    stage: ClassVar[int] = 50
    costs: ClassVar[tuple[str, ...]] = ()
    restats: ClassVar[bool] = False
    label: ClassVar[str] = ""
    allowed: ClassVar[str] = ""
    excludes: ClassVar[tuple[str, ...]] = ()
    excludes_why: ClassVar[str] = "both decide how weights are stored"

    def check(self, value: Any) -> float | int:
        """``value`` normalised (float or int) after the range check that holds for every layer.

        Raises:
            UserInputError: naming the value and what is allowed.
        """
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise UserInputError(
                    f"LayerAction.{self.name}={value!r} is not an integer; allowed: {self.allowed}"
                )
            value = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UserInputError(f"LayerAction.{self.name}={value!r} is not a number")
            value = float(value)
        if not self.in_range(value):
            raise UserInputError(
                f"LayerAction.{self.name}={value!r} is out of range; allowed: {self.allowed}"
            )
        return value

    def in_range(self, value: float) -> bool:
        """The range check of :meth:`check` (after normalisation)."""
        return True

    def format(self, value: float | int) -> str:
        """The value as a report cell."""
        return f"{value:.2f}"

    def to_unit(self, knob: Any, value: float) -> float:
        """Relative compression of ``value`` (the shared mapping; override only with a reason)."""
        return shared_to_unit(knob, value)

    def from_unit(self, knob: Any, u: float) -> float | int:
        """Inverse of :meth:`to_unit` (the shared mapping)."""
        return shared_from_unit(knob, u)

    def transform_(
        self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace, ctx: dict[str, Any]
    ) -> None:
        """Apply this knob of every point of ``policy`` to ``model`` in place.

        ``ctx`` carries what ``compress`` was given (``importance``, ``calib`` raw batches,
        ``inputs``, ``reconstruct``, the untouched ``original``) and what earlier stages leave.
        """

    def layer_knob(self, kind: str, module: nn.Module) -> Any:
        """The ``Knob`` this type offers at a layer of ``kind`` (``DecisionPoint.kind``), or a
        string saying why it offers none. The four structural knobs are built by the space itself
        (they need its group and shape analysis)."""
        raise NotImplementedError(f"knob type {self.name!r} builds no layer knob")

    def value_bits(self, value: float | int, bits: int) -> int:
        """Bits per stored weight value under this knob (``bits``: the layer's weight bit-width)."""
        return bits

    def side_bytes(self, value: float | int) -> float:
        """Bytes stored once per weight tensor besides its values (a shared-weight codebook)."""
        return 0.0

    def compute_bits(self, value: float | int, bits: int) -> int:
        """Width of a weight as a multiplier operand under this knob (``bits``: the layer's weight
        bit-width so far), the ``w_bits`` factor of BOPs. Unchanged unless the layer multiplies by
        the stored values themselves: a shared-weight index only picks a float32 codebook value."""
        return bits

    def stored_params(self, value: float | int, numel: int) -> int:
        """Entries of a weight tensor (``numel`` so far) stored under this knob; fewer than all
        means the rest are zeros left out of a sparse (bitmap) layout."""
        return numel

    def cost_delta(self, value: float | int, space: CompressionSpace, name: str,
                   policy: CompressionPolicy) -> dict[str, float] | None:
        """Changes of ``macs`` / ``params`` / ``size_bytes`` / ``bops`` at point ``name`` that
        neither the closed form nor the storage terms model (a knob that restructures a layer
        itself, ``projection.py``), or None."""
        return None



KNOB_TYPES: dict[str, KnobType] = {}


def register_knob(kt: KnobType) -> KnobType:
    """Add a knob type to the registry (its name must be new and a ``LayerAction`` field)."""
    if kt.name in KNOB_TYPES:
        raise ValueError(f"knob type {kt.name!r} is already registered")
    KNOB_TYPES[kt.name] = kt
    return kt


def knob_type(name: str) -> KnobType:
    """The registered knob type ``name``.

    Raises:
        UserInputError: unknown name (lists the registered ones).
    """
    kt = KNOB_TYPES.get(name)
    if kt is None:
        raise UserInputError(f"unknown knob {name!r}; allowed: {', '.join(KNOB_TYPES)}")
    return kt


def check_knob_set(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` in registry order, after checking each is registered and no two exclude each other.

    Raises:
        UserInputError: an unknown name (lists the registered ones) or two exclusive knobs.
    """
    for n in names:
        knob_type(n)
    for n in names:
        for other in KNOB_TYPES[n].excludes:
            if other in names:
                raise UserInputError(
                    f"knobs {n} and {other} {KNOB_TYPES[n].excludes_why}; choose one of them"
                )
    return tuple(k for k in KNOB_TYPES if k in names)


def knob_names() -> tuple[str, ...]:
    """Every registered knob, in registration order (the order of actions and report columns)."""
    return tuple(KNOB_TYPES)


def default_knob_names() -> tuple[str, ...]:
    """The knobs a space offers when no list is given."""
    return tuple(n for n, kt in KNOB_TYPES.items() if kt.default)


def cost_deltas(space: CompressionSpace, policy: CompressionPolicy) -> dict[str, float]:
    """The sum of every set knob's :meth:`KnobType.cost_delta` (the space adds it to its costs)."""
    out: dict[str, float] = {}
    for name, items in policy._extras().items():
        for k, v in items:
            for metric, d in (KNOB_TYPES[k].cost_delta(v, space, name, policy) or {}).items():
                out[metric] = out.get(metric, 0.0) + d
    return out


def weight_storage_bytes(
    numel: int, nnz: int, rows: int, bits: int, scales: int, side: float = 0.0
) -> float:
    """Bytes of one weight tensor: the storage formula of the cost model and of ``count_size_bytes``.

    ``numel`` entries in ``rows`` rows, ``nnz`` of them stored, each value in ``bits`` bits (32 =
    float), ``scales`` float32 scales, ``side`` bytes of side tables (a codebook). Dense: values
    x bits + scales, never above float32; with zeros left out (``nnz < numel``) the nonzeros and a
    bitmap (``sparsity.sparse_bytes``, what the exported file stores) when that is smaller. ``rows``
    does not enter the bitmap layout (it is part of the signature the cost model calls).
    """
    dense = 4.0 * numel if bits >= 32 else min(numel * bits / 8.0 + 4.0 * scales, 4.0 * numel)
    if nnz < numel:  # _sparsity: imported at the end of this module, which registers its knob
        dense = min(dense, _sparsity.sparse_bytes(nnz, numel, bits, scales))
    return dense + side


# --- knobs that transform each weight tensor ---------------------------------------------------
#: Layer kinds whose own weight tensor the per-weight knobs (sparsity, share_bits, pow2_bits) change.
WEIGHT_KINDS: tuple[str, ...] = ("conv", "depthwise_conv", "grouped_conv", "linear")


def apply_per_weight_(
    model: nn.Module, policy: CompressionPolicy, space: CompressionSpace, knob: str,
    fn: Callable[[nn.Module, Any], None],
) -> None:
    """``fn(layer, value)`` on every weight layer of a point where ``knob`` is offered and set (not
    at its identity), on both factors of a factorised layer: the one loop of the knobs that
    transform each weight tensor on its own (``sparsity``, ``share_bits``, ``pow2_bits``)."""
    # lowrank loads torch, which this module must not (policies and run-directory readers use it)
    from autocompress.compression.lowrank import LowRank

    identity = KNOB_TYPES[knob].identity
    for point in space.decision_points:
        value = getattr(policy.get(point.name), knob)
        if value == identity or knob not in point.knobs:
            continue
        module = model.get_submodule(point.name)
        for m in (module[0], module[1]) if isinstance(module, LowRank) else (module,):
            fn(m, value)


class WeightCodeKnob(KnobType):
    """A knob whose value is the bits of each stored weight's code (32 = off), applied to every
    weight tensor on its own: ``share_bits`` (an index into a codebook), ``pow2_bits`` (a sign and
    an exponent). Subclasses set ``name``, ``choices``, ``left_out`` and :meth:`encode_`."""

    identity = 32
    integer = True
    default = False
    restats = False
    #: the bit-widths offered (32 among them)
    choices: ClassVar[tuple[int, ...]]
    #: why a layer of another kind offers no knob (after its kind: "are not shared")
    left_out: ClassVar[str]

    def in_range(self, value: float) -> bool:
        return value in self.choices

    def format(self, value: float | int) -> str:
        return "-" if value == 32 else str(int(value))

    def layer_knob(self, kind: str, module: nn.Module) -> Any:
        from torch import nn

        if kind not in WEIGHT_KINDS or not isinstance(getattr(module, "weight", None), nn.Parameter):
            return f"{kind} layers {self.left_out}"
        return Knob(self.name, choices=self.choices, most_compressed=min(self.choices),
                    least_compressed=32)

    def transform_(self, model: nn.Module, policy: CompressionPolicy, space: CompressionSpace,
                   ctx: dict[str, Any]) -> None:
        apply_per_weight_(model, policy, space, self.name, lambda m, v: self.encode_(m, int(v)))

    def encode_(self, module: nn.Module, bits: int) -> None:
        """Store ``module``'s weight in codes of ``bits`` bits (in place)."""
        raise NotImplementedError

    def value_bits(self, value: float | int, bits: int) -> int:
        return int(value) if value < 32 else bits


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


#: Bit-widths a policy may ask for (32 means "leave in float").
ALLOWED_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 16, 32)

# Registration order is the knobs' order in every list (env actions, policy JSON): the four
# structural knobs, then sparsity first.
from autocompress.compression import structural as _structural  # noqa: E402,F401,I001 - registers prune, w_bits, a_bits, rank
from autocompress.compression import sparsity as _sparsity  # noqa: E402,F401,I001 - registers "sparsity"
from autocompress.compression import sharing as _sharing  # noqa: E402,F401,I001 - registers "share_bits"
from autocompress.compression import projection as _projection  # noqa: E402,F401,I001 - registers "proj_rank"
from autocompress.compression import pow2 as _pow2  # noqa: E402,F401,I001 - registers "pow2_bits"
