"""RNN hidden-size pruning (``compression/rnn.py``): gate consistency, readers, cost model, bits, export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from autocompress.compression import (
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    compress,
    count_bops,
    count_macs,
    count_params,
    count_size_bytes,
)
from autocompress.compression.lowrank import LowRank
from autocompress.compression.rnn import GATES, LowRankRNN, factorise_rnn
from autocompress.models import create_model


class Stacked(nn.Module):
    """LSTM -> GRU -> Linear as separate modules: the GRU's input follows the LSTM's units."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 10, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.gru = nn.GRU(10, 9, batch_first=True)
        self.fc = nn.Linear(9, 5)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.flatten(1, 2)  # (B, 8 rows, 8)
        h, _ = self.lstm(seq)
        out, last = self.gru(self.drop(torch.relu(h)))
        return self.fc(last[-1])


class TwoLayerRNN(nn.Module):
    """One two-layer tanh ``nn.RNN`` read by a Linear through its last output."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 7, num_layers=2, batch_first=True)
        self.fc = nn.Linear(7, 4)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return self.fc(out[:, -1])


class MeanReader(nn.Module):
    """Reads the hidden state through a mean over units: pruning would change the result."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x.flatten(1, 2))
        return self.fc(out.mean(-1))


class SigmoidReader(nn.Module):
    """Reads sigmoid(h): a removed unit (h = 0) would still add 0.5 x its weights to the reader."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x.flatten(1, 2))
        return self.fc(torch.sigmoid(out[:, -1]))


class BiLSTM(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x.flatten(1, 2))
        return self.fc(out[:, -1])


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "test_lstm": create_model("test_lstm"),
        "test_gru": create_model("test_gru"),
        "stacked": Stacked(),
        "rnn2": TwoLayerRNN(),
    }


def _kept_units(orig: nn.RNNBase, small: nn.RNNBase, layer: int) -> list[int]:
    """Which original units a pruned layer kept: its bias rows are a subset of the original's."""
    h, hs = orig.hidden_size, small.hidden_size
    ob = getattr(orig, f"bias_ih_l{layer}")[:h].tolist()
    return [ob.index(v) for v in getattr(small, f"bias_ih_l{layer}")[:hs].tolist()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_lstm", "test_gru", "stacked", "rnn2"])
def test_pruned_rnn_is_the_original_restricted_to_kept_units(name: str) -> None:
    """Every gate keeps the same units; with the removed units' outgoing weights zeroed (recurrent
    columns, the next layer's inputs, the reader's inputs) the original computes exactly what the
    pruned model computes."""
    model = _models()[name].eval()
    space = CompressionSpace.from_model(model)
    rnns = [n for n, m in model.named_modules() if type(m) in GATES]
    assert rnns and all("prune" in space[n].knobs for n in rnns), space.describe()
    policy = CompressionPolicy({n: LayerAction(prune=0.5) for n in rnns})  # hidden sizes only
    small = compress(model, policy, space=space).eval()
    upstream = {r: g.root for g in space.groups for r in getattr(g, "readers", [])}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for n in rnns:
            orig, pruned, z = model.get_submodule(n), small.get_submodule(n), zeroed.get_submodule(n)
            g, h, hs = GATES[type(orig)], orig.hidden_size, pruned.hidden_size
            assert hs < h
            for k in range(orig.num_layers):
                keep = _kept_units(orig, pruned, k)
                assert len(keep) == hs == len(set(keep))
                rows = torch.cat([torch.tensor(keep) + i * h for i in range(g)])
                # gate consistency: gate block i of the pruned layer holds gate i of the kept units
                w_ih = getattr(orig, f"weight_ih_l{k}")[rows]
                if k > 0:
                    w_ih = w_ih[:, _kept_units(orig, pruned, k - 1)]
                elif n in upstream:  # layer 0 reads another recurrent module's units
                    up = model.get_submodule(upstream[n])
                    w_ih = w_ih[:, _kept_units(up, small.get_submodule(upstream[n]), up.num_layers - 1)]
                assert torch.equal(getattr(pruned, f"weight_ih_l{k}"), w_ih)
                assert torch.equal(getattr(pruned, f"weight_hh_l{k}"),
                                   getattr(orig, f"weight_hh_l{k}")[rows][:, keep])
                for b in ("bias_ih", "bias_hh"):
                    assert torch.equal(getattr(pruned, f"{b}_l{k}"), getattr(orig, f"{b}_l{k}")[rows])
                gone = [j for j in range(h) if j not in keep]
                getattr(z, f"weight_hh_l{k}")[:, gone] = 0.0
                if k + 1 < orig.num_layers:
                    getattr(z, f"weight_ih_l{k + 1}")[:, gone] = 0.0
            readers = next(gr.readers for gr in space.groups if gr.root == n)
            assert readers
            for r in readers:  # what reads the last layer's units
                reader = zeroed.get_submodule(r)
                w = reader.weight if isinstance(reader, nn.Linear) else reader.weight_ih_l0
                w[:, gone] = 0.0
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), zeroed(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(small(x), model(x), atol=1e-4)  # the zeroing mattered


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_lstm", "test_gru", "stacked", "rnn2"])
def test_cost_model_equals_the_counted_model(name: str) -> None:
    model = _models()[name].eval()
    space = CompressionSpace.from_model(model)
    x = space.example_input
    rng = np.random.default_rng(0)
    policies = [space.uniform(prune=0.5, w_bits=4, a_bits=8), space.most_compressed(),
                space.uniform(rank=0.4), space.uniform(prune=0.3, rank=0.5, w_bits=4, a_bits=8)]
    policies += [space.sample(rng) for _ in range(4)]
    factorised = 0
    for policy in policies:
        small = compress(model, policy, space=space, calib=torch.randn(8, 1, 8, 8))
        factorised += sum(isinstance(m, LowRankRNN) for m in small.modules())
        assert count_macs(small, x) == space.macs(policy)
        assert count_params(small) == space.params(policy)
        assert count_size_bytes(small) == pytest.approx(space.size_bytes(policy), rel=1e-9)
        assert count_bops(small, x) == pytest.approx(space.bops(policy), rel=1e-12)
    assert space.macs(space.most_compressed()) < space.base_macs
    assert factorised >= 2  # rank=0.4 and 0.5 factorise every recurrent module here


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["stacked", "rnn2", "test_gru"])
def test_identity_policy_is_exact(name: str) -> None:
    model = _models()[name].eval()
    space = CompressionSpace.from_model(model)
    out = compress(model, space.identity(), space=space)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(out(x), model(x))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("model", "why"),
    [
        (MeanReader(), "'fc' does not read the hidden units one feature per unit"),
        (SigmoidReader(), "differs from zeroing the units"),
        (BiLSTM(), "bidirectional"),
    ],
    ids=["mean-over-units", "sigmoid-reader", "bidirectional"],
)
def test_hidden_units_read_otherwise_are_left_out_and_said_so(model: nn.Module, why: str) -> None:
    space = CompressionSpace.from_model(model.eval())
    assert "prune" not in space["lstm"].knobs
    assert any(why in n for n in space["lstm"].notes), space.describe()
    assert {"w_bits", "a_bits"} <= set(space["lstm"].knobs)


