"""The cost side of ``CompressionSpace``: a policy as the cost model's rows, and its costs.

A policy's decision-point names map onto the compiled cost model's rows (``costmodel.py``) once
per name tuple (policies of one space share theirs, so the map is cached); its values are checked
against the bounds and the allowed bit-widths of those rows on the way (a failure re-runs the
space's ``validate`` for a precise message), then evaluated in closed form, plus the changes of
the knobs that restructure a layer outside it (``knobs.cost_deltas``). ``structure`` is the model
a policy builds as plain data, and ``structure_key`` its hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.compression.knobs import cost_deltas

if TYPE_CHECKING:
    from autocompress.compression.costmodel import CostModel
    from autocompress.compression.points import DecisionPoint
    from autocompress.compression.policy import CompressionPolicy

__all__ = ["SpaceCosts"]


class SpaceCosts:
    """The cost methods of ``CompressionSpace`` (its base class; the space fills the tables below
    when it builds its decision points)."""

    max_prune: float
    _cost: CostModel
    _pt_layer: dict[str, int]
    _points_by_name: dict[str, DecisionPoint]
    _allowed_w: np.ndarray
    _allowed_a: np.ndarray
    _restricted_bits: bool
    _names_cache: dict[tuple[str, ...], dict[str, Any]]
    _last: tuple[CompressionPolicy | None, dict[str, float]]

    def validate(self, policy: CompressionPolicy) -> None:
        """Check a policy against the space (``CompressionSpace.validate``)."""
        raise NotImplementedError

    def _names_entry(self, names: tuple[str, ...]) -> dict[str, Any] | None:
        """Gather indices and bounds for one name tuple (policies of one space share theirs)."""
        entry = self._names_cache.get(names)
        if entry is None:
            if any(n not in self._pt_layer for n in names):
                return None
            k = len(names)
            entry = self._cost.positions(names, self._pt_layer)
            lo = np.zeros((k, 4))
            hi = np.zeros((k, 4))
            for i, n in enumerate(names):
                knobs = self._points_by_name[n].knobs
                hi[i, 0] = self.max_prune + 1e-12 if "prune" in knobs else 0.0
                lo[i, 1] = 1.0 if "w_bits" in knobs else 32.0
                lo[i, 2] = 1.0 if "a_bits" in knobs else 32.0
                hi[i, 1] = hi[i, 2] = 32.0
                lo[i, 3] = 0.0 if "rank" in knobs else 1.0
                hi[i, 3] = 1.0
            entry.update(lo=lo, hi=hi, rows=np.arange(k))
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

    def _layer_extras(self, policy: CompressionPolicy) -> dict[int, tuple[tuple[str, Any], ...]]:
        """The policy's storage knobs per layer index of the cost model (decision points only)."""
        extras = policy._extras()
        if not extras:
            return {}
        return {self._pt_layer[n]: items for n, items in extras.items() if n in self._pt_layer}

    def _evaluate(
        self, policy: CompressionPolicy, full: bool, validate: bool = True
    ) -> dict[str, float]:
        entry, vals = self._entry_and_values(policy, validate)
        out = self._cost.evaluate(entry, vals, full, self._layer_extras(policy) if full else {})
        if policy._extras():  # knobs restructuring a layer outside the closed form (proj_rank)
            for metric, d in cost_deltas(self, policy).items():
                if metric in out:
                    out[metric] += d
        return out

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
        """Predicted bit-operations: sum over layers of MACs x w_bits x a_bits (32 x 32 elsewhere;
        a ``pow2_bits`` layer multiplies at its ``pow2_bits``); ``count_bops`` counts the same."""
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
        return self._cost.structure(entry, vals, self._layer_extras(policy))

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Stable hash of :meth:`structure`: equal keys mean the same compressed model."""
        blob = json.dumps(self.structure(policy), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]
