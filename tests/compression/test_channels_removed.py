"""CompressionSpace.channels_removed agrees with the widths ``compress`` builds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compression import CompressionPolicy, CompressionSpace, LayerAction, compress
from autocompress.models import create_model


def _widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase):
            out[name] = (m.input_size, m.hidden_size)
        elif isinstance(m, nn.modules.conv._ConvNd):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "shape", "round_to"), [
    ("test_resnet", (1, 3, 16, 16), 8), ("test_mobilenetv2", (1, 3, 16, 16), 1),
    ("test_gru", (1, 1, 8, 8), 1),
])
def test_channels_removed_matches_compress(name: str, shape: tuple[int, ...], round_to: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(*shape)
    space = CompressionSpace.from_model(model, x, knobs=("prune",), round_to=round_to)
    base = _widths(model)
    points = [p for p in space.decision_points if "prune" in p.knobs][:4]
    assert points
    for point in points:
        ratios = [0.0, 0.3, float(point.knobs["prune"].most_compressed)]
        removed = space.channels_removed(model, point.name, ratios)
        for k, r in enumerate(ratios[1:], start=1):
            small = _widths(compress(model, CompressionPolicy({point.name: LayerAction(prune=r)}),
                                     space=space, example_input=x))
            for lname, (ci, co) in base.items():
                ni, no = small[lname]
                got = removed.get(lname, ([0.0] * 3, [0.0] * 3))
                assert (got[0][k], got[1][k]) == (ci - ni, co - no), (point.name, lname, r)
