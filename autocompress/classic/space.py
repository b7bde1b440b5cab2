"""The compression space of a tree ensemble, speaking the engine's space/policy interface.

Decision points, each a ``LayerAction`` knob the engine's searchers already handle:

==============  ==========  ===============================================================
point           knob        meaning
==============  ==========  ===============================================================
``trees``       ``prune``   share of trees removed; the trees kept are the best ranked by
                            their individual validation accuracy (ties: lower index)
``stages``      ``prune``   (gradient boosting, instead of ``trees``) share of boosting stages
                            removed from the end (stages are sequential corrections)
``depth``       ``prune``   share of the forest's depth removed: depth cap
                            ``ceil(D * (1 - prune))``; a node at the cap becomes a leaf
``ccp``         ``prune``   (voting forests and single trees) cost-complexity pruning
                            strength: alpha is the ``prune``-quantile of the forest's
                            weakest-link alphas, so about that share of splits collapses
``thresholds``  ``w_bits``  bits per split threshold (per-feature uniform grid; 32 = float32)
``leaves``      ``w_bits``  bits per leaf class fraction or boosted leaf value (32 = float32)
==============  ==========  ===============================================================

Costs are closed-form and exact: ``size_bytes`` is the byte count of the packed artefact
(``forest.packed_size``), ``params`` the node count, ``macs`` the worst-case comparisons per
sample (sum over kept trees of their capped depth), ``bops`` the artefact's bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.classic.forest import (
    ForestArrays,
    PackedForest,
    ancestor_min,
    boost_outputs,
    collapse_alphas,
    compress_forest,
    node_masks,
    packed_size,
)
from autocompress.compression.policy import CompressionPolicy, LayerAction
from autocompress.compression.space import Knob
from autocompress.errors import UserInputError

if TYPE_CHECKING:
    from autocompress.compression.policy import CompressionPolicy

THRESHOLD_BITS: tuple[int, ...] = (32, 16, 8, 6, 5, 4, 3, 2)
LEAF_BITS: tuple[int, ...] = (32, 16, 8, 6, 5, 4, 3, 2, 1)
#: Largest ``ccp.prune`` (share of splits collapsed; every tree keeps its root split).
CCP_MAX = 0.95


@dataclass(frozen=True)
class TreePoint:
    """A decision point (attributes as ``compression.DecisionPoint``)."""

    name: str
    kind: str
    index: int
    knobs: Mapping[str, Knob]
    features: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TreeSetting:
    """What a policy builds: trees kept (indices), depth cap, bit-widths and cost-complexity
    pruning (``ccp_rank`` weakest-link alphas of the forest collapse; 0 = none)."""

    kept: tuple[int, ...]
    depth_cap: int
    thr_bits: int
    leaf_bits: int
    ccp_rank: int = 0


class ForestSpace:
    """Compression space of a fitted forest (see the module docstring).

    Args:
        base: the uncompressed forest.
        x_val: validation features (ranks the trees).
        y_val: validation labels (or values).
        score: quality of predictions against ``y_val`` (default: accuracy).
    """

    def __init__(self, base: ForestArrays, x_val: np.ndarray, y_val: np.ndarray,
                 score: Any = None) -> None:
        def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
            return float((pred == y).mean())

        score = score or accuracy
        self.base = base
        self.grid = base.threshold_grid()
        self.n_trees = base.n_trees
        self.tree_depths = base.tree_depths
        self.max_depth = int(self.tree_depths.max())
        # boosting stages are sequential; a regression forest's trees are ranked like a vote's
        self.boosted = base.boosted and not base.averaged
        self.outputs = boost_outputs(base.n_classes) if self.boosted else 1
        self.n_stages = self.n_trees // self.outputs
        points: list[TreePoint] = []
        notes: list[str] = []
        if self.boosted:
            self.tree_val_acc = np.full(self.n_trees, np.nan)
            self.ranking = np.arange(self.n_trees)
            if self.n_stages > 1:
                hi = (self.n_stages - 1) / self.n_stages
                points.append(TreePoint("stages", "forest", len(points), {
                    "prune": Knob("prune", 0.0, hi, None, hi, 0.0)}))
            else:
                notes.append("stages: a single boosting stage (nothing to remove)")
        else:
            accs = np.array([
                score(compress_forest(base, np.array([t]), self.max_depth, 32, 32, self.grid)
                      .predict(x_val), y_val)
                for t in range(self.n_trees)
            ])
            self.tree_val_acc = accs
            self.ranking = np.array(sorted(range(self.n_trees), key=lambda t: (-accs[t], t)))
            if self.n_trees > 1:
                hi = (self.n_trees - 1) / self.n_trees
                points.append(TreePoint("trees", "forest", len(points), {
                    "prune": Knob("prune", 0.0, hi, None, hi, 0.0)}))
            else:
                notes.append("trees: a single tree (nothing to remove)")
        if self.max_depth > 1:
            hi = (self.max_depth - 1) / self.max_depth
            points.append(TreePoint("depth", "forest", len(points), {
                "prune": Knob("prune", 0.0, hi, None, hi, 0.0)}))
        else:
            notes.append("depth: stumps (depth 1) cannot be made shallower")
        self.collapse: np.ndarray | None = None
        self.anc_min: np.ndarray | None = None
        self.ccp_alphas = np.zeros(0)
        if self.boosted:
            notes.append("ccp: not offered for boosted trees (their leaves are line-search "
                         "values, not the impurity the pruning measures)")
        elif base.impurity is not None:
            self.collapse = np.concatenate([
                collapse_alphas(base.feature[base.tree(t)], base.right[base.tree(t)],
                                base.impurity[base.tree(t)]) for t in range(self.n_trees)])
            self.anc_min = ancestor_min(base, self.collapse)
            self.ccp_alphas = np.sort(self.collapse[np.isfinite(self.collapse)])
            if len(self.ccp_alphas):
                points.append(TreePoint("ccp", "forest", len(points), {
                    "prune": Knob("prune", 0.0, CCP_MAX, None, CCP_MAX, 0.0)}))
            else:
                notes.append("ccp: no split below a root to collapse")
        points.append(TreePoint("thresholds", "splits", len(points), {
            "w_bits": Knob("w_bits", None, None, THRESHOLD_BITS, min(THRESHOLD_BITS), 32)}))
        points.append(TreePoint("leaves", "leaves", len(points), {
            "w_bits": Knob("w_bits", None, None, LEAF_BITS, min(LEAF_BITS), 32)}))
        self.decision_points = points
        self.notes = tuple(notes)
        self.groups: list[Any] = []

    # -- policies -------------------------------------------------------------------------------
    def _points(self) -> dict[str, TreePoint]:
        return {p.name: p for p in self.decision_points}

    def identity(self) -> CompressionPolicy:
        """The uncompressed forest."""
        return CompressionPolicy({})

    def most_compressed(self) -> CompressionPolicy:
        """Every knob at its most compressed value."""
        return CompressionPolicy({p.name: LayerAction(**{k: kn.most_compressed for k, kn in p.knobs.items()})
                                  for p in self.decision_points})

    def sample(self, seed_or_rng: int | np.random.Generator) -> CompressionPolicy:
        """Every knob uniform over its range (bit-widths uniform over the choices)."""
        rng = (seed_or_rng if isinstance(seed_or_rng, np.random.Generator)
               else np.random.default_rng(seed_or_rng))
        layers = {}
        for p in self.decision_points:
            kw: dict[str, Any] = {}
            for k, kn in p.knobs.items():
                if kn.choices:
                    kw[k] = int(kn.choices[int(rng.integers(len(kn.choices)))])
                else:
                    assert kn.low is not None and kn.high is not None
                    kw[k] = float(rng.uniform(kn.low, kn.high))
            layers[p.name] = LayerAction(**kw)
        return CompressionPolicy(layers)

    def validate(self, policy: CompressionPolicy) -> None:
        """``UserInputError`` naming the point, knob and value when ``policy`` is out of range."""
        points = self._points()
        for name in policy.layers:
            if name not in points:
                raise UserInputError(f"policy point {name!r} is not in the space; allowed: "
                                     f"{', '.join(points)}")
        for p in self.decision_points:
            action = policy.get(p.name)
            for k, kn in p.knobs.items():
                if not kn.contains(getattr(action, k)):
                    raise UserInputError(f"{p.name}.{k}={getattr(action, k)!r}; allowed: {kn.allowed()}")

    def setting(self, policy: CompressionPolicy) -> TreeSetting:
        """The trees, depth cap and bit-widths ``policy`` describes."""
        depth = policy.get("depth").prune
        cap = max(1, min(self.max_depth, math.ceil(self.max_depth * (1.0 - depth) - 1e-9)))
        if self.boosted:
            stages = policy.get("stages").prune
            n_st = max(1, min(self.n_stages, math.ceil(self.n_stages * (1.0 - stages) - 1e-9)))
            kept = tuple(range(n_st * self.outputs))
        else:
            trees = policy.get("trees").prune
            n_keep = max(1, min(self.n_trees, math.ceil(self.n_trees * (1.0 - trees) - 1e-9)))
            kept = tuple(sorted(int(t) for t in self.ranking[:n_keep]))
        q = policy.get("ccp").prune
        rank = min(len(self.ccp_alphas), math.ceil(len(self.ccp_alphas) * q - 1e-9)) if q > 0 else 0
        return TreeSetting(kept, cap, int(policy.get("thresholds").w_bits),
                           int(policy.get("leaves").w_bits), rank)

    def ccp_alpha(self, setting: TreeSetting) -> float | None:
        """The cost-complexity alpha of ``setting`` (None: no pruning)."""
        return float(self.ccp_alphas[setting.ccp_rank - 1]) if setting.ccp_rank else None

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Identifies the artefact a policy builds (policies building the same one share it)."""
        s = self.setting(policy)
        count = f"stages={len(s.kept) // self.outputs}" if self.boosted else f"trees={len(s.kept)}"
        ccp = f" ccp={s.ccp_rank / len(self.ccp_alphas):.3f}" if s.ccp_rank else ""
        return f"{count} depth={s.depth_cap}{ccp} thr={s.thr_bits} leaf={s.leaf_bits}"

    def build(self, policy: CompressionPolicy) -> PackedForest:
        """The compressed forest (the artefact) ``policy`` describes."""
        s = self.setting(policy)
        return compress_forest(self.base, np.array(s.kept), s.depth_cap, s.thr_bits, s.leaf_bits,
                               self.grid, alpha=self.ccp_alpha(s), collapse=self.collapse,
                               anc_min=self.anc_min)

    # -- closed-form costs ----------------------------------------------------------------------
    def costs(self, policy: CompressionPolicy) -> dict[str, float]:
        """``macs`` (comparisons per sample, worst case), ``params`` (nodes), ``size_bytes``
        (the packed artefact's bytes) and ``bops`` (its bits); no model is built."""
        s = self.setting(policy)
        kept = np.array(s.kept)
        present, split = node_masks(self.base, s.depth_cap, self.ccp_alpha(s), self.collapse,
                                    self.anc_min)
        starts = self.base.offsets[:-1]
        nodes_per_tree = np.add.reduceat(present.astype(np.int64), starts)[kept]
        n_nodes = int(nodes_per_tree.sum())
        n_internal = int(np.add.reduceat(split.astype(np.int64), starts)[kept].sum())
        size = packed_size(n_trees=len(kept), n_features=self.base.n_features,
                           n_classes=self.base.n_classes, n_nodes=n_nodes, n_internal=n_internal,
                           max_tree_nodes=int(nodes_per_tree.max()), thr_bits=s.thr_bits,
                           leaf_bits=s.leaf_bits, boosted=self.base.boosted)
        # a tree's depth is that of its deepest split plus one (the leaves below it)
        split_depth = np.where(split, self.base.depth + 1, 0)
        comparisons = int(np.maximum.reduceat(split_depth, starts)[kept].sum())
        return {"macs": float(comparisons), "params": float(n_nodes), "size_bytes": float(size),
                "bops": float(8 * size)}

    def macs(self, policy: CompressionPolicy) -> float:
        """Worst-case comparisons per sample."""
        return self.costs(policy)["macs"]

    def params(self, policy: CompressionPolicy) -> float:
        """Nodes kept."""
        return self.costs(policy)["params"]

    def size_bytes(self, policy: CompressionPolicy) -> float:
        """Bytes of the packed artefact."""
        return self.costs(policy)["size_bytes"]

    def bops(self, policy: CompressionPolicy) -> float:
        """Bits of the packed artefact."""
        return self.costs(policy)["bops"]

    def describe(self) -> str:
        """One line per decision point and knob."""
        what = (f"{self.n_stages} boosting stages x {self.outputs} trees" if self.boosted
                else f"{self.n_trees} trees")
        lines = [f"{what}, max depth {self.max_depth}, {len(self.base.feature)} nodes"]
        for p in self.decision_points:
            for k, kn in p.knobs.items():
                lines.append(f"  {p.name}.{k}: {kn.allowed()}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
