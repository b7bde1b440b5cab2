"""The packed artefact of a compressed tree ensemble (:class:`PackedForest`), byte for byte.

:func:`compress_forest` (``forest``) builds it; ``to_bytes`` writes exactly the arrays it predicts
from and :func:`packed_size` is its byte count in closed form (the search's cost model), so a
loaded artefact predicts identically.

Layout (little endian): a 32-byte header (magic ``ACTF``, version, index bytes, threshold bits,
leaf bits, trees, features, classes, nodes, internal nodes, max depth), tree offsets (uint32 x
trees+1), split feature per node (int16, -1 = leaf), right child per internal node (uint16 or
uint32, tree-local; the left child is the next node), thresholds (float32 per internal node at 32
bits, else float32 low and step per feature plus codes packed at the chosen bits), leaf class
fractions (float32 at 32 bits, else codes ``round(p * (2^b - 1))`` packed at the chosen bits);
with two classes only the second class's fraction is stored and the first is its complement
(``1 - p`` in float32, or ``2^b - 1 - code``).

A boosted ensemble (gradient boosting; magic ``ACTB``) has the same layout up to the thresholds,
then one float32 initial score per output (one output for two classes or a numeric target, else
one per class), then one value per leaf (the learning rate folded in): float32 at 32 bits, else
float32 low and step and codes packed at the chosen bits. Tree ``t`` adds to output
``t mod outputs``. A regression forest (0 classes in the header) is stored the same way, its leaf
means divided by the number of trees kept and an initial score of 0, so the sum is the mean.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from autocompress.errors import UserInputError

MAGIC = b"ACTF"
BOOST_MAGIC = b"ACTB"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBBBIIIIII")  # 32 bytes
HEADER_BYTES = _HEADER.size


def stored_classes(n_classes: int) -> int:
    """Leaf values stored per leaf: one for two classes (the other is its complement)."""
    return 1 if n_classes == 2 else n_classes


def boost_outputs(n_classes: int) -> int:
    """Raw-score outputs of a boosted model: one for two classes or regression (0 classes), else
    one per class."""
    return 1 if n_classes <= 2 else n_classes


def packed_size(*, n_trees: int, n_features: int, n_classes: int, n_nodes: int, n_internal: int,
                max_tree_nodes: int, thr_bits: int, leaf_bits: int, boosted: bool = False) -> int:
    """Bytes of the packed artefact with these counts (the cost model; equals ``len(to_bytes())``)."""
    n_leaves = n_nodes - n_internal
    index_bytes = 2 if max_tree_nodes <= 0xFFFF else 4
    size = HEADER_BYTES + 4 * (n_trees + 1) + 2 * n_nodes + index_bytes * n_internal
    size += 4 * n_internal if thr_bits == 32 else 8 * n_features + math.ceil(n_internal * thr_bits / 8)
    if boosted:
        size += 4 * boost_outputs(n_classes)
        return size + (4 * n_leaves if leaf_bits == 32 else 8 + math.ceil(n_leaves * leaf_bits / 8))
    n_vals = n_leaves * stored_classes(n_classes)
    size += 4 * n_vals if leaf_bits == 32 else math.ceil(n_vals * leaf_bits / 8)
    return size


def _pack_bits(codes: np.ndarray, bits: int) -> bytes:
    arr = codes.astype(np.uint32).ravel()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    return np.packbits(((arr[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def _unpack_bits(buf: bytes, n: int, bits: int) -> np.ndarray:
    raw = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))[: n * bits].reshape(n, bits)
    return (raw.astype(np.uint32) << np.arange(bits - 1, -1, -1, dtype=np.uint32)).sum(
        axis=1, dtype=np.uint32)


@dataclass
class PackedForest:
    """A compressed forest holding exactly the artefact's fields (see the module docstring).

    ``thr_lo``/``thr_step``/``thr_codes`` are set when ``thr_bits < 32`` (else ``thr_float``);
    ``leaf_codes`` when ``leaf_bits < 32`` (else ``leaf_float``). A boosted ensemble has ``init``
    (float32 per output) and, when quantized, ``leaf_lo``/``leaf_step`` (float32).
    """

    offsets: np.ndarray          # uint32 (trees + 1)
    feature: np.ndarray          # int16 (nodes)
    right: np.ndarray            # uint16/uint32 (internal nodes)
    thr_bits: int
    leaf_bits: int
    n_features: int
    n_classes: int
    max_depth: int
    thr_float: np.ndarray | None = None
    thr_lo: np.ndarray | None = None
    thr_step: np.ndarray | None = None
    thr_codes: np.ndarray | None = None
    leaf_float: np.ndarray | None = None
    leaf_codes: np.ndarray | None = None
    init: np.ndarray | None = None
    leaf_lo: float = 0.0
    leaf_step: float = 0.0

    @property
    def boosted(self) -> bool:
        """True for a boosted ensemble (trees add raw scores)."""
        return self.init is not None

    @property
    def n_trees(self) -> int:
        """Trees kept."""
        return len(self.offsets) - 1

    @property
    def n_nodes(self) -> int:
        """Nodes kept."""
        return len(self.feature)

    @property
    def n_internal(self) -> int:
        """Split nodes kept."""
        return int((self.feature >= 0).sum())

    def size_bytes(self) -> int:
        """Closed-form artefact size (equals ``len(self.to_bytes())``)."""
        return packed_size(n_trees=self.n_trees, n_features=self.n_features,
                           n_classes=self.n_classes, n_nodes=self.n_nodes,
                           n_internal=self.n_internal, max_tree_nodes=int(np.diff(self.offsets).max()),
                           thr_bits=self.thr_bits, leaf_bits=self.leaf_bits, boosted=self.boosted)

    # -- decoding (what prediction and export read) --------------------------------------------
    def thresholds(self) -> np.ndarray:
        """float32 threshold per internal node (dequantized when quantized)."""
        if self.thr_bits == 32:
            assert self.thr_float is not None
            return self.thr_float
        assert self.thr_lo is not None and self.thr_step is not None and self.thr_codes is not None
        f = self.feature[self.feature >= 0].astype(np.int64)
        return (self.thr_lo[f].astype(np.float64)
                + self.thr_codes.astype(np.float64) * self.thr_step[f].astype(np.float64)).astype(np.float32)

    def leaf_weights(self) -> np.ndarray:
        """Per leaf and class: float32 fractions at 32 bits, integer codes otherwise (float64);
        boosted: one column, float32 values or integer codes."""
        k = 1 if self.boosted else stored_classes(self.n_classes)
        if self.leaf_bits == 32:
            assert self.leaf_float is not None
            w = self.leaf_float.reshape(-1, k)
            if self.n_classes == 2 and not self.boosted:
                w = np.concatenate([np.float32(1.0) - w, w], axis=1)
            return w.astype(np.float64)
        assert self.leaf_codes is not None
        c = self.leaf_codes.reshape(-1, k).astype(np.int64)
        if self.n_classes == 2 and not self.boosted:
            c = np.concatenate([(2 ** self.leaf_bits - 1) - c, c], axis=1)
        return c.astype(np.float64)

    def leaf_scale(self) -> float:
        """Divide summed leaf weights by this to get class probabilities."""
        return float(self.n_trees) * (1.0 if self.leaf_bits == 32 else float(2 ** self.leaf_bits - 1))

    def global_right(self) -> np.ndarray:
        """Global index of the right child per node (-1 at leaves)."""
        inner = self.feature >= 0
        tree_of = np.repeat(np.arange(self.n_trees), np.diff(self.offsets.astype(np.int64)))
        out = np.full(self.n_nodes, -1, dtype=np.int64)
        out[inner] = self.offsets[tree_of[inner]].astype(np.int64) + self.right.astype(np.int64)
        return out

    def boost_offset(self) -> np.ndarray:
        """float32 added per output after the (scaled) leaf sum: the initial score, plus trees
        times the grid's low end when leaves are quantized."""
        assert self.init is not None
        n_out = len(self.init)
        if self.leaf_bits == 32:
            return self.init.astype(np.float32)
        per_out = np.bincount(np.arange(self.n_trees) % n_out, minlength=n_out)
        return (self.init.astype(np.float64) + per_out * float(np.float32(self.leaf_lo))).astype(np.float32)

    def leaves_of(self, x: np.ndarray) -> np.ndarray:
        """Leaf row (into ``leaf_weights``) reached per sample and tree."""
        x = np.asarray(x, dtype=np.float32)
        inner = self.feature >= 0
        thr = np.zeros(self.n_nodes, dtype=np.float32)
        thr[inner] = self.thresholds()
        right = self.global_right()
        feat = np.maximum(self.feature.astype(np.int64), 0)
        leaf_idx = np.cumsum(~inner) - 1
        nodes = np.broadcast_to(self.offsets[:-1].astype(np.int64), (len(x), self.n_trees)).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(self.max_depth):
            go_left = x[rows, feat[nodes]] <= thr[nodes]
            nxt = np.where(go_left, nodes + 1, right[nodes])
            nodes = np.where(inner[nodes], nxt, nodes)
        return leaf_idx[nodes]

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """A boosted ensemble's float32 raw score per sample and output: leaf weights summed in
        tree order in float32 (as ONNX Runtime's tree ensemble does), times the leaf step when
        quantized, plus :meth:`boost_offset`."""
        assert self.init is not None
        n_out = len(self.init)
        w = self.leaf_weights()[:, 0].astype(np.float32)
        leaves = self.leaves_of(x)
        acc = np.zeros((len(leaves), n_out), dtype=np.float32)
        for t in range(self.n_trees):
            acc[:, t % n_out] += w[leaves[:, t]]
        if self.leaf_bits != 32:
            acc = acc * np.float32(self.leaf_step)
        return acc + self.boost_offset()

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Summed leaf weights per sample and class (argmax = predicted class); boosted: the
        raw scores (two classes: ``[0, raw]``)."""
        if self.boosted:
            raw = self.raw_scores(x)
            return np.concatenate([np.zeros_like(raw), raw], axis=1) if raw.shape[1] == 1 else raw
        return self.leaf_weights()[self.leaves_of(x)].sum(axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class index per sample (ties: the lowest class); regression: the value."""
        if self.boosted and self.n_classes == 0:
            return self.raw_scores(x)[:, 0]
        return np.argmax(self.scores(x), axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (mean of the trees' decoded leaf fractions; boosted: sigmoid or
        softmax of the raw scores)."""
        if self.boosted:
            raw = self.raw_scores(x).astype(np.float64)
            if raw.shape[1] == 1:
                p = 1.0 / (1.0 + np.exp(-raw))
                return np.concatenate([1.0 - p, p], axis=1)
            e = np.exp(raw - raw.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return self.scores(x) / self.leaf_scale()

    # -- the artefact ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The packed artefact."""
        index_bytes = 2 if int(np.diff(self.offsets).max()) <= 0xFFFF else 4
        parts = [
            _HEADER.pack(BOOST_MAGIC if self.boosted else MAGIC, FORMAT_VERSION, index_bytes, self.thr_bits, self.leaf_bits,
                         self.n_trees, self.n_features, self.n_classes, self.n_nodes,
                         self.n_internal, self.max_depth),
            self.offsets.astype("<u4").tobytes(),
            self.feature.astype("<i2").tobytes(),
            self.right.astype("<u2" if index_bytes == 2 else "<u4").tobytes(),
        ]
        if self.thr_bits == 32:
            assert self.thr_float is not None
            parts.append(self.thr_float.astype("<f4").tobytes())
        else:
            assert self.thr_lo is not None and self.thr_step is not None and self.thr_codes is not None
            parts += [self.thr_lo.astype("<f4").tobytes(), self.thr_step.astype("<f4").tobytes(),
                      _pack_bits(self.thr_codes, self.thr_bits)]
        if self.boosted:
            assert self.init is not None
            parts.append(self.init.astype("<f4").tobytes())
        if self.leaf_bits == 32:
            assert self.leaf_float is not None
            parts.append(self.leaf_float.astype("<f4").tobytes())
        else:
            assert self.leaf_codes is not None
            if self.boosted:
                parts.append(np.array([self.leaf_lo, self.leaf_step], dtype="<f4").tobytes())
            parts.append(_pack_bits(self.leaf_codes, self.leaf_bits))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, buf: bytes) -> PackedForest:
        """Read an artefact written by :meth:`to_bytes` (a wrong magic or version is refused)."""
        if len(buf) < HEADER_BYTES:
            raise UserInputError("not an autocompress tree artefact (too short)")
        (magic, version, index_bytes, thr_bits, leaf_bits, n_trees, n_features, n_classes,
         n_nodes, n_internal, max_depth) = _HEADER.unpack_from(buf, 0)
        if magic not in (MAGIC, BOOST_MAGIC) or version != FORMAT_VERSION:
            raise UserInputError(f"not an autocompress tree artefact of version {FORMAT_VERSION} "
                                 f"(magic {magic!r}, version {version})")
        pos = HEADER_BYTES

        def take(n: int, dtype: str) -> np.ndarray:
            nonlocal pos
            arr = np.frombuffer(buf, dtype=dtype, count=n, offset=pos).copy()
            pos += arr.nbytes
            return arr

        def take_bits(n: int, bits: int) -> np.ndarray:
            nonlocal pos
            nbytes = math.ceil(n * bits / 8)
            out = _unpack_bits(buf[pos:pos + nbytes], n, bits)
            pos += nbytes
            return out

        out = cls(offsets=take(n_trees + 1, "<u4"), feature=take(n_nodes, "<i2"),
                  right=take(n_internal, "<u2" if index_bytes == 2 else "<u4"),
                  thr_bits=thr_bits, leaf_bits=leaf_bits, n_features=n_features,
                  n_classes=n_classes, max_depth=max_depth)
        if thr_bits == 32:
            out.thr_float = take(n_internal, "<f4")
        else:
            out.thr_lo, out.thr_step = take(n_features, "<f4"), take(n_features, "<f4")
            out.thr_codes = take_bits(n_internal, thr_bits)
        boosted = magic == BOOST_MAGIC
        n_vals = (n_nodes - n_internal) * (1 if boosted else stored_classes(n_classes))
        if boosted:
            out.init = take(boost_outputs(n_classes), "<f4")
        if leaf_bits == 32:
            out.leaf_float = take(n_vals, "<f4")
        else:
            if boosted:
                out.leaf_lo, out.leaf_step = (float(v) for v in take(2, "<f4"))
            out.leaf_codes = take_bits(n_vals, leaf_bits)
        if pos != len(buf):
            raise UserInputError(f"tree artefact has {len(buf) - pos} trailing bytes")
        return out
