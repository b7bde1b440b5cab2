"""Shared projections of stacked recurrent layers (``proj_rank``, Prabhavalkar et al. 2016)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    LowRankRNN,
    compress,
    count_bops,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.knobs import check_knob_set
from autocompress.compression.rnn import GATES, share_projections, shared_factors
from autocompress.errors import UserInputError
from autocompress.models import create_model

_STACKED = {
    "lstm": lambda: nn.LSTM(5, 12, num_layers=3, batch_first=True),
    "gru-seq-first": lambda: nn.GRU(5, 12, num_layers=2),
    "rnn-relu-no-bias": lambda: nn.RNN(5, 12, num_layers=2, nonlinearity="relu", bias=False),
}


def _flat(state: object) -> list[Tensor]:
    return list(state) if isinstance(state, tuple) else [state]  # type: ignore[list-item]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(_STACKED))
def test_shared_projection_is_exact_at_full_rank(kind: str) -> None:
    """At r = H the shared factors reproduce both matrices, so the module computes what the
    original does (outputs and final states, from a zero state, a given state and unbatched)."""
    torch.manual_seed(0)
    rnn = _STACKED[kind]().eval()
    h, n = rnn.hidden_size, rnn.num_layers
    full = LowRankRNN(rnn, [(None, None)] * (n - 1) + [(None, h)], shared=[h] * (n - 1)).eval()
    assert sum(isinstance(m, nn.Linear) and m.out_features == h and m.in_features == h
               for m in full.proj) == n - 1
    x = torch.randn(3, 6, 5)
    states = (torch.randn(n, 3 if rnn.batch_first else 6, h),)
    if isinstance(rnn, nn.LSTM):
        states = (states + (torch.randn_like(states[0]),),)
    with torch.no_grad():
        for args in ((x,), (x, *states)):
            want, want_state = rnn(*args)
            got, got_state = full(*args)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for a, b in zip(_flat(got_state), _flat(want_state), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full(x[0])[0], rnn(x[0])[0], rtol=1e-5, atol=1e-5)


def test_shared_factors_are_the_joint_truncated_svd() -> None:
    """``[Z_h; Z_x] P`` is the best rank-r approximation of the stacked pair: its error is the
    norm of the dropped singular values, and it is shared (one P for both matrices)."""
    torch.manual_seed(0)
    w_hh, w_ih = torch.randn(48, 12), torch.randn(48, 12)
    sv = torch.linalg.svdvals(torch.cat([w_hh, w_ih]).double())
    for r in (3, 6, 12):
        z_h, z_x, p = shared_factors(w_hh, w_ih, r)
        assert p.shape == (r, 12) and z_h.shape == z_x.shape == (48, r)
        err = torch.cat([w_hh - z_h @ p, w_ih - z_x @ p]).double().norm()
        assert float(err) == pytest.approx(float(sv[r:].norm()), rel=1e-4, abs=1e-4)


def test_share_projections_saves_only_where_it_pays() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(5, 12, num_layers=3)
    low = share_projections(gru, 0.25)
    assert isinstance(low, LowRankRNN)
    assert [m.out_features for m in low.proj if isinstance(m, nn.Linear)] == [3, 3]
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in gru.parameters())
    # r (H + 2GH) < 2GH^2 fails for every pair and for the last W_hh: nothing to do
    assert share_projections(gru, 0.95) is None


@pytest.fixture(scope="module")
def gru_space() -> tuple[nn.Module, CompressionSpace, Tensor]:
    torch.manual_seed(0)
    model = create_model("test_gru").eval()
    x = torch.randn(1, 1, 8, 8)
    return model, CompressionSpace.from_model(model, x, knobs=("prune", "w_bits", "a_bits", "proj_rank")), x


@pytest.mark.timeout(120)
def test_proj_rank_cost_model_equals_counting(gru_space: tuple) -> None:
    """Predicted MACs, params and bytes equal those counted on the compressed model, with
    pruning and weight bits (per-row scales, 1-2 bit per-tensor scales) on the same layer."""
    model, space, x = gru_space
    assert "proj_rank" in space.decision_points[0].knobs
    actions = [LayerAction(proj_rank=0.25), LayerAction(proj_rank=0.5, prune=0.5),
               LayerAction(proj_rank=0.3, prune=0.3, w_bits=4, a_bits=8),
               LayerAction(proj_rank=0.1, w_bits=2), LayerAction(proj_rank=0.6, w_bits=8),
               LayerAction(proj_rank=0.95)]  # saves nothing: the dense module
    for action in actions:
        policy = CompressionPolicy({"gru": action})
        small = compress(model, policy, space=space)
        assert isinstance(small.gru, LowRankRNN) == (action.proj_rank < 0.9)
        pred = space.costs(policy)
        assert pred["macs"] == count_macs(small, x) == space.macs(policy), action
        assert pred["params"] == count_params(small), action
        assert pred["size_bytes"] == pytest.approx(count_size_bytes(small)), action
        assert pred["bops"] == pytest.approx(count_bops(small, x), rel=1e-12), action
        with torch.no_grad():
            assert torch.isfinite(small(x)).all()
    # monotone: a lower proj_rank never raises any cost
    costs = [space.costs(CompressionPolicy({"gru": LayerAction(proj_rank=s, w_bits=4)}))
             for s in (1.0, 0.8, 0.6, 0.4, 0.2, 1 / 16)]
    for metric in ("macs", "params", "size_bytes", "bops"):
        values = [c[metric] for c in costs]
        assert values == sorted(values, reverse=True) and values[-1] < values[0], metric


@pytest.mark.timeout(120)
def test_proj_rank_exports_to_onnx_and_matches(gru_space: tuple) -> None:
    import onnxruntime as ort

    from autocompress.deploy import export_onnx_with

    model, space, _ = gru_space
    policy = CompressionPolicy({"gru": LayerAction(proj_rank=0.4, prune=0.3, w_bits=8, a_bits=8)})
    small = compress(model, policy, space=space, calib=torch.randn(16, 1, 8, 8)).eval()
    assert isinstance(small.gru, LowRankRNN)
    x = torch.randn(5, 1, 8, 8)
    blob, _ = export_onnx_with(small, x[:1])
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(x).numpy(), rtol=1e-4, atol=1e-5)


def test_proj_rank_is_offered_on_stacked_layers_only() -> None:
    torch.manual_seed(0)
    model = create_model("test_lstm").eval()  # one LSTM layer
    space = CompressionSpace.from_model(model, torch.randn(1, 1, 8, 8), knobs=("prune", "proj_rank"))
    lstm = next(p for p in space.decision_points if p.name == "lstm")
    assert "proj_rank" not in lstm.knobs
    assert any("no pair of layers" in note for note in lstm.notes)
    with pytest.raises(UserInputError, match="proj_rank"):
        space.validate(CompressionPolicy({"lstm": LayerAction(proj_rank=0.5)}))
    with pytest.raises(UserInputError, match="proj_rank and rank both factorise"):
        check_knob_set(["rank", "proj_rank"])
    assert GATES[nn.GRU] == 3  # the gate count the cost model reads from the weight shapes