@pytest.mark.timeout(60)
def test_lstm_and_gru_points_name_their_readers() -> None:
    space = CompressionSpace.from_model(Stacked().train())  # probed in eval mode: dropout is off
    groups = {g.root: g for g in space.groups}
    assert groups["lstm"].readers == ["gru"] and groups["gru"].readers == ["fc"]
    assert space["lstm"].kind == "lstm" and space["gru"].kind == "gru"


@pytest.mark.timeout(60)
def test_recurrent_states_stay_float_under_low_bit_weights() -> None:
    """w_bits / a_bits quantize the weights and the input sequence only: the cell and hidden states
    (the survey: the cell state needs >= 10 bits) are float32, as in a plain LSTM running the
    quantized weights on the quantized input."""
    torch.manual_seed(0)
    model = create_model("test_lstm").eval()
    space = CompressionSpace.from_model(model)
    small = compress(model, space.uniform(w_bits=4, a_bits=4), space=space,
                     calib=torch.randn(16, 1, 8, 8)).eval()
    q = small.lstm
    plain = nn.LSTM(q.input_size, q.hidden_size, batch_first=True)
    plain.load_state_dict({k: v for k, v in q.state_dict().items() if not k.startswith("act_quant")})
    for p in (p for n, p in q.named_parameters() if n.startswith("weight_")):
        assert len(torch.unique(p[0])) <= 2**4 - 1  # the weights are on a 4-bit grid
    seq = torch.randn(128, 8, q.input_size)
    with torch.no_grad():
        out, (h, c) = q(seq)
        ref, (h_ref, c_ref) = plain(q.act_quant(seq))
    assert torch.equal(out, ref) and torch.equal(c, c_ref)
    assert len(torch.unique(c)) > 2**10  # far more levels than 10 bits give, per the survey


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_lstm", "test_gru"])
def test_pruned_quantized_rnn_exports_to_onnx_and_matches(name: str) -> None:
    import onnx
    import onnxruntime as ort

    from autocompress.deploy import export_onnx_with

    model = _models()[name].eval()
    space = CompressionSpace.from_model(model)
    small = compress(model, space.uniform(prune=0.5, w_bits=8, a_bits=8), space=space,
                     calib=torch.randn(16, 1, 8, 8)).eval()
    x = torch.randn(7, 1, 8, 8)
    blob, _ = export_onnx_with(small, x[:1])
    ops = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert {"lstm": "LSTM", "gru": "GRU"}[name[5:]] in ops  # one fused recurrent node
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(x).numpy(), rtol=1e-4, atol=1e-5)


