"""CompressionEvaluator on really trained tiny models: metrics by hand, BN recalibration, fidelity,
cache hits, failures recorded rather than raised, measured and predicted latency."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from autocompress.compression import CompressionPolicy, CompressionSpace, LayerAction
from autocompress.data import load_data
from autocompress.errors import UserInputError
from autocompress.evaluators import (
    METRICS,
    CompressionEvaluator,
    EvalCache,
    EvaluatorConfig,
    LatencyLUT,
)
from autocompress.problem import Problem
from autocompress.training import accuracy

NO_LATENCY = EvaluatorConfig(latency="none")


class ConvStack(nn.Module):
    """conv 3->8 (3x3, pad 1) on 8x8, BN, ReLU; conv 8->16 (3x3, stride 2, pad 1), BN, ReLU; pool; fc 16->10."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def stack_setup() -> tuple[nn.Module, CompressionSpace, object]:
    torch.manual_seed(0)
    model = ConvStack().eval()
    data = load_data("digits", input_shape=(3, 8, 8), seed=0)
    space = CompressionSpace.from_model(model, torch.randn(1, 3, 8, 8))
    return model, space, data


def test_macs_flops_params_of_a_known_conv_stack(stack_setup: tuple) -> None:
    model, space, data = stack_setup
    ev = CompressionEvaluator(model, space, data, NO_LATENCY)
    ident = ev.evaluate(space.identity())
    # c1: 8 out x 3 in x 9 x (8x8) ; c2: 16 x 8 x 9 x (4x4) ; fc: 16 x 10
    macs = 8 * 3 * 9 * 64 + 16 * 8 * 9 * 16 + 16 * 10
    assert ident.ok and ident.metrics["macs"] == macs == 32416
    assert ident.metrics["flops"] == 2 * macs
    params = 8 * 3 * 9 + 2 * 8 + 16 * 8 * 9 + 2 * 16 + 16 * 10 + 10
    assert ident.metrics["params"] == params
    assert ident.metrics["size_bytes"] == 4 * params
    assert ident.metrics["bops"] == macs * 32 * 32
    half = ev.evaluate(CompressionPolicy({"c1": LayerAction(prune=0.5)}))
    assert half.metrics["macs"] == 4 * 3 * 9 * 64 + 16 * 4 * 9 * 16 + 16 * 10


def test_four_bit_weights_are_an_eighth_of_float_size(stack_setup: tuple) -> None:
    model, space, data = stack_setup
    ev = CompressionEvaluator(model, space, data, NO_LATENCY)
    fp32 = ev.evaluate(space.identity()).metrics["size_bytes"]
    q4 = ev.evaluate(space.uniform(w_bits=4)).metrics["size_bytes"]
    weights = {"c1": 8 * 3 * 9, "c2": 16 * 8 * 9, "fc": 16 * 10}
    w = sum(weights.values())
    scales = 8 + 16 + 10  # one float32 scale per output channel at 3..16 bits
    other = fp32 - 4 * w  # BatchNorm and bias parameters stay in float32
    assert q4 - other - 4 * scales == pytest.approx(4 * w / 8)
    assert ev.evaluate(space.uniform(w_bits=4, a_bits=8)).metrics["bops"] == 32416 * 4 * 8


def test_identity_scores_the_trained_model(tiny_problem: Problem) -> None:
    ev = tiny_problem.evaluator
    base = ev.base_result()
    assert base is ev.base_result()  # memoised
    assert base.ok and base.fidelity == "full"
    assert set(base.metrics) == set(ev.metrics) and set(ev.metrics) <= set(METRICS)
    assert "acc_top5" in ev.metrics  # digits has 10 classes
    # whole validation split, same number as plain top-1 scoring
    assert base.metrics["acc"] == pytest.approx(accuracy(tiny_problem.model, tiny_problem.data))
    assert base.metrics["acc"] > 0.85 and base.metrics["acc_top5"] >= base.metrics["acc"]
    for phase in ("compress", "evaluate", "bookkeeping", "total"):
        assert base.timings[phase] >= 0
    assert base.timings["total"] >= base.timings["compress"] + base.timings["evaluate"]


