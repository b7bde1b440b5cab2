"""Small LSTM / GRU sequence classifiers: an image's rows are the time steps (the survey's RNN case)."""

from __future__ import annotations

from torch import Tensor, nn

from autocompress.models._registry import register_model

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RowSequenceClassifier(nn.Module):
    """Reads a (B, C, H, W) input as H steps of C*W features; classifies from the last output.

    ``embed=True`` puts a ``Linear(C*W -> hidden)`` + ReLU before the recurrent layer (so its
    input size is prunable too); the recurrent module is the attribute named after ``cell``
    (``self.lstm`` / ``self.gru``), then a ``Linear`` head ``fc`` reads the last step.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        embed: bool = True,
    ) -> None:
        super().__init__()
        c, _, w = input_shape
        self.input_shape = tuple(input_shape)
        self.cell = cell
        self.embed = nn.Linear(c * w, hidden) if embed else None
        size = hidden if embed else c * w
        setattr(self, cell, _CELLS[cell](size, hidden, num_layers=num_layers, batch_first=True))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        if self.embed is not None:
            seq = self.embed(seq).relu()
        out, _ = getattr(self, self.cell)(seq)
        return self.fc(out[:, -1])


class LSTMClassifier(RowSequenceClassifier):
    """The LSTM case of ``RowSequenceClassifier`` (embedding, ``self.lstm``, head ``fc``)."""

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 64,
        num_layers: int = 1,
    ) -> None:
        super().__init__(num_classes, input_shape, hidden, num_layers, cell="lstm")


@register_model("lstm", input_shape=(1, 8, 8), description="LSTM classifier over image rows")
def lstm(num_classes: int = 10, **kw: object) -> LSTMClassifier:
    """Linear(64) embedding then LSTM(64) over the 8 rows of an 8x8 image, Linear head."""
    return LSTMClassifier(num_classes, **kw)  # type: ignore[arg-type]


@register_model("gru", input_shape=(1, 8, 8), description="2-layer GRU classifier over image rows")
def gru(num_classes: int = 10, **kw: object) -> RowSequenceClassifier:
    """2-layer GRU(48) reading the 8 rows of an 8x8 image directly, Linear head."""
    kw = {"hidden": 48, "num_layers": 2, "embed": False, **kw}
    return RowSequenceClassifier(num_classes, cell="gru", **kw)  # type: ignore[arg-type]
