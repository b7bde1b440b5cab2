"""The closed-form cost model of a compression space, compiled from the discovered layers.

How the prediction is exact: every parameter tensor's shape is an affine function of the number
of channels removed from each *atom* of each group (see ``prune.py``), with the coefficients
measured by ``discovery._probe``. A tensor's numel is then ``const x d0 x d1`` (at most two pruned
dims, ``d = n - C @ x`` for the removal vector ``x``); a layer's MACs are ``positions x weight
numel`` (conv: ``H_out W_out x C_out x C_in/groups x k x k``; linear: ``positions x out x in``;
RNN: ``steps x sum of weight-matrix numels``) plus a constant for work no knob changes (attention
products, functional matmuls, the residual to ``count_macs``). Total parameters are a quadratic
form in ``x``; a factorised matrix stores ``r (m + n)`` weights; quantized storage and the
storage knobs (``sparsity``, ``share_bits``, ``pow2_bits``) follow ``knobs.weight_storage_bytes``.

``CostModel.evaluate`` reads a policy as rows of numbers (``CompressionPolicy._vectors``) and
never builds a model (tens of microseconds; used inside search loops). Units: MACs per input
sample (batch 1; FLOPs = 2 x MACs); params in elements; size in bytes; BOPs = MACs x w_bits x
a_bits (layers without a quantization knob count 32 x 32), where ``w_bits`` is the width a weight
multiplies at (``KnobType.compute_bits``): ``pow2_bits = b`` counts ``b`` (a sign and an exponent
index, a shift), ``share_bits`` keeps 32 (its indices pick float32 codebook values). Counted on a
compressed model by ``counting.count_bops``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from autocompress.compression import prune, quantize
from autocompress.compression.discovery import Coefs, _Layer
from autocompress.compression.knobs import KNOB_TYPES, weight_storage_bytes

#: The storage knobs a policy sets, per layer index: ``{layer: ((knob, value), ...)}``.
Extras = Mapping[int, tuple[tuple[str, float | int], ...]]


class _TooManyDims(Exception):
    """A parameter would be pruned along more than two dims (the closed form models two)."""

    def __init__(self, name: str, groups: set[str]) -> None:
        super().__init__(name, groups)
        self.name = name
        self.groups = groups


class CostModel:
    """Numpy arrays over the recorded layers and prunable groups, and the costs of a policy.

    Built by ``CompressionSpace`` (which maps policies to rows and validates them); rebuilt when a
    group loses its prune knob. Raises ``_TooManyDims`` when a tensor is pruned along more than
    two dims; the space then takes the prune knob from the groups involved.

    Attributes:
        pgroups: the prunable groups, in ``specs`` order (column blocks of the removal vector).
        group_index: ``{group point: index in pgroups}``.
        layer_list: the recorded layers, in module order.
        tensor_index: ``{parameter name: column}`` of ``W`` and ``Q``.
        W, Q: ``(layers, tensors)`` 0/1 matrices: the tensors whose numel x steps are a layer's
            MACs, and the tensors its ``w_bits`` quantizes.
    """

    def __init__(
        self,
        recorded: Mapping[str, _Layer],
        specs: list[prune.GroupSpec],
        coef: Coefs,
        base_shapes: Mapping[str, tuple[int, ...]],
        base_macs: int,
        round_to: int,
    ) -> None:
        groups = [g for g in specs if g.prunable]
        self.pgroups = groups
        self.group_index = {g.point: i for i, g in enumerate(groups)}
        gi_of_spec = {id(g): i for i, g in enumerate(groups)}
        cols: list[tuple[int, int]] = []  # (spec index in specs, atom index)
        col_group, col_units, col_round = [], [], []
        for si, g in enumerate(specs):
            if not g.prunable:
                continue
            for ai, units in enumerate(g.atom_units()):
                if units < 2:
                    continue
                cols.append((si, ai))
                col_group.append(gi_of_spec[id(g)])
                col_units.append(units)
                col_round.append(math.lcm(round_to, g.unit) // g.unit)
        col_index = {c: j for j, c in enumerate(cols)}
        self._col_group = np.asarray(col_group, dtype=np.int64)
        self._col_units = np.asarray(col_units, dtype=np.int64)
        self._col_round = np.asarray(col_round, dtype=np.int64)
        n_cols = len(cols)

        names = list(base_shapes)
        self.tensor_index = {n: i for i, n in enumerate(names)}
        T = len(names)
        n0 = np.ones(T)
        n1 = np.ones(T)
        const = np.ones(T)
        rows_src = np.full(T, -1, dtype=np.int64)
        rows_const = np.ones(T)
        C0 = np.zeros((T, n_cols))
        C1 = np.zeros((T, n_cols))
        for t, name in enumerate(names):
            shape = base_shapes[name]
            dims = sorted(d for (n, d) in coef if n == name)
            dims = [
                d for d in dims if any(col_index.get(c) is not None for c in coef[(name, d)])
            ]
            if len(dims) > 2:
                groups = {specs[si].point for d in dims for (si, _) in coef[(name, d)]}
                raise _TooManyDims(name, groups)
            numel = float(math.prod(shape)) if shape else 1.0
            denom = 1.0
            for k, d in enumerate(dims):
                (n0 if k == 0 else n1)[t] = shape[d]
                denom *= shape[d]
                Ck = C0 if k == 0 else C1
                for c, v in coef[(name, d)].items():
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

        layers = list(recorded.values())
        self.layer_list = layers
        L = len(layers)
        self._lsteps = np.array([lay.steps for lay in layers], dtype=np.float64)
        self._lconst_q = np.array([lay.const_q for lay in layers], dtype=np.float64)
        self._lconst_f = np.array([lay.const_f for lay in layers], dtype=np.float64)
        W = np.zeros((L, T))
        Q = np.zeros((L, T))
        wt = np.zeros(L, dtype=np.int64)
        for i, lay in enumerate(layers):
            for n in lay.weights:
                if n in self.tensor_index:
                    W[i, self.tensor_index[n]] = 1.0
            for n in lay.qweights:
                if n in self.tensor_index:
                    Q[i, self.tensor_index[n]] = 1.0
            if lay.weights and lay.weights[0] in self.tensor_index:
                wt[i] = self.tensor_index[lay.weights[0]]
        self.W, self.Q, self._wt = W, Q, wt
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
            (li, pos[self.tensor_index[n]])
            for li, lay in enumerate(layers) if lay.rank
            for n in (lay.weights if lay.kind in ("lstm", "gru", "rnn") else lay.weights[:1])
        ]
        self._R = np.array([li for li, _ in pairs], dtype=np.int64)
        self._R_wt = np.array([t for _, t in pairs], dtype=np.int64)
        self._R_pos: dict[int, int] = {}  # a layer's first matrix (storage knobs are offered on one-weight layers)
        for i, li in enumerate(self._R.tolist()):
            self._R_pos.setdefault(int(li), i)
        self._R_rows_idx = self._u_rows_idx[self._R_wt]
        self._R_steps = self._lsteps[self._R]
        self._const_q_total = float(self._lconst_q.sum())
        modelled = float((self._lsteps * (W @ self.numel(np.zeros(n_cols)))).sum())
        modelled += float(self._lconst_q.sum() + self._lconst_f.sum())
        self._residual = float(base_macs) - modelled
        self._const_f_total = float(self._lconst_f.sum()) + self._residual

    def numel(self, x: np.ndarray) -> np.ndarray:
        """Elements of every parameter tensor after removing ``x`` units per atom."""
        if self._sparse:
            d0 = self._n0 - self._C0 @ x
            d1 = self._n1 - self._C1 @ x
        else:
            d0, d1 = self._n0, self._n1
        return self._const * d0 * d1

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Rows (dim 0) of every parameter tensor after removing ``x`` units per atom."""
        if not self._sparse:
            return self._rows_const
        d0 = self._n0 - self._C0 @ x
        d1 = self._n1 - self._C1 @ x
        return np.where(
            self._rows_src == 0, d0, np.where(self._rows_src == 1, d1, self._rows_const)
        )

    @property
    def n_cols(self) -> int:
        """Length of the removal vector (one entry per prunable atom)."""
        return len(self._col_units)

    def positions(self, names: tuple[str, ...], layer_of: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Which row of a policy's values each layer, group and factorisable matrix reads.

        ``names[i]`` (a decision point, at layer ``layer_of[name]``) is row ``i``; everything
        else reads row ``len(names)``, the identity action.
        """
        pos = {n: i for i, n in enumerate(names)}
        k = len(names)
        layer_pos = np.full(len(self.layer_list), k, dtype=np.int64)
        for n, i in pos.items():
            layer_pos[layer_of[n]] = i
        group_pos = np.array([pos.get(g.point, k) for g in self.pgroups], dtype=np.int64)
        return {"layer_pos": layer_pos, "group_pos": group_pos, "rank_pos": layer_pos[self._R]}

    def evaluate(
        self, entry: Mapping[str, np.ndarray], vals: np.ndarray, full: bool, extras: Extras
    ) -> dict[str, float]:
        """MACs (``full=False``), or MACs, params, size in bytes and BOPs of one policy.

        ``vals`` holds the policy's rows of (prune, w_bits, a_bits, rank) and a last identity row;
        ``entry`` says which row each layer, group and factorisable matrix reads
        (:meth:`positions`); ``extras`` the storage knobs set per layer index.
        """
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
        if extras:
            fact_info = (r, m, n, fact) if any_rank else None
            d_params, d_size = self._storage_terms(extras, numel, dext, wt_bits, fact_info)
            params += d_params
            size += d_size
        return {
            "macs": float(layer_macs.sum() + self._const_f_total),
            "params": params,
            "size_bytes": size,
            "bops": float((layer_macs * self._compute_bits(wb, extras) * ab).sum()
                          + self._const_f_total * 1024.0),
        }

    @staticmethod
    def _compute_bits(wb: np.ndarray, extras: Extras) -> np.ndarray:
        """Per layer the width its weights multiply at (BOPs): ``w_bits`` unless a storage knob
        says otherwise (``KnobType.compute_bits``: ``pow2_bits = b`` multiplies as ``b`` bits)."""
        if not extras:
            return wb
        out = np.array(wb, dtype=np.float64)
        for li, items in extras.items():
            bits = int(out[li])
            for k, v in items:
                bits = KNOB_TYPES[k].compute_bits(v, bits)
            out[li] = bits
        return out

    def _storage_terms(
        self,
        extras: Extras,
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
        for li, items in extras.items():
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

    def structure(
        self, entry: Mapping[str, np.ndarray], vals: np.ndarray, extras: Extras
    ) -> dict[str, Any]:
        """The model a policy builds, as plain data: units removed per atom of each group, and per
        layer its bits, kept rank(s) and storage knobs (``CompressionSpace.structure``)."""
        removed: dict[str, list[int]] = {}
        if self._sparse:
            p = vals[entry["group_pos"], 0][self._col_group]
            x = prune.removed_units_f(p, self._col_units_f, self._col_round_f)
            for j, g in enumerate(self._col_group):
                removed.setdefault(self.pgroups[int(g)].point, []).append(int(round(x[j])))
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
        layers: dict[str, list[Any]] = {}
        for i, lay in enumerate(self.layer_list):
            wb, ab, rank = int(lv[i, 1]), int(lv[i, 2]), ranks.get(i)
            if wb < 32 or ab < 32 or rank is not None:
                layers[lay.name] = [wb, ab, rank]
            if i in extras:  # storage knobs, only where set (older keys stay the same)
                layers.setdefault(lay.name, [wb, ab, rank]).append(dict(extras[i]))
        return {"removed": removed, "layers": layers}