@pytest.mark.timeout(180)
def test_bn_recalibration_rescues_a_heavily_pruned_model(tiny_problem: Problem) -> None:
    p = tiny_problem
    # reconstruction off in both: this isolates what BN recalibration alone does
    raw = CompressionEvaluator(p.model, p.space, p.data,
                               EvaluatorConfig(latency="none", bn_recalib=False, reconstruct=False))
    recal = CompressionEvaluator(p.model, p.space, p.data, EvaluatorConfig(latency="none", reconstruct=False))
    gains = []
    for prune in (0.2, 0.3, 0.4):
        policy = p.space.uniform(prune=prune)
        a_raw = raw.evaluate(policy).metrics["acc"]
        a_rec = recal.evaluate(policy)
        assert "recalibrate" in a_rec.timings
        gains.append(a_rec.metrics["acc"] - a_raw)
    # stale BatchNorm statistics collapse a pruned net; re-estimating them recovers much of it
    assert min(gains) > 0.0 and sum(gains) / len(gains) > 0.15, gains


def test_reconstruction_raises_pruned_proxy_accuracy(tiny_problem: Problem) -> None:
    p = tiny_problem
    plain = CompressionEvaluator(p.model, p.space, p.data, EvaluatorConfig(latency="none", reconstruct=False))
    refit = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY)
    assert refit.config.reconstruct  # on by default: the proxy a search ranks candidates by
    gains = [refit.evaluate(p.space.uniform(prune=r)).metrics["acc"]
             - plain.evaluate(p.space.uniform(prune=r)).metrics["acc"] for r in (0.4, 0.6)]
    assert sum(gains) / len(gains) > 0.05, gains


@pytest.mark.timeout(180)
def test_low_fidelity_and_kd_finetune(tiny_problem: Problem) -> None:
    p = tiny_problem
    cfg = EvaluatorConfig(latency="none", low_fidelity_val_samples=64, finetune_steps=25, finetune_lr=0.01)
    ev = CompressionEvaluator(p.model, p.space, p.data, cfg)
    policy = p.space.uniform(prune=0.5)
    low = ev.evaluate(policy, fidelity="low")
    assert low.fidelity == "low" and "finetune" not in low.timings
    assert (low.metrics["acc"] * 64) == pytest.approx(round(low.metrics["acc"] * 64))
    full = ev.evaluate(policy, fidelity="full")
    again = CompressionEvaluator(p.model, p.space, p.data, cfg).evaluate(policy, fidelity="full")
    assert full.timings["finetune"] > 0
    assert full.metrics["acc"] == again.metrics["acc"]  # seeded fine-tune: reproducible
    proxy = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY).evaluate(policy)
    assert full.metrics["acc"] > proxy.metrics["acc"]  # distillation recovers accuracy
    with pytest.raises(UserInputError, match="fidelity"):
        ev.evaluate(policy, fidelity="medium")


def test_cache_hits_skip_work_across_runs(tiny_problem: Problem, tmp_path: Path) -> None:
    p = tiny_problem
    calls = []

    class Counting(CompressionEvaluator):
        def compress(self, policy: CompressionPolicy) -> nn.Module:
            calls.append(policy.key())
            return super().compress(policy)

    path = tmp_path / "evals.sqlite"
    ev = Counting(p.model, p.space, p.data, NO_LATENCY, cache=EvalCache(path))
    policy = p.space.uniform(prune=0.25)
    first = ev.evaluate(policy)
    second = ev.evaluate(policy)
    assert not first.cached and second.cached and len(calls) == 1 and ev.n_computed == 1
    assert second.metrics == first.metrics
    # fidelity and settings are part of the key
    ev.evaluate(policy, fidelity="low")
    assert len(calls) == 2
    # a new process / run with the same cache file does no work either
    ev2 = Counting(p.model, p.space, p.data, NO_LATENCY, cache=EvalCache(path))
    assert ev2.evaluate(policy).cached and len(calls) == 2 and ev2.n_computed == 0
    other = Counting(p.model, p.space, p.data, EvaluatorConfig(latency="none", recalib_batches=2),
                     cache=EvalCache(path))
    assert not other.evaluate(policy).cached and len(calls) == 3