_RNNS = {
    "lstm-2layer": lambda: nn.LSTM(5, 7, num_layers=2, batch_first=True),
    "gru-2layer-seq-first": lambda: nn.GRU(5, 7, num_layers=2),
    "rnn-relu": lambda: nn.RNN(5, 7, nonlinearity="relu", batch_first=True),
    "lstm-no-bias": lambda: nn.LSTM(5, 7, bias=False),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(_RNNS))
def test_low_rank_rnn_is_exact_at_full_rank_and_approximates_below(kind: str) -> None:
    """``LowRankRNN`` follows PyTorch's gate equations: with dense matrices, or every matrix
    factorised at its full rank, it computes what the module does (batched and unbatched input,
    final states included); below, each matrix is its truncated SVD, closer as the rank grows."""
    torch.manual_seed(0)
    rnn = _RNNS[kind]().eval()
    x = torch.randn(3, 6, 5)
    h = rnn.hidden_size
    g = GATES[type(rnn)]
    full = [(min(g * h, 5 if k == 0 else h), h) for k in range(rnn.num_layers)]  # r = min(m, n)
    with torch.no_grad():
        want, want_state = rnn(x)
        for ranks in ([(None, None)] * rnn.num_layers, full):
            low = LowRankRNN(rnn, ranks).eval()
            got, got_state = low(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            for a, b in zip(_flat(got_state), _flat(want_state), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(low(x[0])[0], rnn(x[0])[0], rtol=1e-5, atol=1e-6)
    errors = []
    for r in (0.2, 0.4):
        low = factorise_rnn(rnn, r)
        assert low is not None
        dense = [p for n, p in rnn.named_parameters() if n.startswith("weight_")]
        approx = [m[1].weight @ m[0].weight if isinstance(m, LowRank) else m.weight
                  for m in low.matrices()]
        errors.append([float((a - w).detach().norm()) for a, w in zip(approx, dense, strict=True)])
    assert all(e4 <= e2 + 1e-6 for e2, e4 in zip(*errors, strict=True))
    assert sum(errors[1]) < sum(errors[0])


def _flat(state: object) -> list[Tensor]:
    return list(state) if isinstance(state, tuple) else [state]  # type: ignore[list-item]


@pytest.mark.timeout(60)
def test_factorised_rnn_quantizes_weights_but_not_its_states() -> None:
    torch.manual_seed(0)
    model = create_model("test_lstm").eval()
    space = CompressionSpace.from_model(model)
    small = compress(model, space.uniform(rank=0.5, w_bits=4, a_bits=8), space=space,
                     calib=torch.randn(16, 1, 8, 8))
    low = small.lstm
    assert isinstance(low, LowRankRNN)
    quantizers = {n: m.bits for n, m in low.named_modules() if type(m).__name__ == "ActQuant"}
    # the input sequence is quantized; the factor between the two halves and the recurrent
    # input (the hidden state) are not
    assert quantizers["ih.0.0.act_quant"] == 8
    assert all(b == 32 for n, b in quantizers.items() if n != "ih.0.0.act_quant")
    assert all(m.w_bits == 4 for m in low.modules() if isinstance(m, nn.Linear))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_lstm", "test_gru"])
def test_factorised_rnn_exports_to_onnx_and_matches(name: str) -> None:
    """The factorised recurrence is a Python loop: the ONNX export unrolls it for the traced
    sequence length (8 rows here); the batch axis stays dynamic."""
    import onnxruntime as ort

    from autocompress.deploy import export_onnx_with

    model = _models()[name].eval()
    space = CompressionSpace.from_model(model)
    small = compress(model, space.uniform(prune=0.3, rank=0.4, w_bits=8, a_bits=8), space=space,
                     calib=torch.randn(16, 1, 8, 8)).eval()
    assert isinstance(small.get_submodule(name[5:]), LowRankRNN)
    x = torch.randn(7, 1, 8, 8)
    blob, _ = export_onnx_with(small, x[:1])
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(x).numpy(), rtol=1e-4, atol=1e-5)
