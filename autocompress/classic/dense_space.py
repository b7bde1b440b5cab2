"""The compression space of a linear model, SVM or kNN (:class:`DenseSpace`): its two knobs and
the packed artefact (``dense``) each policy builds.

Knobs: ``matrix.w_bits`` (weight / support-vector / prototype bits); ``rows.prune`` (share of
support vectors removed, smallest ``max |dual coefficient|`` first, or share of kNN prototypes
per class removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autocompress.classic.dense import MATRIX_BITS, DenseBase, PackedDense, dense_size
from autocompress.compression.policy import CompressionPolicy
from autocompress.compression.space import Knob


@dataclass(frozen=True)
class DensePoint:
    """A decision point (attributes as ``compression.DecisionPoint``)."""

    name: str
    kind: str
    index: int
    knobs: Any
    features: Any = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class DenseSpace:
    """Compression space of a linear model, SVM or kNN (see the module docstring).

    Args:
        base: the uncompressed model.
        seed: seeds the k-means that builds kNN prototypes.
    """

    boosted = False

    def __init__(self, base: DenseBase, seed: int = 0) -> None:
        self.base = base
        self.seed = seed
        self.n_features = int(base.matrix.shape[1])
        self.grid = (base.matrix.min(axis=0), base.matrix.max(axis=0))
        points: list[DensePoint] = []
        notes: list[str] = []
        self.order = np.arange(len(base.matrix))
        if base.kind == "svm":
            assert base.dual is not None
            strength = np.abs(base.dual).max(axis=0)
            self.order = np.array(sorted(range(len(strength)), key=lambda i: (-strength[i], i)))
        if base.kind in ("svm", "knn") and len(base.matrix) > base.n_classes:
            hi = 1.0 - base.n_classes / len(base.matrix)
            points.append(DensePoint("rows", base.kind, len(points), {
                "prune": Knob("prune", 0.0, hi, None, hi, 0.0)}))
        elif base.kind == "linear":
            notes.append("rows: a linear model keeps every output row")
        points.append(DensePoint("matrix", base.kind, len(points), {
            "w_bits": Knob("w_bits", None, None, MATRIX_BITS, min(MATRIX_BITS), 32)}))
        self.decision_points = points
        self.notes = tuple(notes)
        self.groups: list[Any] = []
        self._protos: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # the policy helpers are the forest space's (same knob vocabulary)
    def _points(self) -> dict[str, DensePoint]:
        return {p.name: p for p in self.decision_points}

    def identity(self) -> CompressionPolicy:
        """The uncompressed model."""
        return CompressionPolicy({})

    def most_compressed(self) -> CompressionPolicy:
        """Every knob at its most compressed value."""
        from autocompress.classic.space import ForestSpace

        return ForestSpace.most_compressed(self)  # type: ignore[arg-type]

    def sample(self, seed_or_rng: int | np.random.Generator) -> CompressionPolicy:
        """Every knob uniform over its range."""
        from autocompress.classic.space import ForestSpace

        return ForestSpace.sample(self, seed_or_rng)  # type: ignore[arg-type]

    def validate(self, policy: CompressionPolicy) -> None:
        """``UserInputError`` naming the point, knob and value when out of range."""
        from autocompress.classic.space import ForestSpace

        ForestSpace.validate(self, policy)  # type: ignore[arg-type]

    def setting(self, policy: CompressionPolicy) -> tuple[int, int]:
        """``(rows kept, matrix bits)``; kNN: prototypes per class share (rows = their sum)."""
        n = len(self.base.matrix)
        q = policy.get("rows").prune
        if self.base.kind == "knn" and q > 0:
            rows = int(self._per_class(q).sum())
        else:
            rows = max(1, min(n, math.ceil(n * (1.0 - q) - 1e-9)))
        return rows, int(policy.get("matrix").w_bits)

    def _per_class(self, q: float) -> np.ndarray:
        assert self.base.y_train is not None
        counts = np.bincount(self.base.y_train, minlength=self.base.n_classes)
        return np.maximum(1, np.ceil(counts * (1.0 - q) - 1e-9).astype(np.int64)).clip(max=counts)

    def structure_key(self, policy: CompressionPolicy) -> str:
        """Identifies the artefact a policy builds."""
        rows, bits = self.setting(policy)
        what = {"linear": "outputs", "svm": "vectors", "knn": "prototypes"}[self.base.kind]
        return f"{what}={rows} bits={bits}"

    def _prototypes(self, q: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-class k-means centroids of the model's (standardised) training points, cached by
        total count."""
        from sklearn.cluster import KMeans

        per = self._per_class(q)
        key = int(per.sum())
        if key not in self._protos:
            assert self.base.x_train is not None and self.base.y_train is not None
            z = self.base.x_train
            mats, labs = [], []
            for c, m in enumerate(per):
                zc = z[self.base.y_train == c]
                if m >= len(zc):
                    mats.append(zc)
                else:
                    km = KMeans(n_clusters=int(m), n_init=1, random_state=self.seed).fit(zc)
                    mats.append(km.cluster_centers_)
                labs.append(np.full(len(mats[-1]), c))
            self._protos[key] = (np.concatenate(mats), np.concatenate(labs))
        return self._protos[key]

    def build(self, policy: CompressionPolicy) -> PackedDense:
        """The compressed model (the artefact) ``policy`` describes."""
        b = self.base
        rows, bits = self.setting(policy)
        k, labels, dual = b.k, b.labels, b.dual
        if b.kind == "knn" and policy.get("rows").prune > 0:
            mat, labels = self._prototypes(policy.get("rows").prune)
            k = 1
        elif b.kind == "svm":
            keep = np.sort(self.order[:rows])
            mat = b.matrix[keep]
            assert labels is not None and dual is not None
            labels, dual = labels[keep], dual[:, keep]
        else:
            mat = b.matrix
        out = PackedDense(kind=b.kind, bits=bits, n_features=self.n_features,
                          n_classes=b.n_classes, rows=len(mat), k=min(k, len(mat)), gamma=b.gamma)
        if b.mean is not None:
            out.mean, out.scale = b.mean.astype(np.float32), np.asarray(b.scale, np.float32)
        if bits == 32:
            out.mat_float = mat.astype(np.float32).ravel()
        else:
            lo, hi = self.grid  # centroids stay inside the training points' per-feature range
            levels = 2 ** bits - 1
            lo32 = lo.astype(np.float32)
            step32 = ((hi - lo) / levels).astype(np.float32)
            st = np.where(step32 > 0, step32.astype(np.float64), 1.0)
            out.mat_lo, out.mat_step = lo32, step32
            out.mat_codes = np.clip(np.round((mat - lo32.astype(np.float64)) / st), 0,
                                    levels).astype(np.uint32).ravel()
        if b.kind == "linear":
            assert b.intercept is not None
            out.intercept = b.intercept.astype(np.float32)
        elif b.kind == "svm":
            assert b.intercept is not None and dual is not None
            out.dual, out.intercept = dual.astype(np.float32).ravel(), b.intercept.astype(np.float32)
        if labels is not None and b.kind != "linear":
            out.labels = np.asarray(labels, np.int64)
        return out

    def costs(self, policy: CompressionPolicy) -> dict[str, float]:
        """``size_bytes`` (closed form), ``params`` (stored numbers), ``macs`` (multiply-adds per
        sample) and ``bops`` (the artefact's bits)."""
        rows, bits = self.setting(policy)
        b = self.base
        size = dense_size(kind=b.kind, rows=rows, n_features=self.n_features,
                          n_classes=b.n_classes, bits=bits, standardised=b.mean is not None)
        head = {"linear": rows, "svm": (b.n_classes - 1) * rows, "knn": 0}[b.kind]
        return {"size_bytes": float(size), "params": float(rows * self.n_features + head),
                "macs": float(rows * self.n_features + head), "bops": float(8 * size)}

    def size_bytes(self, policy: CompressionPolicy) -> float:
        """Bytes of the packed artefact."""
        return self.costs(policy)["size_bytes"]

    def params(self, policy: CompressionPolicy) -> float:
        """Stored numbers."""
        return self.costs(policy)["params"]

    def macs(self, policy: CompressionPolicy) -> float:
        """Multiply-adds per sample."""
        return self.costs(policy)["macs"]

    def bops(self, policy: CompressionPolicy) -> float:
        """Bits of the packed artefact."""
        return self.costs(policy)["bops"]

    def describe(self) -> str:
        """One line per decision point and knob."""
        lines = [f"{self.base.kind}: {len(self.base.matrix)} rows x {self.n_features} features"]
        for p in self.decision_points:
            for kname, kn in p.knobs.items():
                lines.append(f"  {p.name}.{kname}: {kn.allowed()}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
