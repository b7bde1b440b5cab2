"""Tree ensembles as flat arrays and their compression into the packed artefact.

A fitted scikit-learn forest is read once into :class:`ForestArrays` (every tree in preorder, so a
depth cap keeps a prefix-closed subsequence of each tree's nodes). :func:`compress_forest` keeps
some trees, caps their depth (a node at the cap becomes a leaf holding its class fractions) and
quantizes split thresholds and leaf values; the result, :class:`PackedForest`, *is* the artefact
(its format and byte count: ``packed_forest``, whose names stay importable from here).

Cost-complexity pruning (``alpha``) follows scikit-learn's minimal cost-complexity (weakest-link)
pruning on each fitted tree's own impurities: :func:`collapse_alphas` gives every internal node
the effective alpha at which it becomes a leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.classic.packed_forest import (  # noqa: F401
    BOOST_MAGIC,
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    PackedForest,
    boost_outputs,
    packed_size,
    stored_classes,
)
from autocompress.errors import UserInputError


def float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each value: for float32 inputs ``x <= t`` iff ``x <= f32(t)``."""
    out = np.asarray(values, dtype=np.float64).astype(np.float32)
    over = out.astype(np.float64) > np.asarray(values, dtype=np.float64)
    out[over] = np.nextafter(out[over], np.float32(-np.inf))
    return out