def test_failed_candidates_are_recorded_not_raised(tiny_problem: Problem, tmp_path: Path) -> None:
    p = tiny_problem

    class Broken(CompressionEvaluator):
        def compress(self, policy: CompressionPolicy) -> nn.Module:
            if policy.get("conv1").prune > 0.5:
                raise RuntimeError("graph surgery failed")
            return super().compress(policy)

    ev = Broken(p.model, p.space, p.data, NO_LATENCY, cache=EvalCache(tmp_path / "c.sqlite"))
    bad = ev.evaluate(p.space.uniform(prune=0.6))
    assert bad.status == "failed" and bad.error == "compress failed: RuntimeError: graph surgery failed"
    assert bad.metrics["macs"] > 0  # costs computed before the failure are kept
    assert ev.evaluate(p.space.uniform(prune=0.6)).cached  # a failure is not retried
    assert ev.evaluate(p.space.uniform(prune=0.4)).ok
    unknown = ev.evaluate(CompressionPolicy({"no.such.layer": LayerAction(prune=0.5)}))
    assert unknown.status == "failed" and "no.such.layer" in (unknown.error or "")
    too_far = ev.evaluate(CompressionPolicy({"conv1": LayerAction(prune=0.95)}))
    assert too_far.status == "failed" and "prune" in (too_far.error or "")


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(x).mean(dim=(2, 3))) / 0.0


def test_non_finite_outputs_fail(stack_setup: tuple) -> None:
    _, _, data = stack_setup
    model = Exploding().eval()
    space = CompressionSpace.from_model(model, torch.randn(1, 3, 8, 8))
    r = CompressionEvaluator(model, space, data, NO_LATENCY).evaluate(space.identity())
    assert r.status == "failed" and "non-finite" in (r.error or "")
    assert "acc" not in r.metrics or math.isnan(r.metrics["acc"])


@pytest.mark.timeout(240)
def test_latency_measured_and_predicted(tiny_problem: Problem, tmp_path: Path) -> None:
    p = tiny_problem
    measured = CompressionEvaluator(
        p.model, p.space, p.data, EvaluatorConfig(latency="measured", latency_backend="torch", val_samples=64))
    policy = p.space.uniform(prune=0.5, w_bits=8)
    r = measured.evaluate(policy, fidelity="low")
    assert r.ok and r.metrics["latency_ms"] > 0 and math.isfinite(r.metrics["latency_ms"])
    assert r.latency_info["kind"] == "measured" and r.latency_info["backend"] == "torch"
    assert r.timings["latency"] > 0

    lut = LatencyLUT.build(p.model, p.space, p.example_input, backend="ort", batch=1,
                           cache_dir=tmp_path, progress=False, keep_points=2, rank_points=2,
                           calibration_policies=0, repeats=3)
    predicted = CompressionEvaluator(p.model, p.space, p.data, EvaluatorConfig(val_samples=64), lut=lut)
    r2 = predicted.evaluate(policy, fidelity="low")
    assert r2.metrics["latency_ms"] == lut.predict(policy)
    assert r2.latency_info == {"backend": "ort", "batch": 1, "threads": 1, "kind": "predicted",
                               "clock": "wall"}



def test_recalibration_is_skipped_after_reconstruction(tiny_problem: Problem) -> None:
    p = tiny_problem
    pruned = p.space.uniform(prune=0.4)
    refit = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY)
    plain = CompressionEvaluator(p.model, p.space, p.data, EvaluatorConfig(latency="none", reconstruct=False))
    small = refit.compress(pruned)
    assert not refit.needs_recalibration(pruned, small)  # the refit already matches the stored stats
    assert plain.needs_recalibration(pruned, plain.compress(pruned))
    assert not refit.needs_recalibration(p.space.identity(), p.model)
    assert "recalibrate" not in refit.evaluate(pruned).timings
    assert "recalibrate" in plain.evaluate(pruned).timings


_USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("old forward")
        return self.fc(x.flatten(1))
"""


def _load_user_net(folder: Path, source: str) -> nn.Module:
    """Import ``folder/usernet.py`` anew, as a user's edited model file would be."""
    import importlib.util

    path = folder / "usernet.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("usernet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net().eval()


