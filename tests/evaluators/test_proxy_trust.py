"""Proxy trust: Spearman correlation of proxy accuracy with accuracy after a short fine-tune."""

from __future__ import annotations

import json

import pytest
from scipy.stats import spearmanr

from autocompress.errors import UserInputError
from autocompress.evaluators import ProxyTrust, proxy_trust
from autocompress.problem import Problem


@pytest.mark.timeout(300)
def test_proxy_trust_on_a_trained_model(tiny_problem: Problem) -> None:
    from autocompress.evaluators import CompressionEvaluator, EvaluatorConfig

    p = tiny_problem
    # without least-squares reconstruction, so that what BN recalibration adds stays visible
    ev = CompressionEvaluator(p.model, p.space, p.data, EvaluatorConfig(latency="none", reconstruct=False))
    policies = [tiny_problem.space.uniform(prune=r) for r in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    trust = proxy_trust(ev, policies, finetune_steps=15)
    assert isinstance(trust, ProxyTrust) and trust.n_policies == 6 and trust.finetune_steps == 15
    assert len(trust.acc_raw) == len(trust.acc_recalib) == len(trust.acc_finetuned) == 6
    assert trust.spearman_recalib == pytest.approx(spearmanr(trust.acc_recalib, trust.acc_finetuned).statistic)
    assert trust.spearman_raw == pytest.approx(spearmanr(trust.acc_raw, trust.acc_finetuned).statistic)
    # without reconstruction the evaluator's own proxy is the recalibrated one
    assert trust.acc_proxy == trust.acc_recalib and not trust.reconstruct
    assert trust.spearman_proxy == pytest.approx(trust.spearman_recalib)
    # the identity policy needs no recalibration: both proxies give the base accuracy
    assert trust.acc_raw[0] == trust.acc_recalib[0] == ev.base_result().metrics["acc"]
    # recalibration helps the pruned models, and fine-tuning helps them further
    assert sum(trust.acc_recalib[1:]) > sum(trust.acc_raw[1:])
    assert json.loads(json.dumps(trust.to_dict()))["n_policies"] == 6


def test_proxy_trust_validates(tiny_problem: Problem) -> None:
    with pytest.raises(UserInputError, match="at least 3"):
        proxy_trust(tiny_problem.evaluator, 2)
    with pytest.raises(UserInputError, match="finetune_steps"):
        proxy_trust(tiny_problem.evaluator, 3, finetune_steps=0)