@dataclass
class ForestArrays:
    """An uncompressed fitted forest: every tree in preorder, nodes of all trees concatenated.

    Attributes:
        offsets: first node of each tree (length trees + 1).
        feature: split feature per node, -1 at leaves.
        threshold: split threshold per node (float64; unused at leaves).
        right: tree-local index of the right child (-1 at leaves); the left child is node + 1.
        depth: depth per node (root 0).
        value: class fractions per node (rows sum to 1), internal nodes included; for a boosted
            ensemble one column: the leaf's raw score times the learning rate (at an internal
            node, the sample-weighted mean over its leaves).
        n_features: input features.
        impurity: per node, weighted by its share of the tree's training samples (the
            cost-complexity ``R(t)``); None when unknown.
        init: a boosted ensemble's initial raw score per output (None for a voting forest).
        boost_classes: classes of a boosted ensemble (0: a numeric target).
        averaged: a regression forest (leaf means, averaged over the trees kept).
    """

    offsets: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    right: np.ndarray
    depth: np.ndarray
    value: np.ndarray
    n_features: int
    impurity: np.ndarray | None = None
    init: np.ndarray | None = None
    boost_classes: int = 0
    averaged: bool = False

    @property
    def boosted(self) -> bool:
        """True for trees that add raw scores (gradient boosting, or a regression forest)."""
        return self.init is not None

    @property
    def n_trees(self) -> int:
        """Trees in the forest."""
        return len(self.offsets) - 1

    @property
    def n_classes(self) -> int:
        """Classes."""
        return self.boost_classes if self.boosted else int(self.value.shape[1])

    @property
    def tree_depths(self) -> np.ndarray:
        """Depth of each tree (its deepest node)."""
        return np.array([int(self.depth[self.tree(t)].max()) for t in range(self.n_trees)])

    def tree(self, t: int) -> slice:
        """The node range of tree ``t``."""
        return slice(int(self.offsets[t]), int(self.offsets[t + 1]))

    def threshold_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature low and high split thresholds over the whole forest (the quantization
        range; independent of which trees a policy keeps). Unused features get 0, 0."""
        lo = np.zeros(self.n_features)
        hi = np.zeros(self.n_features)
        inner = self.feature >= 0
        for f in range(self.n_features):
            vals = self.threshold[inner & (self.feature == f)]
            if len(vals):
                lo[f], hi[f] = vals.min(), vals.max()
        return lo, hi


    def leaf_grid(self) -> tuple[float, float]:
        """Low and high node value of a boosted ensemble (the leaf quantization range)."""
        return float(self.value.min()), float(self.value.max())


def collapse_alphas(feature: np.ndarray, right: np.ndarray, impurity: np.ndarray) -> np.ndarray:
    """Per node of one preorder tree: the cost-complexity alpha at which it becomes a leaf
    (scikit-learn's weakest-link sequence, alphas made non-decreasing); ``inf`` at leaves and at
    the root (a pruned tree keeps its first split)."""
    n = len(feature)
    end = np.arange(1, n + 1)
    for i in range(n - 1, -1, -1):  # subtree of i is [i, end[i]) in preorder
        if feature[i] >= 0:
            end[i] = end[int(right[i])]
    leaf = feature < 0
    alive = np.ones(n, dtype=bool)
    out = np.full(n, np.inf)
    level = -np.inf
    while True:
        cur_leaf = (leaf | ~np.isinf(out)) & alive
        r = np.concatenate([[0.0], np.cumsum(np.where(cur_leaf, impurity, 0.0))])
        c = np.concatenate([[0], np.cumsum(cur_leaf)])
        sub_r = r[end] - r[np.arange(n)]
        sub_leaves = c[end] - c[np.arange(n)]
        cand = alive & ~cur_leaf
        cand[0] = False
        if not cand.any():
            return out
        g = np.where(cand, (impurity - sub_r) / np.maximum(sub_leaves - 1, 1), np.inf)
        gmin = float(g.min())
        level = max(level, gmin)
        for i in np.flatnonzero(g <= gmin + 1e-15 * max(1.0, abs(gmin))):
            if alive[i] and np.isinf(out[i]):
                out[i] = level
                alive[i + 1:end[i]] = False


def forest_from_sklearn(model: Any, n_classes: int) -> ForestArrays:
    """Read a fitted ``RandomForestClassifier`` / ``ExtraTreesClassifier`` /
    ``DecisionTreeClassifier`` / ``GradientBoostingClassifier`` into preorder arrays."""
    trees = getattr(model, "estimators_", None)
    init = None
    averaged = False
    if trees is None:
        trees = [model]
    if n_classes == 0 and not (isinstance(trees, np.ndarray) and trees.ndim == 2):
        init, averaged = np.zeros(1), True  # a regression forest or tree: mean of leaf means
    elif isinstance(trees, np.ndarray) and trees.ndim == 2:  # gradient boosting: stages x outputs
        if trees.shape[1] != boost_outputs(n_classes):
            raise UserInputError(f"boosted model has {trees.shape[1]} trees per stage; the data "
                                 f"has {n_classes} classes")
        x0 = np.zeros((1, int(model.n_features_in_)), dtype=np.float32)
        init = np.asarray(model._raw_predict_init(x0), dtype=np.float64).reshape(-1)
        trees = list(trees.ravel())  # stage-major: tree i adds to output i % outputs
    if not hasattr(trees[0], "tree_"):
        raise UserInputError(f"model of type {type(model).__name__} is not supported; allowed: "
                             "RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier, "
                             "GradientBoostingClassifier")
    lr = 1.0 if averaged else float(getattr(model, "learning_rate", 1.0))
    feats, thrs, rights, depths, values, offsets, imps = [], [], [], [], [], [0], []
    for est in trees:
        tr = est.tree_
        if init is not None:
            if tr.value.shape[1:] != (1, 1):
                raise UserInputError("boosted model's trees must have one output each")
        elif tr.value.shape[1] != 1 or tr.value.shape[2] != n_classes:
            raise UserInputError(f"model predicts {tr.value.shape[2]} classes per output "
                                 f"({tr.value.shape[1]} outputs); the data has {n_classes} classes")
        order: list[int] = []
        depth_of: dict[int, int] = {0: 0}
        stack = [0]
        while stack:
            node = stack.pop()
            order.append(node)
            if tr.children_left[node] >= 0:
                depth_of[tr.children_left[node]] = depth_of[tr.children_right[node]] = depth_of[node] + 1
                stack.append(int(tr.children_right[node]))
                stack.append(int(tr.children_left[node]))
        pos = {n: i for i, n in enumerate(order)}
        o = np.array(order)
        leaf = tr.children_left[o] < 0
        feats.append(np.where(leaf, -1, tr.feature[o]).astype(np.int64))
        thrs.append(np.where(leaf, 0.0, tr.threshold[o]))
        rights.append(np.array([-1 if lf else pos[int(tr.children_right[n])]
                                for n, lf in zip(o, leaf, strict=True)]))
        depths.append(np.array([depth_of[int(n)] for n in o]))
        w = tr.weighted_n_node_samples[o].astype(np.float64)
        imps.append(tr.impurity[o] * w / max(w[0], 1e-300))
        if init is None:
            v = tr.value[o, 0, :].astype(np.float64)
            values.append(v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300))
        elif averaged:  # every node holds the mean target of its samples
            values.append(tr.value[o, 0, :1].astype(np.float64))
        else:
            # a capped node's value: the sample-weighted mean of its leaves (boosting rewrites
            # leaf values by a line search, so the stored internal values are on another scale)
            r = rights[-1]
            wsum = np.where(leaf, w, 0.0)
            vsum = np.where(leaf, w * lr * tr.value[o, 0, 0], 0.0)
            for i in range(len(o) - 1, -1, -1):
                if not leaf[i]:
                    wsum[i] = wsum[i + 1] + wsum[r[i]]
                    vsum[i] = vsum[i + 1] + vsum[r[i]]
            values.append((vsum / np.maximum(wsum, 1e-300))[:, None])
        offsets.append(offsets[-1] + len(o))
    return ForestArrays(np.array(offsets), np.concatenate(feats), np.concatenate(thrs),
                        np.concatenate(rights), np.concatenate(depths), np.concatenate(values),
                        int(trees[0].tree_.n_features), impurity=np.concatenate(imps), init=init,
                        boost_classes=n_classes if init is not None else 0, averaged=averaged)


def ancestor_min(base: ForestArrays, collapse: np.ndarray) -> np.ndarray:
    """Per node: the smallest collapse alpha among its strict ancestors (``inf`` at roots)."""
    out = np.full(len(collapse), np.inf)
    for t in range(base.n_trees):
        sl = base.tree(t)
        c, r, f, o = collapse[sl], base.right[sl], base.feature[sl], out[sl]
        for i in range(len(c)):
            if f[i] >= 0:
                m = min(o[i], c[i])
                o[i + 1] = m
                o[r[i]] = m
    return out


def node_masks(base: ForestArrays, depth_cap: int, alpha: float | None = None,
               collapse: np.ndarray | None = None, anc_min: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(present, split)`` per base node under a depth cap and a cost-complexity ``alpha``:
    a node is present when within the cap and no ancestor collapsed; it stays a split when
    also above the cap and not collapsed itself. Present nodes are prefix-closed in preorder."""
    present = base.depth <= depth_cap
    split = present & (base.feature >= 0) & (base.depth < depth_cap)
    if alpha is not None and alpha > 0:
        assert collapse is not None and anc_min is not None
        present &= anc_min > alpha
        split &= present & (collapse > alpha)
    return present, split


def compress_forest(base: ForestArrays, kept: np.ndarray, depth_cap: int, thr_bits: int,
                    leaf_bits: int, grid: tuple[np.ndarray, np.ndarray] | None = None, *,
                    alpha: float | None = None, collapse: np.ndarray | None = None,
                    anc_min: np.ndarray | None = None) -> PackedForest:
    """Keep trees ``kept`` (in that order), prune them and quantize.

    Args:
        base: the uncompressed forest.
        kept: tree indices to keep.
        depth_cap: nodes deeper than this are dropped; nodes at this depth become leaves.
        thr_bits: bits per split threshold (32 = float32, rounded down so float32 inputs take
            the same branch as in scikit-learn).
        leaf_bits: bits per leaf class fraction or boosted leaf value (32 = float32).
        grid: per-feature threshold ``(low, high)``; default ``base.threshold_grid()``.
        alpha: cost-complexity pruning strength (None or 0: none); needs ``collapse``
            (:func:`collapse_alphas` per node) and ``anc_min`` (:func:`ancestor_min`).
    """
    present, split = node_masks(base, depth_cap, alpha, collapse, anc_min)
    sel = np.concatenate([np.arange(base.offsets[t], base.offsets[t + 1]) for t in kept])
    idx = sel[present[sel]]
    sizes = [int(present[base.tree(t)].sum()) for t in kept]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.uint32)
    inner = split[idx]
    feature = np.where(inner, base.feature[idx], -1).astype(np.int16)
    # tree-local new index of each old node: rank among the kept nodes of its tree
    right = np.empty(int(inner.sum()), dtype=np.int64)
    j = 0
    start = 0
    for t, n in zip(kept, sizes, strict=True):
        newpos = np.cumsum(present[base.tree(t)]) - 1
        sub = idx[start:start + n]
        sub_inner = inner[start:start + n]
        old_right = base.right[sub[sub_inner]]
        right[j:j + len(old_right)] = newpos[old_right]
        j += len(old_right)
        start += n
    max_nodes = max(sizes) if sizes else 0
    out = PackedForest(offsets=offsets, feature=feature,
                       right=right.astype(np.uint16 if max_nodes <= 0xFFFF else np.uint32),
                       thr_bits=int(thr_bits), leaf_bits=int(leaf_bits), n_features=base.n_features,
                       n_classes=base.n_classes,
                       max_depth=int(base.depth[idx[inner]].max()) + 1 if inner.any() else 0)
    thr = base.threshold[idx[inner]]
    if thr_bits == 32:
        out.thr_float = float32_at_most(thr)
    else:
        lo, hi = grid if grid is not None else base.threshold_grid()
        levels = 2 ** thr_bits - 1
        lo32 = lo.astype(np.float32)
        step32 = ((hi - lo) / levels).astype(np.float32)
        f = feature[inner].astype(np.int64)
        st = step32[f].astype(np.float64)
        codes = np.where(st > 0, np.round((thr - lo32[f].astype(np.float64)) / np.where(st > 0, st, 1.0)), 0)
        out.thr_lo, out.thr_step = lo32, step32
        out.thr_codes = np.clip(codes, 0, levels).astype(np.uint32)
    vals = base.value[idx[~inner]]
    if base.boosted:
        assert base.init is not None
        out.init = base.init.astype(np.float32)
        div = float(len(kept)) if base.averaged else 1.0
        vals = vals / div
        if leaf_bits == 32:
            out.leaf_float = vals[:, 0].astype(np.float32)
        else:
            vlo, vhi = (v / div for v in base.leaf_grid())
            levels = 2 ** leaf_bits - 1
            out.leaf_lo = float(np.float32(vlo))
            out.leaf_step = float(np.float32((vhi - vlo) / levels))
            step = out.leaf_step if out.leaf_step > 0 else 1.0
            out.leaf_codes = np.clip(np.round((vals[:, 0] - out.leaf_lo) / step), 0,
                                     levels).astype(np.uint32)
        return out
    if base.n_classes == 2:
        vals = vals[:, 1:]
    if leaf_bits == 32:
        out.leaf_float = vals.astype(np.float32).ravel()
    else:
        levels = 2 ** leaf_bits - 1
        out.leaf_codes = np.clip(np.round(vals * levels), 0, levels).astype(np.uint32).ravel()
    return out
