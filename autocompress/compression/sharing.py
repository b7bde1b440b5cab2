"""k-means weight sharing (Deep Compression, Han et al. 2016): the ``share_bits`` knob.

``share_bits = b`` replaces a conv / linear weight (each factor of a factorised layer) by ``k = 2^b``
shared values: 1-D k-means over the weights (only the nonzeros of a sparse layer, whose zeros stay),
centroids initialised linearly between the smallest and the largest weight (the initialisation the
survey reports works best), Lloyd iterations until no weight changes cluster. The layer keeps its
``weight`` (every entry equal to its centroid) and two buffers: ``weight_codebook`` (``k`` float32
values) and ``weight_index`` (the cluster of every entry). Fine-tuning updates the centroids:
after every optimizer step ``distill.reapply_constraints_`` sums each cluster's per-entry updates
into its centroid (with plain SGD exactly ``c_k -= lr * sum of the cluster's gradients``) and
writes the centroids back.

Storage: ``numel x b`` bits of indices plus the ``k x 32``-bit codebook; in a sparse layer the stored
values are the ``b``-bit indices. The survey's Eq. 10 compression ratio of a layer of ``n`` weights
of ``32`` bits is ``r = 32 n / (n log2 k + 32 k)`` (:func:`eq10_ratio`); :func:`huffman_bits` gives
the optional Huffman coding of the indices (measured on the weights, so a report figure, not a
predicted cost). ``share_bits`` and ``w_bits`` both decide how the weights are stored, so a space
offers one of them.

BOPs: a shared layer multiplies by its float32 codebook values, so its weights count 32 bits
whatever ``share_bits`` is (``KnobType.compute_bits`` keeps the layer's ``w_bits``, which the
exclusion leaves at 32); only a quantized codebook would narrow the multiplier, and none is.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from typing import TYPE_CHECKING

from autocompress.compression.knobs import WeightCodeKnob, register_knob, weight_storage_bytes

# torch is imported by the functions that touch tensors: the knob's spec (range, identity, storage)
# is read by policies and run-directory readers that never load torch.
if TYPE_CHECKING:
    from torch import Tensor, nn


__all__ = ["SHARE_BITS", "eq10_ratio", "huffman_bits", "kmeans_share", "share_", "sharing_report"]

#: Index bit-widths offered (32 = not shared).
SHARE_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 32)


def kmeans_share(w: Tensor, bits: int, iters: int = 100) -> tuple[Tensor, Tensor]:
    """``(codebook, index)``: 1-D k-means of ``w`` into ``2^bits`` clusters, linear initialisation.

    Deterministic (no random start); empty clusters keep their initial value.
    """
    import torch

    with torch.no_grad():
        k = 2**bits
        flat = w.detach().flatten().double()
        lo, hi = float(flat.min()), float(flat.max())
        codebook = torch.linspace(lo, hi, k, dtype=torch.float64)
        index = torch.zeros(flat.numel(), dtype=torch.long)
        for i in range(iters):
            mids = (codebook[1:] + codebook[:-1]) / 2  # centroids stay sorted in 1-D k-means
            new = torch.bucketize(flat, mids)
            if i > 0 and torch.equal(new, index):
                break
            index = new
            sums = torch.zeros(k, dtype=torch.float64).index_add_(0, index, flat)
            counts = torch.bincount(index, minlength=k)
            codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        return codebook.to(w.dtype), index.reshape(w.shape)


def share_(module: nn.Module, bits: int) -> None:
    """Share ``module.weight`` among ``2^bits`` values (its kept entries when it has a mask)."""
    import torch
    from torch import Tensor

    with torch.no_grad():
        w = module.weight
        mask = getattr(module, "weight_mask", None)
        values = w[mask] if isinstance(mask, Tensor) else w.flatten()
        codebook, idx = kmeans_share(values, bits)
        index = torch.zeros(w.shape, dtype=torch.long, device=w.device)
        if isinstance(mask, Tensor):
            index[mask] = idx.to(w.device)
        else:
            index = idx.reshape(w.shape).to(w.device)
        module.register_buffer("weight_codebook", codebook.to(w.device))
        module.register_buffer("weight_index", index.to(torch.uint8 if bits <= 8 else torch.int16))
        w.copy_(_shared_weight(module))


def _shared_weight(module: nn.Module) -> Tensor:
    from torch import Tensor

    w = module.weight_codebook[module.weight_index.long()]
    mask = getattr(module, "weight_mask", None)
    return w * mask if isinstance(mask, Tensor) else w


def eq10_ratio(n: int, k: int, b: int = 32) -> float:
    """The survey's Eq. 10: ``n b / (n log2 k + k b)`` for ``n`` weights of ``b`` bits, ``k`` shared."""
    return n * b / (n * math.log2(k) + k * b)


