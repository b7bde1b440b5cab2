"""The sequence classifiers (``models/sequence.py``): image rows as time steps, LSTM / GRU, Linear head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.data import load_data
from autocompress.models import create_model
from autocompress.training import TrainConfig, train_model


def test_lstm_and_gru_are_registered_with_their_layers() -> None:
    lstm, gru = create_model("lstm"), create_model("gru")
    assert type(lstm.lstm) is nn.LSTM and (lstm.lstm.hidden_size, lstm.lstm.num_layers) == (64, 1)
    assert type(gru.gru) is nn.GRU and (gru.gru.hidden_size, gru.gru.num_layers) == (48, 2)
    assert gru.embed is None and gru.gru.input_size == 8  # a row of an 8x8 image per step
    # the LSTM classifier keeps its parameter names (checkpoints written before still load)
    assert list(lstm.state_dict())[:2] == ["embed.weight", "embed.bias"]
    assert "lstm.weight_hh_l0" in lstm.state_dict() and "fc.weight" in lstm.state_dict()


def test_rows_are_the_time_steps() -> None:
    """Step t of the recurrent input is row t of the image (its 8 pixels are the features)."""
    torch.manual_seed(0)
    model = create_model("test_gru").eval()
    x = torch.randn(3, 1, 8, 8)
    seen: list[torch.Tensor] = []
    model.gru.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad():
        model(x)
    assert seen[0].shape == (3, 8, 8) and torch.equal(seen[0], x[:, 0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_lstm", "test_gru"])
def test_sequence_models_learn_digits(name: str, one_torch_thread: None) -> None:
    data = load_data("digits", input_shape=(1, 8, 8), seed=0)
    torch.manual_seed(0)
    result = train_model(create_model(name), data, TrainConfig(epochs=10, seed=0))
    assert result.val_acc > 0.6  # chance is 0.1; the full-size lstm / gru reach 0.92 / 0.86
