"""Proxy trust: does the cheap accuracy proxy rank candidates the way a short fine-tune does?"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.evaluators.accuracy import recalibrate_bn

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.evaluators.compression_evaluator import CompressionEvaluator


@dataclass(frozen=True)
class ProxyTrust:
    """Spearman rank correlations between proxy accuracy and accuracy after a short fine-tune.

    ``spearman_recalib`` is the proxy with BatchNorm recalibration, ``spearman_raw`` the same
    proxy without it, and ``spearman_proxy`` the evaluator's proxy as configured (which skips
    recalibration after least-squares reconstruction). Per-policy accuracies are kept for plots.
    """

    n_policies: int
    finetune_steps: int
    spearman_recalib: float
    spearman_raw: float
    pvalue_recalib: float
    pvalue_raw: float
    acc_raw: list[float] = field(default_factory=list)
    acc_recalib: list[float] = field(default_factory=list)
    acc_finetuned: list[float] = field(default_factory=list)
    spearman_proxy: float = float("nan")
    acc_proxy: list[float] = field(default_factory=list)
    reconstruct: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def _spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan, math.nan
    res = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return float(res.statistic), float(res.pvalue)


def proxy_trust(
    evaluator: CompressionEvaluator,
    policies: Sequence[CompressionPolicy] | int = 30,
    *,
    finetune_steps: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> ProxyTrust:
    """Measure how well the proxy ranks candidates (the issue's "proxy trust").

    For each policy the compressed model is scored three ways on the evaluator's full validation
    subset: raw (no recalibration), with adaptive-BN recalibration, and after
    ``finetune_steps`` steps of KD fine-tuning from the raw compressed model (the reference).
    "Compressed" follows the evaluator's settings (with least-squares reconstruction when
    ``config.reconstruct``). Returns the Spearman correlation of each proxy with the reference,
    and of the evaluator's own proxy (whichever of the two it uses for each policy).

    Args:
        evaluator: supplies the base model, space, data, calibration batches and KD settings.
        policies: the candidates, or a count of random ones drawn with ``space.sample``.
        finetune_steps: length of the reference fine-tune.
        seed: seed of the random policies (``seed``, ``seed + 1``, ...).
        progress: show a progress bar.
    """
    if isinstance(policies, int):
        if policies < 3:
            raise UserInputError(f"proxy trust needs at least 3 policies, got {policies}")
        policies = [evaluator.space.sample(seed + i) for i in range(policies)]
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 1:
        raise UserInputError(f"finetune_steps={finetune_steps!r}; expected an integer >= 1")
    from rich.progress import Progress

    from autocompress.evaluators.compression_evaluator import changes_structure

    start = time.perf_counter()
    raw: list[float] = []
    recal: list[float] = []
    tuned: list[float] = []
    proxy: list[float] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("proxy trust", total=len(policies))
        for policy in policies:
            small = evaluator.compress(policy)
            reference = copy.deepcopy(small)
            raw.append(evaluator.score(small)[1])
            use_recal = evaluator.needs_recalibration(policy, small)
            if changes_structure(policy):
                recalibrate_bn(small, evaluator.calib_batches)
            recal.append(evaluator.score(small)[1])
            proxy.append(recal[-1] if use_recal else raw[-1])
            evaluator.finetune(reference, finetune_steps)
            tuned.append(evaluator.score(reference)[1])
            bar.advance(task)
    rho_c, p_c = _spearman(recal, tuned)
    rho_r, p_r = _spearman(raw, tuned)
    rho_p, _ = _spearman(proxy, tuned)
    return ProxyTrust(
        n_policies=len(policies), finetune_steps=finetune_steps, spearman_recalib=rho_c,
        spearman_raw=rho_r, pvalue_recalib=p_c, pvalue_raw=p_r, acc_raw=raw, acc_recalib=recal,
        acc_finetuned=tuned, spearman_proxy=rho_p, acc_proxy=proxy,
        reconstruct=bool(evaluator.config.reconstruct), seconds=time.perf_counter() - start,
    )
