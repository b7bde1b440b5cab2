"""LatencyLUT: layer discovery, width sources, interpolation, disk round trip and cache reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autocompress.compression import CompressionPolicy, CompressionSpace, LayerAction
from autocompress.errors import UserInputError
from autocompress.evaluators import LatencyLUT
from autocompress.evaluators.lut import (
    _interp2,
    _theil_sen,
    build_standalone,
    discover_layers,
    standalone_onnx,
)
from autocompress.models import create_model

FAST = {"keep_points": 2, "rank_points": 2, "repeats": 3, "warmup": 1}


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, CompressionSpace, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    x = torch.randn(1, 3, 16, 16)
    return model, CompressionSpace.from_model(model, x, knobs=("prune", "rank")), x


def test_discovery_attaches_bn_and_activation() -> None:
    torch.manual_seed(0)
    model = create_model("test_convnet").eval()
    layers = {lay.name: lay.spec for lay in discover_layers(model, torch.randn(1, 3, 16, 16))}
    assert list(layers)[:2] == ["stem.0", "res.0"]
    assert layers["stem.0"]["bn"] and layers["stem.0"]["act"] == {"type": "ReLU", "kw": {}}
    assert layers["res.0"]["bn"] and layers["res.0"]["act"] is None  # relu comes after the add
    assert layers["dw.0"]["groups"] == 24 and layers["dw.0"]["shape"] == [16, 16]
    assert layers["pw.0"]["shape"] == [8, 8]
    assert layers["fc2"]["kind"] == "linear" and layers["fc2"]["cin"] == 32


def test_bilinear_interpolation_is_exact_on_bilinear_functions() -> None:
    gx, gy = [0.2, 0.6, 1.0], [0.5, 1.0]

    def f(x: float, y: float) -> float:
        return 1.0 + 2.0 * x + 3.0 * y + 4.0 * x * y

    table = [[f(x, y) for y in gy] for x in gx]
    for x, y in [(0.2, 0.5), (0.4, 0.75), (0.9, 0.6), (1.0, 1.0)]:
        assert _interp2(gx, gy, table, x, y) == pytest.approx(f(x, y))
    assert _interp2(gx, gy, table, 0.0, 0.0) == pytest.approx(f(0.2, 0.5))  # clamped at the edge


@pytest.mark.timeout(300)
def test_build_round_trip_and_cache(resnet: tuple, tmp_path: Path) -> None:
    model, space, x = resnet
    lut = LatencyLUT.build(model, space, x, backend="ort", batch=16, cache_dir=tmp_path,
                           progress=False, calibration_policies=0, **FAST)
    files = list(tmp_path.glob("lut-*.json"))
    assert len(files) == 1 and lut.meta["entries"] > 0
    # width sources found by probing: conv2 of the first block reads conv1's pruned output
    by_name = {lay.name: lay for lay in lut.layers}
    assert set(by_name["layer1.0.conv2"].in_sources) == {"layer1.0.conv1"}
    assert set(by_name["layer1.0.conv1"].out_sources) == {"layer1.0.conv1"}
    assert by_name["layer1.0.conv1"].rank_point == "layer1.0.conv1"
    # without calibration policies the constant makes the identity exact
    assert lut.predict(space.identity()) == pytest.approx(lut.base_measured_ms)

    policies = [space.identity(), space.uniform(prune=0.5), space.sample(1), space.sample(2)]
    loaded = LatencyLUT.load(files[0])
    assert [loaded.predict(p) for p in policies] == [lut.predict(p) for p in policies]
    assert json.loads(files[0].read_text())["_version"] == LatencyLUT.schema_version

    stamp = files[0].stat().st_mtime_ns
    again = LatencyLUT.build(model, space, x, backend="ort", batch=16, cache_dir=tmp_path,
                             progress=False, calibration_policies=0, **FAST)
    # loaded from disk, not profiled again: same table, file not rewritten (timings would differ)
    assert again.key == lut.key and again.to_dict() == lut.to_dict()
    assert files[0].stat().st_mtime_ns == stamp
    other = LatencyLUT.cache_key(model, space, x, "ort", 1, 1, (2, 2, 0))
    assert other != lut.key  # batch is part of the key

    # predicted latency falls with heavy pruning (64x fewer MACs in the inner convs)
    pruned = CompressionPolicy({p.name: LayerAction(prune=0.8) for p in space.decision_points
                                if "prune" in p.knobs})
    assert 0 < lut.predict(pruned) < lut.predict(space.identity())
    parts = lut.breakdown(space.uniform(prune=0.5))
    assert parts["<constant>"] == lut.constant_ms and len(parts) == len(lut.layers) + 1


def test_load_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"_type": "something"}))
    with pytest.raises(UserInputError, match="LatencyLUT"):
        LatencyLUT.load(bad)
    with pytest.raises(UserInputError, match="does not exist"):
        LatencyLUT.load(tmp_path / "missing.json")


def test_robust_line_fit_ignores_a_disturbed_timing() -> None:
    x = np.arange(10.0)
    y = 2.0 * x + 1.0
    y[3] = 100.0  # one measurement hit by a busy neighbour
    slope, intercept = _theil_sen(x, y)
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("spec_kw", "cin", "cout", "kw"),
    [
        ({"kind": "conv", "dims": 2, "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
          "dilation": [1, 1], "groups": 1, "shape": [9, 9], "act": {"type": "ReLU6", "kw": {}}}, 5, 7, {}),
        ({"kind": "conv", "dims": 2, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
          "dilation": [1, 1], "groups": 6, "shape": [8, 8], "act": {"type": "Hardswish", "kw": {}}}, 6, 6,
         {"groups": 6}),
        ({"kind": "conv", "dims": 2, "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
          "dilation": [1, 1], "groups": 1, "shape": [9, 9], "act": {"type": "SiLU", "kw": {}}}, 3, 4,
         {"kernel_one": True}),
        ({"kind": "linear", "shape": [], "act": None}, 12, 5, {}),
        ({"kind": "linear", "shape": [7], "act": {"type": "LeakyReLU", "kw": {"negative_slope": 0.1}}}, 12, 5, {}),
    ],
)
def test_direct_onnx_layers_match_the_torch_layers(spec_kw: dict, cin: int, cout: int, kw: dict) -> None:
    spec = {"bias": True, "bn": spec_kw["kind"] == "conv", "cin": cin, "cout": cout, **spec_kw}
    module, x = build_standalone(spec, cin, cout, **kw)
    graph = standalone_onnx(spec, cin, cout, **kw)
    assert graph is not None
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    xb = x.expand(3, *x.shape[1:]).contiguous()
    (out,) = sess.run(None, {"input": xb.numpy()})
    with torch.no_grad():
        assert out.shape == tuple(module(xb).shape)


@pytest.mark.timeout(300)
def test_recurrent_layers_are_table_entries(tmp_path: Path) -> None:
    """An LSTM is one entry over its steps, on a grid of input widths and hidden sizes, and a
    factorised LSTM (its steps unrolled into separate nodes, several times slower on ONNX Runtime
    at batch 1) is predicted slower than the fused original, as measured."""
    from autocompress.compression import compress
    from autocompress.evaluators.latency import measure_latency

    torch.manual_seed(0)
    model = create_model("test_lstm").eval()
    x = torch.randn(1, 1, 8, 8)
    space = CompressionSpace.from_model(model, x, knobs=("prune", "rank"))
    lut = LatencyLUT.build(model, space, x, backend="ort", batch=1, cache_dir=tmp_path, progress=False,
                           calibration_policies=0, clock="cpu", keep_points=2, rank_points=2,
                           repeats=7, warmup=1)
    lstm = {lay.name: lay for lay in lut.layers}["lstm"]
    assert lstm.spec["kind"] == "rnn" and lstm.spec["steps"] == 8 and lstm.rank_point == "lstm"
    assert set(lstm.in_sources) == {"embed"} and set(lstm.out_sources) == {"lstm"}
    assert lstm.out_grid[0] == 0.25 and len(lstm.f_grid) == 2 and not np.isnan(lstm.lowrank).any()

    high = float(next(p for p in space.decision_points if p.name == "lstm").knobs["prune"].most_compressed)
    policies = {"base": space.identity(), "pruned": CompressionPolicy({"lstm": LayerAction(prune=high)}),
                "factorised": CompressionPolicy({"lstm": LayerAction(rank=0.25)})}
    pred = {k: lut.predict(p) for k, p in policies.items()}
    # Load only ever slows a run down: the fastest of three medians is the least disturbed.
    meas = {k: min(measure_latency(compress(model, p, space=space), x, backend="ort", batch=1, threads=1,
                                   warmup=3, repeats=25, clock="cpu").median_ms for _ in range(3))
            for k, p in policies.items()}
    # the pruned LSTM is read from the table (its grid's narrowest column: exact at a grid ratio)
    assert lut.breakdown(policies["pruned"])["lstm"] == pytest.approx(lut.scale * lstm.table[-1][0])
    # the factorised LSTM: measured about 5x the base here; both sides must see it clearly slower
    assert meas["factorised"] > 2.0 * meas["base"]
    assert pred["factorised"] > 2.0 * pred["base"]
    # How close each prediction comes to its measurement is a benchmark figure (bench_latency_lut.py,
    # benchmarks/README.md "The latency table on recurrent layers"), not a unit test's: on a loaded
    # machine one median of a 0.04 ms layer can double.


def test_recurrent_entries_follow_the_layers_rank_knob() -> None:
    """A recurrent layer's factorised entries stand for its space's rank knob: ``proj_rank``
    (shared projections) builds and predicts the shared module, and a fraction that factorises
    nothing reads the dense table."""
    from autocompress.compression import LowRankRNN
    from autocompress.evaluators.lut import _Layer

    spec = {"kind": "rnn", "mode": "gru", "cin": 8, "cout": 16, "num_layers": 2, "bias": True,
            "steps": 8, "bidirectional": False, "proj_size": 0, "nonlinearity": "tanh", "bn": False,
            "act": None}
    module, x = build_standalone(spec, 8, 16, rank=0.25, rank_knob="proj_rank")
    low = module.rnn
    assert isinstance(low, LowRankRNN) and low.proj[0].out_features == 4
    assert module(x).shape == (1, 8, 16)
    assert isinstance(build_standalone(spec, 8, 16, rank=0.25)[0].rnn.proj[0], torch.nn.Identity)

    lay = _Layer(name="gru", spec=spec, rank_point="gru", rank_knob="proj_rank", in_grid=[1.0],
                 out_grid=[0.25, 1.0], table=[[1.0, 2.0]], f_grid=[0.1, 0.8], lr_in=[1.0],
                 lr_out=[0.25, 1.0], lowrank=[[[5.0, 6.0], [7.0, 9.0]]])
    lut = LatencyLUT(key="k", backend="ort", batch=1, threads=1, input_shape=[1, 8, 8], layers=[lay],
                     constant_ms=0.0, base_measured_ms=2.0)
    assert lut.predict(CompressionPolicy({})) == 2.0
    assert lut.predict(CompressionPolicy({"gru": LayerAction(proj_rank=0.1)})) == 7.0
    assert lut.predict(CompressionPolicy({"gru": LayerAction(proj_rank=0.45)})) == pytest.approx(8.0)
    assert lut.predict(CompressionPolicy({"gru": LayerAction(proj_rank=0.95)})) == 2.0  # dense
    assert lut.predict(CompressionPolicy({"gru": LayerAction(rank=0.1)})) == 2.0  # not its knob
    round_trip = LatencyLUT.from_dict(json.loads(json.dumps(lut.to_dict())))
    assert round_trip.predict(CompressionPolicy({"gru": LayerAction(proj_rank=0.1)})) == 7.0