def test_a_changed_forward_is_not_served_old_results_or_old_errors(tmp_path: Path) -> None:
    """The same weights under another ``forward`` are another model: results are computed anew."""
    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    cache = EvalCache(tmp_path / "evals.sqlite")
    torch.manual_seed(0)
    old = _load_user_net(tmp_path, _USER_NET)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    space = CompressionSpace.from_model(old, torch.zeros(1, 1, 8, 8))
    first = CompressionEvaluator(old, space, data, NO_LATENCY, cache=cache).evaluate(space.identity())
    assert first.status == "failed" and "old forward" in (first.error or "")

    fixed = _load_user_net(tmp_path, _USER_NET.replace('raise RuntimeError("old forward")', "pass"))
    fixed.load_state_dict(state)
    ev = CompressionEvaluator(fixed, CompressionSpace.from_model(fixed, torch.zeros(1, 1, 8, 8)),
                              data, NO_LATENCY, cache=cache)
    second = ev.evaluate(ev.space.identity())
    assert not second.cached and second.ok and second.error is None and ev.n_computed == 1
    assert second.metrics["acc"] >= 0.0

    again = _load_user_net(tmp_path, _USER_NET)  # the old code once more: its result is reused
    again.load_state_dict(state)
    hit = CompressionEvaluator(again, space, data, NO_LATENCY, cache=cache).evaluate(space.identity())
    assert hit.cached and hit.error == first.error


def test_other_data_of_the_same_shape_is_not_served_cached_results(
    tiny_problem: Problem, tmp_path: Path
) -> None:
    """Random noise in place of digits (same shapes, same model) gets its own, near-chance scores."""
    from torch.utils.data import TensorDataset

    from autocompress.data import DataSplits

    p = tiny_problem
    cache = EvalCache(tmp_path / "evals.sqlite")
    digits = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY, cache=cache)
    real = digits.evaluate(p.space.identity())
    assert not real.cached and real.metrics["acc"] > 0.9

    g = torch.Generator().manual_seed(1)
    n, shape = 400, p.data.input_shape
    noise = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    idx = {"train": list(range(0, 300)), "calib": list(range(0, 64)), "val": list(range(300, n))}
    from torch.utils.data import Subset

    fake = DataSplits(name=p.data.name, train=Subset(noise, idx["train"]),
                      calib=Subset(noise, idx["calib"]), val=Subset(noise, idx["val"]),
                      num_classes=10, input_shape=shape, indices=idx)
    other = CompressionEvaluator(p.model, p.space, fake, NO_LATENCY, cache=cache)
    assert other.data_fingerprint != digits.data_fingerprint
    got = other.evaluate(p.space.identity())
    assert not got.cached and got.metrics["acc"] < 0.4
    # the source counts too, even for identical samples
    renamed = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY, cache=cache,
                                   data_source="imagefolder:/elsewhere")
    assert renamed.key(p.space.identity()) != digits.key(p.space.identity())
    assert digits.evaluate(p.space.identity()).cached  # and the digits result is still served


def test_space_settings_and_evaluator_subclasses_are_part_of_the_key(tiny_problem: Problem,
                                                                     tmp_path: Path) -> None:
    p = tiny_problem
    policy = p.space.uniform(prune=0.25)
    ev = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY)
    rounded = CompressionSpace.from_model(p.model, p.example_input, round_to=4)
    assert CompressionEvaluator(p.model, rounded, p.data, NO_LATENCY).key(policy) != ev.key(policy)
    assert CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY).key(policy) == ev.key(policy)
    # another channel importance prunes other channels: never served the l1 result from the cache
    cache = EvalCache(tmp_path / "evals.sqlite")
    by_l1 = CompressionEvaluator(p.model, p.space, p.data, NO_LATENCY, cache=cache)
    slim = CompressionSpace.from_model(p.model, p.example_input, importance="bn")
    by_bn = CompressionEvaluator(p.model, slim, p.data, NO_LATENCY, cache=cache)
    assert by_bn.key(policy) != by_l1.key(policy)
    assert not by_l1.evaluate(policy).cached and by_l1.evaluate(policy).cached
    assert not by_bn.evaluate(policy).cached

    class Sub(CompressionEvaluator):
        def score(self, model: nn.Module, fidelity: str = "full") -> dict[int, float]:
            return {1: 1.0, 5: 1.0}

    assert Sub(p.model, p.space, p.data, NO_LATENCY).key(policy) != ev.key(policy)