def huffman_bits(symbols: Tensor) -> int:
    """Total bits of the Huffman code of ``symbols`` (each symbol at least 1 bit)."""
    counts = Counter(symbols.flatten().tolist())
    if len(counts) <= 1:
        return int(sum(counts.values()))
    heap = [(c, i, 0) for i, c in enumerate(counts.values())]  # (weight, tie-break, bits so far)
    heapq.heapify(heap)
    total, tie = 0, len(heap)
    while len(heap) > 1:
        a, _, _ = heapq.heappop(heap)
        b, _, _ = heapq.heappop(heap)
        total += a + b  # every symbol under the merged node gets one more bit
        heapq.heappush(heap, (a + b, tie, 0))
        tie += 1
    return int(total)


class ShareBitsKnob(WeightCodeKnob):
    """Bits of a layer's shared-weight index: ``2^share_bits`` values per layer (32 = not shared)."""

    name = "share_bits"
    choices = SHARE_BITS
    left_out = "are not shared"
    stage = 35
    costs = ("size_bytes",)
    label = "share bits"
    allowed = f"one of {SHARE_BITS}"
    excludes = ("w_bits",)

    def encode_(self, module: nn.Module, bits: int) -> None:
        share_(module, bits)

    def side_bytes(self, value: float | int) -> float:
        return 4.0 * 2 ** int(value) if value < 32 else 0.0


register_knob(ShareBitsKnob())


def sharing_report(model: nn.Module) -> list[dict[str, float | int | str]]:
    """Per shared weight: the survey's Eq. 10 ratio next to the bytes really counted.

    Each row: ``layer``, ``n`` (weights shared, nonzeros of a sparse layer), ``k`` (shared
    values), ``eq10`` (``32 n / (n log2 k + 32 k)``), ``dense_bytes`` (float32), ``bytes`` (as
    ``count_size_bytes`` counts it: indices + codebook, nonzeros + bitmap when sparse) and ``huffman_bytes``
    (the same with Huffman-coded indices).
    """
    from torch import Tensor

    rows: list[dict[str, float | int | str]] = []
    for name, m in model.named_modules():
        book, index = getattr(m, "weight_codebook", None), getattr(m, "weight_index", None)
        if not isinstance(book, Tensor) or not isinstance(index, Tensor):
            continue
        w = m.weight
        mask = getattr(m, "weight_mask", None)
        kept = index[mask] if isinstance(mask, Tensor) else index.flatten()
        k, b = book.numel(), int(round(math.log2(book.numel())))
        stored = weight_storage_bytes(w.numel(), kept.numel(), int(w.shape[0]), b, 0, 4.0 * k)
        rows.append({
            "layer": name, "n": kept.numel(), "k": k, "eq10": eq10_ratio(kept.numel(), k),
            "dense_bytes": 4.0 * w.numel(), "bytes": stored,
            "huffman_bytes": stored - kept.numel() * b / 8.0 + huffman_bits(kept) / 8.0,
        })
    return rows
