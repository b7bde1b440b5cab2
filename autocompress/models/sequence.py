"""A small LSTM sequence classifier: an image's rows are the time steps (the survey's RNN case)."""

from __future__ import annotations

from torch import Tensor, nn

from autocompress.models._registry import register_model


class LSTMClassifier(nn.Module):
    """Reads a (B, C, H, W) input as H steps of C*W features; classifies from the last hidden state."""

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 64,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        c, _, w = input_shape
        self.input_shape = tuple(input_shape)
        self.embed = nn.Linear(c * w, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        out, _ = self.lstm(self.embed(seq).relu())
        return self.fc(out[:, -1])


@register_model("lstm", input_shape=(1, 8, 8), description="LSTM classifier over image rows")
def lstm(num_classes: int = 10, **kw: object) -> LSTMClassifier:
    """LSTM(64) sequence classifier over the 8 rows of an 8x8 image."""
    return LSTMClassifier(num_classes, **kw)  # type: ignore[arg-type]
