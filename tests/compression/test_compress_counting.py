"""count_macs / count_params / count_size_bytes on real modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compression import count_macs, count_params, count_size_bytes
from autocompress.models import create_model


@pytest.mark.timeout(60)
def test_conv_and_linear_macs_per_sample() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.randn(1, 3, 16, 16)) == 8 * 3 * 9 * 16 * 16
    assert count_macs(conv, torch.randn(4, 3, 16, 16)) == 8 * 3 * 9 * 16 * 16  # per sample
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(dw, torch.randn(1, 8, 10, 10)) == 8 * 9 * 100
    lin = nn.Linear(20, 5)
    assert count_macs(lin, torch.randn(1, 7, 20)) == 7 * 20 * 5  # applied at 7 positions


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("rnn", "per_step"),
    [
        (nn.LSTM(6, 10, batch_first=True), 4 * 10 * (6 + 10)),
        (nn.GRU(6, 10, batch_first=True), 3 * 10 * (6 + 10)),
        (
            nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True),
            2 * 4 * 10 * (6 + 10) + 2 * 4 * 10 * (20 + 10),
        ),
    ],
    ids=["lstm", "gru", "lstm-2layer-bidir"],
)
def test_recurrent_macs_use_the_closed_form(rnn: nn.Module, per_step: int) -> None:
    # FlopCounterMode counts nn.LSTM as 0 MACs; count_macs replaces it by steps x weight numel
    assert count_macs(rnn, torch.randn(2, 5, 6)) == 5 * per_step


@pytest.mark.timeout(60)
def test_sequence_first_and_packed_rnns_count_per_sample() -> None:
    """A sequence-first RNN's batch is its input's dim 1 and a packed one's the first step's
    batch: with 3 samples of 5 steps MACs per sample stay steps x weight numel (not x 5 / 3)."""

    class SeqFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.transpose(0, 1))[0]

    class Packed(SeqFirst):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(x, [5] * x.shape[0], batch_first=True)
            return self.rnn(packed)[0].data

    per_step = 4 * 10 * (6 + 10)
    x = torch.randn(3, 5, 6)
    assert count_macs(SeqFirst(), x) == count_macs(Packed(), x) == 5 * per_step


@pytest.mark.timeout(60)
def test_bops_count_each_layer_at_its_bits() -> None:
    """BOPs: a quantized layer's MACs x w_bits x a_bits (a quantized LSTM's all at its pair, a
    quantized attention's projections at its pair and its QK^T / AV products at 32 x 32), every
    other MAC at 32 x 32."""
    from autocompress.compression import count_bops
    from autocompress.compression.quantize import quantize_module_

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 16, batch_first=True)
            self.att = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.rnn(x)[0]
            return self.fc(self.att(h, h, h, need_weights=False)[0])

    net = Net().eval()
    x = torch.randn(2, 5, 6)
    L, E = 5, 16
    rnn, proj, att, fc = 5 * 4 * 16 * (6 + 16), 4 * L * E * E, 2 * L * L * E, L * 16 * 3
    assert count_bops(net, x) == pytest.approx(1024 * count_macs(net, x))
    quantize_module_(net.rnn, 4, 8)
    quantize_module_(net.att, 8, 8)
    quantize_module_(net.fc, 2, 32)
    want = rnn * 4 * 8 + proj * 8 * 8 + att * 1024 + fc * 2 * 32
    assert count_bops(net, x) == pytest.approx(want, rel=1e-12)
    assert count_macs(net, x) == rnn + proj + att + fc


@pytest.mark.timeout(60)
def test_attention_macs_include_the_attention_products() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.att(x, x, x, need_weights=False)[0]

    L, E = 10, 16
    want = L * 3 * E * E + L * E * E + 2 * L * L * E
    block = Block()
    assert count_macs(block, torch.randn(1, L, E)) == want
    assert count_macs(block.eval(), torch.randn(3, L, E)) == want  # eval + no_grad fast path too


@pytest.mark.timeout(60)
def test_counting_leaves_the_model_alone_and_sizes_are_float32() -> None:
    model = create_model("test_resnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs = count_macs(model, torch.randn(1, 3, 16, 16))
    assert macs == 809_280 and model.training
    assert all(
        torch.equal(v, model.state_dict()[k]) for k, v in before.items()
    )  # BN stats untouched
    assert count_size_bytes(model) == 4 * count_params(model)
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, shared)) == 20
