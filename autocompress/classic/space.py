"""The compression space of a tree ensemble, speaking the engine's space/policy interface.

Four decision points, each a ``LayerAction`` knob the engine's searchers already handle:

==============  ==========  ===============================================================
point           knob        meaning
==============  ==========  ===============================================================
``trees``       ``prune``   share of trees removed; the trees kept are the best ranked by
                            their individual validation accuracy (ties: lower index)
``depth``       ``prune``   share of the forest's depth removed: depth cap
                            ``ceil(D * (1 - prune))``; a node at the cap becomes a leaf
``thresholds``  ``w_bits``  bits per split threshold (per-feature uniform grid; 32 = float32)
``leaves``      ``w_bits``  bits per leaf class fraction (32 = float32)
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

from autocompress.classic.forest import ForestArrays, PackedForest, compress_forest, packed_size
from autocompress.compression.space import Knob
from autocompress.errors import UserInputError

if TYPE_CHECKING:
    from autocompress.compression.policy import CompressionPolicy

THRESHOLD_BITS: tuple[int, ...] = (32, 16, 8, 6, 5, 4, 3, 2)
LEAF_BITS: tuple[int, ...] = (32, 16, 8, 6, 5, 4, 3, 2, 1)
POINTS = ("trees", "depth", "thresholds", "leaves")


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
    """What a policy builds: trees kept (indices), depth cap and bit-widths."""

    kept: tuple[int, ...]
    depth_cap: int
    thr_bits: int
    leaf_bits: int


class ForestSpace:
    """Compression space of a fitted forest (see the module docstring).

    Args:
        base: the uncompressed forest.
        x_val: validation features (ranks the trees).
        y_val: validation labels.
    """

    def __init__(self, base: ForestArrays, x_val: np.ndarray, y_val: np.ndarray) -> None:
        self.base = base
        self.grid = base.threshold_grid()
        self.n_trees = base.n_trees
        self.tree_depths = base.tree_depths
        self.max_depth = int(self.tree_depths.max())
        self.nodes_at, self.internal_at = base.count_tables()
        accs = np.array([
            float((compress_forest(base, np.array([t]), self.max_depth, 32, 32, self.grid)
                   .predict(x_val) == y_val).mean())
            for t in range(self.n_trees)
        ])
        self.tree_val_acc = accs
        self.ranking = np.array(sorted(range(self.n_trees), key=lambda t: (-accs[t], t)))
        points: list[TreePoint] = []
        notes: list[str] = []
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
        from autocompress.compression.policy import CompressionPolicy

        return CompressionPolicy({})

    def most_compressed(self) -> CompressionPolicy:
        """Every knob at its most compressed value."""
        from autocompress.compression.policy import CompressionPolicy, LayerAction

        return CompressionPolicy({p.name: LayerAction(**{k: kn.most_compressed for k, kn in p.knobs.items()})
                                  for p in self.decision_points})

    def sample(self, seed_or_rng: int | np.random.Generator) -> CompressionPolicy:
        """Every knob uniform over its range (bit-widths uniform over the choices)."""
        from autocompress.compression.policy import CompressionPolicy, LayerAction

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
        trees = policy.get("trees").prune
        depth = policy.get("depth").prune
        n_keep = max(1, min(self.n_trees, math.ceil(self.n_trees * (1.0 - trees) - 1e-9)))
        cap = max(1, min(self.max_depth, math.ceil(self.max_depth * (1.0 - depth) - 1e-9)))
        kept = tuple(sorted(int(t) for t in self.ranking[:n_keep]))
        return TreeSetting(kept, cap, int(policy.get("thresholds").w_bits), int(policy.get("leaves").w_bits))

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Identifies the artefact a policy builds (policies building the same one share it)."""
        s = self.setting(policy)
        return f"trees={len(s.kept)} depth={s.depth_cap} thr={s.thr_bits} leaf={s.leaf_bits}"

    def build(self, policy: CompressionPolicy) -> PackedForest:
        """The compressed forest (the artefact) ``policy`` describes."""
        s = self.setting(policy)
        return compress_forest(self.base, np.array(s.kept), s.depth_cap, s.thr_bits, s.leaf_bits, self.grid)

    # -- closed-form costs ----------------------------------------------------------------------
    def costs(self, policy: CompressionPolicy) -> dict[str, float]:
        """``macs`` (comparisons per sample, worst case), ``params`` (nodes), ``size_bytes``
        (the packed artefact's bytes) and ``bops`` (its bits); no model is built."""
        s = self.setting(policy)
        kept = np.array(s.kept)
        col = min(s.depth_cap, self.nodes_at.shape[1] - 1)
        nodes_per_tree = self.nodes_at[kept, col]
        n_nodes = int(nodes_per_tree.sum())
        n_internal = int(self.internal_at[kept, col].sum())
        size = packed_size(n_trees=len(kept), n_features=self.base.n_features,
                           n_classes=self.base.n_classes, n_nodes=n_nodes, n_internal=n_internal,
                           max_tree_nodes=int(nodes_per_tree.max()), thr_bits=s.thr_bits,
                           leaf_bits=s.leaf_bits)
        comparisons = int(np.minimum(self.tree_depths[kept], s.depth_cap).sum())
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
        lines = [f"{self.n_trees} trees, max depth {self.max_depth}, {len(self.base.feature)} nodes"]
        for p in self.decision_points:
            for k, kn in p.knobs.items():
                lines.append(f"  {p.name}.{k}: {kn.allowed()}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
