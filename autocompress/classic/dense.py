"""Linear models, kernel SVMs and kNN as one packed artefact, read from scikit-learn, and its ONNX graph.

Every such model is a matrix of rows over the (standardised) features plus a small head:

=========  =====================  ===========================================================
kind       rows                   head
=========  =====================  ===========================================================
linear     one weight row per     float32 intercept per output; two classes: one output,
           output (LR, LinearSVC) label = score > 0; else argmax (one-vs-rest / multinomial)
svm        support vectors        float32 dual coefficients (classes-1 per vector), class per
           (SVC, RBF kernel)      vector, float32 intercept per class pair; one-vs-one votes
knn        prototypes             class per prototype; majority of the ``k`` nearest (ties:
                                  lowest class); prototypes are the training points, or
                                  per-class k-means centroids (then ``k = 1``)
=========  =====================  ===========================================================

Layout (little endian): a 28-byte header (magic ``ACTD``, version, kind, matrix bits, standardised
flag, rows, features, classes, k, gamma float32), then mean and scale per feature (float32, when
standardised), the matrix (float32, or float32 low and step per feature and codes packed at the
chosen bits), then the head as above (class per row: uint8, uint16 above 255 classes).
:func:`dense_size` is its byte count in closed form (the cost model).

The compression space over it (two knobs) is ``dense_space.DenseSpace``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.classic.packed_forest import PackedForest, _pack_bits, _unpack_bits
from autocompress.errors import UserInputError

DENSE_MAGIC = b"ACTD"
DENSE_VERSION = 1
KINDS = ("linear", "svm", "knn")
_HEADER = struct.Struct("<4sBBBBIIIIf")  # 28 bytes
MATRIX_BITS: tuple[int, ...] = (32, 16, 8, 6, 5, 4, 3, 2)


def _label_bytes(n_classes: int) -> int:
    return 1 if n_classes <= 255 else 2


def dense_size(*, kind: str, rows: int, n_features: int, n_classes: int, bits: int,
               standardised: bool) -> int:
    """Bytes of a dense artefact (equals ``len(PackedDense.to_bytes())``)."""
    size = _HEADER.size + (8 * n_features if standardised else 0)
    size += 4 * rows * n_features if bits == 32 else 8 * n_features + math.ceil(rows * n_features * bits / 8)
    if kind == "linear":
        return size + 4 * rows
    if kind == "svm":
        pairs = n_classes * (n_classes - 1) // 2
        return size + 4 * (n_classes - 1) * rows + _label_bytes(n_classes) * rows + 4 * pairs
    return size + _label_bytes(n_classes) * rows


@dataclass
class PackedDense:
    """A compressed linear model, SVM or kNN holding exactly the artefact's fields."""

    kind: str
    bits: int
    n_features: int
    n_classes: int
    rows: int
    k: int = 1
    gamma: float = 0.0
    mean: np.ndarray | None = None      # float32 per feature (standardised)
    scale: np.ndarray | None = None
    mat_float: np.ndarray | None = None  # float32 rows x features (bits 32)
    mat_lo: np.ndarray | None = None     # float32 per feature
    mat_step: np.ndarray | None = None
    mat_codes: np.ndarray | None = None
    intercept: np.ndarray | None = None  # float32: linear per output, svm per pair
    dual: np.ndarray | None = None       # float32 (classes-1) x rows (svm)
    labels: np.ndarray | None = None     # class per row (svm, knn)

    @property
    def boosted(self) -> bool:
        """Dense artefacts are never boosted forests (shared interface with ``PackedForest``)."""
        return False

    @property
    def n_nodes(self) -> int:
        """Rows kept (the ``params`` metric counts matrix entries instead; see ``params``)."""
        return self.rows

    def params(self) -> int:
        """Stored numbers: matrix entries plus head values."""
        head = {"linear": self.rows, "svm": (self.n_classes - 1) * self.rows,
                "knn": 0}[self.kind]
        return self.rows * self.n_features + head

    def size_bytes(self) -> int:
        """Closed-form artefact size."""
        return dense_size(kind=self.kind, rows=self.rows, n_features=self.n_features,
                          n_classes=self.n_classes, bits=self.bits,
                          standardised=self.mean is not None)

    def matrix(self) -> np.ndarray:
        """The decoded float32 matrix."""
        if self.bits == 32:
            assert self.mat_float is not None
            return self.mat_float.reshape(self.rows, self.n_features)
        assert self.mat_lo is not None and self.mat_step is not None and self.mat_codes is not None
        codes = self.mat_codes.reshape(self.rows, self.n_features).astype(np.float32)
        return (self.mat_lo[None, :] + codes * self.mat_step[None, :]).astype(np.float32)

    def _z(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.mean is None:
            return x
        assert self.scale is not None
        return (x - self.mean) / self.scale

    def svm_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``coef`` (rows x pairs, float32) and ``pair`` class indices (pairs x 2) of one-vs-one."""
        assert self.dual is not None and self.labels is not None
        k = self.n_classes
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        coef = np.zeros((self.rows, len(pairs)), dtype=np.float32)
        dual = self.dual.reshape(k - 1, self.rows)
        for p, (i, j) in enumerate(pairs):
            on_i, on_j = self.labels == i, self.labels == j
            coef[on_i, p] = dual[j - 1, on_i]
            coef[on_j, p] = dual[i, on_j]
        return coef, np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def sq_distances(self, x: np.ndarray) -> np.ndarray:
        """float32 squared distances (samples x rows) as the ONNX graph computes them."""
        z = self._z(x)
        m = self.matrix()
        zz = (z * z).sum(axis=1, keepdims=True, dtype=np.float32)
        mm = (m * m).sum(axis=1, dtype=np.float32)[None, :]
        return np.maximum(zz - np.float32(2) * (z @ m.T) + mm, np.float32(0))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Per sample and class: linear scores (two classes: ``[0, s]``), SVM votes, kNN counts."""
        if self.kind == "linear":
            assert self.intercept is not None
            s = self._z(x) @ self.matrix().T + self.intercept
            return np.concatenate([np.zeros_like(s), s], axis=1) if s.shape[1] == 1 else s
        d = self.sq_distances(x)
        assert self.labels is not None
        onehot = np.eye(self.n_classes, dtype=np.float32)[self.labels.astype(np.int64)]
        if self.kind == "svm":
            assert self.intercept is not None
            kern = np.exp(-np.float32(self.gamma) * d)
            coef, pairs = self.svm_pairs()
            dec = kern @ coef + self.intercept
            votes = np.zeros((len(d), self.n_classes), dtype=np.float32)
            for p, (i, j) in enumerate(pairs):
                votes[:, i] += dec[:, p] > 0
                votes[:, j] += dec[:, p] <= 0
            return votes
        near = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        return onehot[near].sum(axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class index per sample (ties: the lowest class)."""
        return np.argmax(self.scores(x), axis=1)

    # -- the artefact ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The packed artefact."""
        parts = [_HEADER.pack(DENSE_MAGIC, DENSE_VERSION, KINDS.index(self.kind), self.bits,
                              int(self.mean is not None), self.rows, self.n_features,
                              self.n_classes, self.k, self.gamma)]
        if self.mean is not None:
            assert self.scale is not None
            parts += [self.mean.astype("<f4").tobytes(), self.scale.astype("<f4").tobytes()]
        if self.bits == 32:
            assert self.mat_float is not None
            parts.append(self.mat_float.astype("<f4").tobytes())
        else:
            assert self.mat_lo is not None and self.mat_step is not None and self.mat_codes is not None
            parts += [self.mat_lo.astype("<f4").tobytes(), self.mat_step.astype("<f4").tobytes(),
                      _pack_bits(self.mat_codes, self.bits)]
        lab = "<u1" if _label_bytes(self.n_classes) == 1 else "<u2"
        if self.kind == "linear":
            assert self.intercept is not None
            parts.append(self.intercept.astype("<f4").tobytes())
        elif self.kind == "svm":
            assert self.dual is not None and self.labels is not None and self.intercept is not None
            parts += [self.dual.astype("<f4").tobytes(), self.labels.astype(lab).tobytes(),
                      self.intercept.astype("<f4").tobytes()]
        else:
            assert self.labels is not None
            parts.append(self.labels.astype(lab).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, buf: bytes) -> PackedDense:
        """Read an artefact written by :meth:`to_bytes`."""
        if len(buf) < _HEADER.size:
            raise UserInputError("not an autocompress dense artefact (too short)")
        magic, version, kind, bits, std, rows, nf, nc, k, gamma = _HEADER.unpack_from(buf, 0)
        if magic != DENSE_MAGIC or version != DENSE_VERSION or kind >= len(KINDS):
            raise UserInputError(f"not an autocompress dense artefact of version {DENSE_VERSION}")
        pos = _HEADER.size

        def take(n: int, dtype: str) -> np.ndarray:
            nonlocal pos
            arr = np.frombuffer(buf, dtype=dtype, count=n, offset=pos).copy()
            pos += arr.nbytes
            return arr

        out = cls(kind=KINDS[kind], bits=bits, n_features=nf, n_classes=nc, rows=rows, k=k,
                  gamma=float(gamma))
        if std:
            out.mean, out.scale = take(nf, "<f4"), take(nf, "<f4")
        if bits == 32:
            out.mat_float = take(rows * nf, "<f4")
        else:
            out.mat_lo, out.mat_step = take(nf, "<f4"), take(nf, "<f4")
            nbytes = math.ceil(rows * nf * bits / 8)
            out.mat_codes = _unpack_bits(buf[pos:pos + nbytes], rows * nf, bits)
            pos += nbytes
        lab = "<u1" if _label_bytes(nc) == 1 else "<u2"
        if out.kind == "linear":
            out.intercept = take(rows, "<f4")
        elif out.kind == "svm":
            out.dual = take((nc - 1) * rows, "<f4")
            out.labels = take(rows, lab)
            out.intercept = take(nc * (nc - 1) // 2, "<f4")
        else:
            out.labels = take(rows, lab)
        if pos != len(buf):
            raise UserInputError(f"dense artefact has {len(buf) - pos} trailing bytes")
        return out


# -- reading scikit-learn models ------------------------------------------------------------------
@dataclass
class DenseBase:
    """An uncompressed dense model: float64 matrix and head, optional standardisation."""

    kind: str
    matrix: np.ndarray
    n_classes: int
    intercept: np.ndarray | None = None
    dual: np.ndarray | None = None
    labels: np.ndarray | None = None
    k: int = 1
    gamma: float = 0.0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    x_train: np.ndarray | None = None  # the kNN's (standardised) training points
    y_train: np.ndarray | None = None


def dense_from_sklearn(model: Any, n_classes: int) -> DenseBase:
    """Read a fitted ``LogisticRegression`` / ``LinearSVC`` / ``SVC`` (RBF) /
    ``KNeighborsClassifier``, optionally behind a ``StandardScaler`` in a ``Pipeline``."""
    mean = scale = None
    est = model
    if hasattr(model, "steps"):
        if len(model.steps) != 2 or type(model.steps[0][1]).__name__ != "StandardScaler":
            raise UserInputError("a Pipeline model must be StandardScaler then the classifier")
        sc = model.steps[0][1]
        mean = np.asarray(sc.mean_ if sc.with_mean else np.zeros(sc.n_features_in_), np.float32)
        scale = np.asarray(sc.scale_ if sc.with_std else np.ones(sc.n_features_in_), np.float32)
        est = model.steps[1][1]
    name = type(est).__name__
    if name in ("LogisticRegression", "LinearSVC"):
        return DenseBase("linear", np.asarray(est.coef_, np.float64), n_classes,
                         intercept=np.asarray(est.intercept_, np.float64).reshape(-1),
                         mean=mean, scale=scale)
    if name == "SVC":
        if est.kernel != "rbf":
            raise UserInputError(f"SVC kernel {est.kernel!r} is not supported; allowed: 'rbf'")
        labels = np.repeat(np.arange(n_classes), est.n_support_)
        # scikit-learn negates a two-class SVC's public coefficients (positive = second class);
        # undo it so every pair (i, j) votes i on a positive decision, as libsvm does
        sign = -1.0 if n_classes == 2 else 1.0
        return DenseBase("svm", np.asarray(est.support_vectors_, np.float64), n_classes,
                         intercept=sign * np.asarray(est.intercept_, np.float64), labels=labels,
                         dual=sign * np.asarray(est.dual_coef_, np.float64),
                         gamma=float(est._gamma), mean=mean, scale=scale)
    if name == "KNeighborsClassifier":
        if est.weights != "uniform" or est.metric not in ("minkowski", "euclidean") or (
                est.metric == "minkowski" and est.p != 2):
            raise UserInputError("KNeighborsClassifier must use uniform weights and the "
                                 "Euclidean metric")
        x = np.asarray(est._fit_X, np.float64)
        y = np.asarray(est._y, np.int64)
        return DenseBase("knn", x, n_classes, labels=y, k=int(est.n_neighbors), mean=mean,
                         scale=scale, x_train=x, y_train=y)
    raise UserInputError(f"model of type {name} is not supported; allowed: LogisticRegression, "
                         "LinearSVC, SVC (rbf), KNeighborsClassifier (optionally after a "
                         "StandardScaler), or a tree ensemble")


# -- ONNX -----------------------------------------------------------------------------------------
def dense_to_onnx(packed: PackedDense) -> bytes:
    """Serialized ONNX model (standard operators) computing ``packed``'s labels."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, arr: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(arr), name)

    init: list[Any] = []
    nodes: list[Any] = []
    z = "X"
    if packed.mean is not None:
        init += [const("mean", packed.mean.astype(np.float32)), const("scale", packed.scale)]
        nodes += [helper.make_node("Sub", ["X", "mean"], ["centred"]),
                  helper.make_node("Div", ["centred", "scale"], ["z"])]
        z = "z"
    m = packed.matrix()
    if packed.kind == "linear":
        assert packed.intercept is not None
        init += [const("wt", np.ascontiguousarray(m.T)), const("b", packed.intercept)]
        nodes += [helper.make_node("MatMul", [z, "wt"], ["mm"]),
                  helper.make_node("Add", ["mm", "b"], ["scores"])]
        if packed.rows == 1:
            init += [const("zero", np.float32(0)), const("flat", np.array([-1], np.int64))]
            nodes += [helper.make_node("Greater", ["scores", "zero"], ["pos"]),
                      helper.make_node("Cast", ["pos"], ["lab2"], to=TensorProto.INT64),
                      helper.make_node("Reshape", ["lab2", "flat"], ["label"])]
        else:
            nodes.append(helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0))
    else:
        assert packed.labels is not None
        init += [const("mt", np.ascontiguousarray(m.T)),
                 const("mm2", (m * m).sum(axis=1, dtype=np.float32)[None, :]),
                 const("two", np.float32(2)), const("fzero", np.float32(0)),
                 const("axes1", np.array([1], np.int64))]
        nodes += [helper.make_node("Mul", [z, z], ["zsq"]),
                  helper.make_node("ReduceSum", ["zsq", "axes1"], ["zz"], keepdims=1),
                  helper.make_node("MatMul", [z, "mt"], ["zm"]),
                  helper.make_node("Mul", ["zm", "two"], ["zm2"]),
                  helper.make_node("Sub", ["zz", "zm2"], ["d0"]),
                  helper.make_node("Add", ["d0", "mm2"], ["d1"]),
                  helper.make_node("Max", ["d1", "fzero"], ["dist"])]
        onehot = np.eye(packed.n_classes, dtype=np.float32)[packed.labels.astype(np.int64)]
        if packed.kind == "svm":
            coef, pairs = packed.svm_pairs()
            assert packed.intercept is not None
            win = np.zeros((len(pairs), packed.n_classes), np.float32)
            lose = np.zeros_like(win)
            win[np.arange(len(pairs)), pairs[:, 0]] = 1
            lose[np.arange(len(pairs)), pairs[:, 1]] = 1
            init += [const("neg_gamma", np.float32(-packed.gamma)), const("coef", coef),
                     const("rho", packed.intercept), const("win", win), const("lose", lose)]
            nodes += [helper.make_node("Mul", ["dist", "neg_gamma"], ["gd"]),
                      helper.make_node("Exp", ["gd"], ["kern"]),
                      helper.make_node("MatMul", ["kern", "coef"], ["kc"]),
                      helper.make_node("Add", ["kc", "rho"], ["dec"]),
                      helper.make_node("Greater", ["dec", "fzero"], ["gt"]),
                      helper.make_node("Cast", ["gt"], ["gtf"], to=TensorProto.FLOAT),
                      helper.make_node("Not", ["gt"], ["le"]),
                      helper.make_node("Cast", ["le"], ["lef"], to=TensorProto.FLOAT),
                      helper.make_node("MatMul", ["gtf", "win"], ["v1"]),
                      helper.make_node("MatMul", ["lef", "lose"], ["v2"]),
                      helper.make_node("Add", ["v1", "v2"], ["scores"])]
        else:
            init += [const("k", np.array([packed.k], np.int64)), const("onehot", onehot)]
            nodes += [helper.make_node("Neg", ["dist"], ["negd"]),
                      helper.make_node("TopK", ["negd", "k"], ["topv", "topi"], axis=1,
                                       largest=1, sorted=1),
                      helper.make_node("Gather", ["onehot", "topi"], ["votes3"], axis=0),
                      helper.make_node("ReduceSum", ["votes3", "axes1"], ["scores"], keepdims=0)]
        nodes.append(helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes, f"autocompress_{packed.kind}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, packed.n_features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def load_artefact(blob: bytes) -> Any:
    """A packed artefact of any classic kind (``PackedDense`` or ``PackedForest``), by its magic."""
    return PackedDense.from_bytes(blob) if blob[:4] == DENSE_MAGIC else PackedForest.from_bytes(blob)
