"""What a compression policy *is*: one frozen ``LayerAction`` per decision point, JSON-serialisable."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.compression.knobs import ALLOWED_BITS, KNOB_TYPES  # noqa: F401 - ALLOWED_BITS re-exported
from autocompress.errors import UserInputError

if TYPE_CHECKING:
    import numpy as np

_PACK = struct.Struct("<4d").pack
#: The knobs the space's closed-form cost model reads as one packed vector per layer.
_VEC_KNOBS: tuple[str, ...] = ("prune", "w_bits", "a_bits", "rank")
_IDENTITY_PACKED = _PACK(*(KNOB_TYPES[k].identity for k in _VEC_KNOBS))
#: The other registered knobs (storage knobs): read per layer, only where not at identity.
_EXTRA_KNOBS: tuple[str, ...] = tuple(k for k in KNOB_TYPES if k not in _VEC_KNOBS)


@dataclass(frozen=True)
class LayerAction:
    """The decision taken at one decision point: one field per registered knob type.

    Args:
        prune: fraction of the group's output channels removed, ``0 <= prune < 1``.
        w_bits: weight bit-width, one of ``ALLOWED_BITS`` (32 = float, untouched).
        a_bits: bit-width of the layer's input activations, one of ``ALLOWED_BITS``.
        rank: fraction of the full rank kept by low-rank factorisation, ``0 < rank <= 1``
            (1.0 = not factorised).
        sparsity: fraction of the layer's weights zeroed by magnitude (unstructured).
        share_bits: bits of the shared-weight index: ``2^share_bits`` k-means values per layer
            (32 = not shared).
        proj_rank: fraction of the hidden size kept by the projection shared by each pair of
            stacked recurrent layers (1.0 = not shared; ``projection.py``).
        pow2_bits: bits of INQ's powers-of-two weights, ``{0, +-2^n}`` (32 = not on that grid).

    Each field's default is its knob type's identity value, and its global range check is the
    knob type's (``compression/knobs.py``). The per-layer limits (``max_prune``, which knobs a
    layer supports) are checked by ``CompressionSpace.validate``.
    """

    prune: float = 0.0
    w_bits: int = 32
    a_bits: int = 32
    rank: float = 1.0
    sparsity: float = 0.0
    share_bits: int = 32
    proj_rank: float = 1.0
    pow2_bits: int = 32

    def __post_init__(self) -> None:
        # Normalise numeric types so that 8 == 8.0 policies hash and serialise identically.
        for name, kt in KNOB_TYPES.items():
            object.__setattr__(self, name, kt.check(getattr(self, name)))
        # The closed form's knobs as packed float64 bytes for the cost model's hot loop (not a field).
        object.__setattr__(self, "_vec", _PACK(*(getattr(self, k) for k in _VEC_KNOBS)))
        object.__setattr__(self, "_extra", tuple(
            (k, getattr(self, k)) for k in _EXTRA_KNOBS if getattr(self, k) != KNOB_TYPES[k].identity
        ))

    @property
    def is_identity(self) -> bool:
        """True when this action leaves the layer untouched."""
        return not self._extra and self._vec == _IDENTITY_PACKED  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict of the knobs: the four structural ones always, any other where it is not at
        its identity value (so policies without them keep their JSON and ``key()``)."""
        out: dict[str, float | int] = {k: getattr(self, k) for k in _VEC_KNOBS}
        out.update(self._extra)  # type: ignore[attr-defined]
        return out

    def replace(self, **changes: float | int) -> LayerAction:
        """A copy with some knobs changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class CompressionPolicy:
    """A frozen mapping ``decision-point name (module FQN) -> LayerAction``.

    Keyed by module names, never by ``nn.Module`` objects, so a policy serialises and
    round-trips through JSON without a model present. A point missing from ``layers``
    means the identity action there.

    Example:
        >>> p = CompressionPolicy({"layer1.0.conv1": LayerAction(prune=0.5, w_bits=8)})
        >>> CompressionPolicy.from_json(p.to_json()) == p
        True
    """

    layers: Mapping[str, LayerAction] = field(default_factory=dict)
    schema_version: ClassVar[int] = 1
    _TYPE: ClassVar[str] = "autocompress.CompressionPolicy"

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise UserInputError(
                f"CompressionPolicy.layers must be a mapping name -> LayerAction, got {type(self.layers).__name__}"
            )
        items: dict[str, LayerAction] = {}
        for name in sorted(self.layers):
            action = self.layers[name]
            if not isinstance(name, str):
                raise UserInputError(f"CompressionPolicy layer name {name!r} is not a string")
            if isinstance(action, Mapping):
                try:
                    action = LayerAction(**action)
                except TypeError as exc:
                    raise UserInputError(
                        f"layer {name!r}: {exc}; allowed knobs: {', '.join(KNOB_TYPES)}"
                    ) from None
                except UserInputError as exc:
                    raise UserInputError(f"layer {name!r}: {exc}") from None
            if not isinstance(action, LayerAction):
                raise UserInputError(
                    f"CompressionPolicy layer {name!r}: {action!r} is not a LayerAction"
                )
            items[name] = action
        object.__setattr__(self, "layers", MappingProxyType(items))

    # -- mapping-like helpers -------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerAction:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompressionPolicy):
            return NotImplemented
        return dict(self.layers) == dict(other.layers)

    def __hash__(self) -> int:
        return hash(self.key())

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only mapping proxy cannot be pickled/deep-copied as is (SB3 vec envs deep-copy
        # infos, multiprocessing pickles them): rebuild from a plain dict instead.
        return (type(self), (dict(self.layers),))

    def _vectors(self) -> tuple[tuple[str, ...], np.ndarray]:
        """``(names, values)`` with ``values[i] = (prune, w_bits, a_bits, rank)``, memoised.

        ``values`` has one extra last row holding the identity action, so index ``-1`` / ``len``
        means "not in the policy". The compact form the cost model reads (policies are
        immutable, so this is computed once per policy object).
        """
        cached = self.__dict__.get("_vectors_cache")
        if cached is None:
            import numpy as np  # here, so that reading and writing policies needs no numpy

            names = tuple(self.layers)
            packed = b"".join([a._vec for a in self.layers.values()]) + _IDENTITY_PACKED  # type: ignore[attr-defined]
            cached = (names, np.frombuffer(packed, dtype=np.float64).reshape(-1, 4))
            cached[1].setflags(write=False)
            object.__setattr__(self, "_vectors_cache", cached)
        return cached

    def _extras(self) -> dict[str, tuple[tuple[str, float | int], ...]]:
        """``{name: ((knob, value), ...)}`` of the knobs outside the packed vector that are not at
        their identity value, memoised (empty for a policy of the four structural knobs only)."""
        cached = self.__dict__.get("_extras_cache")
        if cached is None:
            cached = {n: a._extra for n, a in self.layers.items() if a._extra}  # type: ignore[attr-defined]
            object.__setattr__(self, "_extras_cache", cached)
        return cached

    def get(self, name: str) -> LayerAction:
        """The action at ``name``; the identity action when the policy does not mention it."""
        return self.layers.get(name, _IDENTITY)

    def with_layer(self, name: str, action: LayerAction) -> CompressionPolicy:
        """A copy with one point's action replaced."""
        return CompressionPolicy({**self.layers, name: action})

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"_type", "_version", "_data"}`` with ``_data = {name: {knob: value}}``."""
        return {
            "_type": self._TYPE,
            "_version": self.schema_version,
            "_data": {"layers": {n: a.to_dict() for n, a in self.layers.items()}},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionPolicy:
        """Inverse of ``to_dict``; rejects an unknown ``_type`` or ``_version``."""
        if not isinstance(d, Mapping) or "_type" not in d or "_data" not in d:
            raise UserInputError(
                "not a serialised CompressionPolicy: expected a dict with keys '_type', '_version', '_data'"
            )
        if d["_type"] != cls._TYPE:
            raise UserInputError(
                f"serialised object has _type {d['_type']!r}; expected {cls._TYPE!r}"
            )
        if d.get("_version") != cls.schema_version:
            raise UserInputError(
                f"CompressionPolicy schema _version {d.get('_version')!r} is not supported; "
                f"this autocompress reads version {cls.schema_version}"
            )
        data = d["_data"]
        layers = data.get("layers") if isinstance(data, Mapping) else None
        if not isinstance(layers, Mapping):
            raise UserInputError("serialised CompressionPolicy has no '_data.layers' mapping")
        out: dict[str, LayerAction] = {}
        for name, knobs in layers.items():
            if not isinstance(knobs, Mapping):
                raise UserInputError(f"layer {name!r}: expected a dict of knobs, got {knobs!r}")
            unknown = set(knobs) - set(KNOB_TYPES)
            if unknown:
                raise UserInputError(
                    f"layer {name!r}: unknown knob(s) {sorted(unknown)}; allowed: {', '.join(KNOB_TYPES)}"
                )
            try:
                out[name] = LayerAction(**knobs)
            except UserInputError as exc:
                raise UserInputError(f"layer {name!r}: {exc}") from None
        return cls(out)

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, s: str) -> CompressionPolicy:
        """Parse ``to_json`` output."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"CompressionPolicy JSON does not parse: {exc}") from None
        return cls.from_dict(d)

    def key(self) -> str:
        """Stable hash: sha256 of the canonical JSON, ignoring identity actions.

        Identity entries are dropped first, so a policy that spells out ``LayerAction()``
        at a point and one that omits it (same compressed model) share a key.
        """
        canon = {n: a.to_dict() for n, a in self.layers.items() if not a.is_identity}
        blob = json.dumps({"v": self.schema_version, "layers": canon}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __repr__(self) -> str:
        inner = ", ".join(f"{n!r}: {a}" for n, a in self.layers.items() if not a.is_identity)
        return f"CompressionPolicy({{{inner}}})"


_IDENTITY = LayerAction()


def read_policy(obj: Any) -> CompressionPolicy:
    """A policy from what a run file holds: the serialised dict, a JSON string, or a bare
    ``{name: knobs}`` mapping (optionally under ``layers``); the reader ``rundir.read_run`` is
    given by ``report.run.load_run`` and the fine-tune of a run's point."""
    if isinstance(obj, CompressionPolicy):
        return obj
    if isinstance(obj, str):
        return CompressionPolicy.from_json(obj)
    if isinstance(obj, Mapping) and "_type" in obj:
        return CompressionPolicy.from_dict(obj)
    if isinstance(obj, Mapping):
        layers = obj.get("layers", obj)
        if isinstance(layers, Mapping):
            return CompressionPolicy(dict(layers))
    raise UserInputError(f"cannot read a compression policy from {type(obj).__name__}")
