"""Low-rank factorisation by truncated SVD (survey Eq. 14): one layer becomes two thinner ones.

``Linear(n -> m)`` becomes ``Linear(n -> r, no bias)`` then ``Linear(r -> m)``; a ``Conv k x k``
with ``C_in -> C_out`` becomes ``Conv k x k`` with ``r`` filters (no bias) then a ``1 x 1`` conv
``r -> C_out`` carrying the bias. With ``W`` reshaped to ``m x n`` (``n = C_in * k * k``), MACs and
parameters go from ``m * n`` to ``r * (m + n)`` per output position, so factorising only pays when
``r < m * n / (m + n)``; ``factorised_rank`` returns ``None`` where it would not.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LowRank", "can_factorise", "factorise", "factorised_rank", "full_rank"]


class LowRank(nn.Sequential):
    """The two factors of a factorised layer (``[0]`` then ``[1]``), with the kept ``rank``."""

    def __init__(self, first: nn.Module, second: nn.Module, rank: int) -> None:
        super().__init__(first, second)
        self.rank = int(rank)


def _dims(module: nn.Module) -> tuple[int, int]:
    """``(m, n)`` of the weight seen as a matrix: outputs x (inputs per output)."""
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def can_factorise(module: nn.Module) -> bool:
    """Plain ``nn.Linear`` and ungrouped, untransposed ``nn.ConvNd`` whose rank-1 factors are smaller."""
    if type(module) is nn.Linear:
        pass
    elif type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if module.groups != 1 or module.transposed or module.padding_mode != "zeros":
            return False
    else:
        return False
    m, n = _dims(module)
    return m * n > (m + n)


def full_rank(m: int, n: int) -> int:
    """Largest rank of an ``m x n`` matrix."""
    return min(m, n)


def factorised_rank(m: int, n: int, rank: float) -> int | None:
    """The kept rank ``r`` for fraction ``rank`` of ``m x n``, or ``None`` if factorising saves nothing.

    ``r = max(1, floor(rank * min(m, n) + 0.5))``; ``rank = 1.0`` always returns ``None``.
    """
    if rank >= 1.0:
        return None
    r = max(1, int(math.floor(rank * min(m, n) + 0.5)))
    if r * (m + n) >= m * n:
        return None
    return r


def _truncated_factors(mat: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``r`` approximation of ``mat`` (truncated SVD).

    Computed from the eigendecomposition (float64) of the smaller Gram matrix (float32 products):
    several times faster than a full SVD for conv weights, where ``n = C_in k k`` is much larger
    than ``m``, and exact at full rank (``U U^T = I``). The singular values are split evenly
    between the two factors so both quantize well.
    """
    x = mat.detach().float()
    m, n = x.shape
    transpose = m > n
    if transpose:
        x = x.T
    evals, evecs = torch.linalg.eigh((x @ x.T).double())
    u = evecs[:, -r:].flip(1).float()  # top-r left singular vectors of x
    s = evals[-r:].flip(0).clamp(min=0.0).sqrt().float()
    scale = torch.where(s > 1e-12 * s.max().clamp(min=1e-30), s.sqrt(), torch.ones_like(s))
    left = u * scale  # (rows of x) x r
    right = (u.T @ x) / scale[:, None]  # r x (cols of x)
    if transpose:  # x = mat.T = left @ right  =>  mat = right.T @ left.T
        return right.T, left.T
    return left, right


@torch.no_grad()
def factorise(module: nn.Module, r: int) -> LowRank:
    """Replace-ready ``LowRank`` holding the rank-``r`` truncated SVD of ``module``'s weight."""
    w = module.weight.detach()
    m, n = _dims(module)
    a, b = _truncated_factors(w.reshape(m, n), r)
    a, b = a.to(w.dtype), b.to(w.dtype)
    bias = module.bias
    if isinstance(module, nn.Linear):
        first: nn.Module = nn.Linear(n, r, bias=False)
        second: nn.Module = nn.Linear(r, m, bias=bias is not None)
        first.weight.copy_(b)
        second.weight.copy_(a)
    else:
        conv_cls = type(module)
        first = conv_cls(
            module.in_channels,
            r,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
        )
        second = conv_cls(r, m, 1, bias=bias is not None)
        first.weight.copy_(b.reshape(r, *w.shape[1:]))
        second.weight.copy_(a.reshape(m, r, *([1] * (w.dim() - 2))))
    if bias is not None:
        second.bias.copy_(bias)
    first.to(w.device)
    second.to(w.device)
    return LowRank(first, second, r)
