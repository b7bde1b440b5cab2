"""CompressionSpace: decision points, knobs left out (and why), policies, validation, cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.compression import (
    FEATURE_NAMES,
    CompressionPolicy,
    CompressionSpace,
    LayerAction,
    count_macs,
    count_params,
)
from autocompress.compression.prune import removed_units
from autocompress.errors import UserInputError
from autocompress.models import create_model


@pytest.fixture(scope="module")
def convnet_space() -> tuple[torch.nn.Module, CompressionSpace]:
    model = create_model("test_convnet").eval()
    return model, CompressionSpace.from_model(model, torch.randn(1, 3, 16, 16))


@pytest.mark.timeout(60)
def test_points_and_knobs_follow_the_architecture(convnet_space) -> None:
    model, space = convnet_space
    points = {p.name: p for p in space.decision_points}
    # every conv/linear is a point, in module order
    assert space.names == [
        "stem.0",
        "res.0",
        "branch_a.0",
        "branch_b.0",
        "dw.0",
        "pw.0",
        "fc1",
        "fc2",
    ]
    # the network output's channels are never pruned; the classifier can still be quantized/factorised
    assert set(points["fc2"].knobs) == {"w_bits", "a_bits", "rank"}
    assert any("network output" in n for n in points["fc2"].notes)
    # a depthwise conv is never factorised
    assert "rank" not in points["dw.0"].knobs and points["dw.0"].kind == "depthwise_conv"
    # the residual group (stem + res) has one prune knob, on its first layer
    assert "prune" in points["stem.0"].knobs and "prune" not in points["res.0"].knobs
    assert any("follow group 'stem.0'" in n for n in points["res.0"].notes)
    # the concatenation is one group whose knob sits on its first branch
    assert "prune" in points["branch_a.0"].knobs and "prune" not in points["branch_b.0"].knobs
    assert points["stem.0"].knobs["prune"].high == pytest.approx(0.8)
    assert points["fc1"].knobs["w_bits"].choices == (1, 2, 3, 4, 5, 6, 8, 16, 32)
    text = space.describe()
    assert "network output" in text and "depthwise conv is not factorised" in text
    fm = space.feature_matrix()
    assert fm.shape == (len(space.decision_points), len(FEATURE_NAMES))
    assert fm.min() >= 0.0 and fm.max() <= 1.0
    macs_col = fm[:, FEATURE_NAMES.index("macs")]
    assert macs_col.argmax() == space.names.index(
        "res.0"
    )  # the 16->16 3x3 conv at full resolution


@pytest.mark.timeout(60)
def test_lstm_hidden_size_and_input_size_are_pruned_by_their_own_knobs() -> None:
    model = create_model("test_lstm").eval()
    space = CompressionSpace.from_model(model)
    lstm = space["lstm"]
    assert lstm.kind == "lstm" and set(lstm.knobs) == {"prune", "w_bits", "a_bits", "rank"}
    # rank 1 of the larger matrix (64 x 16, full rank 16) is the most compressed value
    assert lstm.knobs["rank"].most_compressed == pytest.approx(1 / 16)
    assert "prune" in space["embed"].knobs  # the LSTM's input size follows the embedding
    # the hidden units: one group of their own (compression/rnn.py), read by the head
    hidden = next(g for g in space.groups if g.root == "lstm")
    assert hidden.prunable and hidden.readers == ["fc"] and hidden.n == 16


@pytest.mark.timeout(60)
def test_identity_uniform_sample_most_compressed(convnet_space) -> None:
    model, space = convnet_space
    x = space.example_input
    ident = space.identity()
    assert set(ident) == set(space.names) and all(a.is_identity for a in ident.layers.values())
    assert space.macs(ident) == space.base_macs == count_macs(model, x)
    assert space.params(ident) == space.base_params == count_params(model)
    assert space.size_bytes(ident) == 4 * count_params(model)
    uni = space.uniform(prune=0.5, w_bits=8, a_bits=8)
    assert uni["stem.0"] == LayerAction(prune=0.5, w_bits=8, a_bits=8)
    assert uni["res.0"] == LayerAction(w_bits=8, a_bits=8)  # no prune knob there
    for seed in range(5):
        space.validate(space.sample(seed))
    assert space.sample(3) == space.sample(np.random.default_rng(3)) and space.sample(
        3
    ) != space.sample(4)
    most = space.most_compressed()
    space.validate(most)
    c_id, c_most = space.costs(ident), space.costs(most)
    assert all(c_most[k] < c_id[k] for k in c_id)
    with pytest.raises(UserInputError, match=r"prune=0\.9.*0 <= prune <= 0\.8"):
        space.uniform(prune=0.9)


@pytest.mark.timeout(60)
def test_validate_names_the_layer_value_and_what_is_allowed(convnet_space) -> None:
    _, space = convnet_space
    cases = [
        (
            {"nope.conv": LayerAction(prune=0.1)},
            r"unknown layer 'nope\.conv'.*decision points are: stem\.0",
        ),
        (
            {"stem.0": LayerAction(prune=0.95)},
            r"layer 'stem\.0': prune=0\.95 .*0 <= prune <= 0\.8",
        ),
        (
            {"res.0": LayerAction(prune=0.2)},
            r"layer 'res\.0': prune=0\.2 is not allowed.*no 'prune' knob",
        ),
        ({"dw.0": LayerAction(rank=0.5)}, r"layer 'dw\.0': rank=0\.5 .*no 'rank' knob.*depthwise"),
        ({"fc2": LayerAction(prune=0.3)}, r"layer 'fc2'.*network output"),
    ]
    for layers, pattern in cases:
        policy = CompressionPolicy(layers)
        with pytest.raises(UserInputError, match=pattern):
            space.validate(policy)
        with pytest.raises(UserInputError, match=pattern):  # the fast path reports the same error
            space.macs(policy)
    restricted = CompressionSpace.from_model(
        create_model("test_mlp").eval(), bits=(4, 8), knobs=("w_bits", "a_bits"), verify=False
    )
    with pytest.raises(
        UserInputError,
        match=r"layer 'net\.1': w_bits=2 is not allowed; allowed: one of \(4, 8, 32\)",
    ):
        restricted.macs(CompressionPolicy({"net.1": LayerAction(w_bits=2)}))
    with pytest.raises(UserInputError, match="no 'prune' knob"):
        restricted.validate(CompressionPolicy({"net.1": LayerAction(prune=0.5)}))
    with pytest.raises(UserInputError, match="unknown knob"):
        CompressionSpace.from_model(create_model("test_mlp"), knobs=("prune", "sparsty"))
    with pytest.raises(UserInputError, match="max_prune"):
        CompressionSpace.from_model(create_model("test_mlp"), max_prune=1.0)
    with pytest.raises(UserInputError, match="example_input is required"):
        CompressionSpace.from_model(torch.nn.Linear(3, 3))


@pytest.mark.timeout(60)
def test_removed_units_rounding() -> None:
    # kept = n - floor(p n), rounded up to a multiple of round_to, at least one unit kept
    assert removed_units(0.5, 10, 1) == 5
    assert removed_units(0.79, 10, 1) == 7
    assert removed_units(0.5, 16, 8) == 8
    assert removed_units(0.3, 16, 8) == 0  # kept 12 -> 16
    assert removed_units(0.8, 16, 8) == 8  # kept 4 -> 8
    assert removed_units(0.5, 4, 8) == 0  # fewer channels than round_to: untouched
    ps = np.linspace(0, 0.99, 50)
    assert (np.diff(removed_units(ps, 37, 3)) >= 0).all()
    assert (37 - removed_units(ps, 37, 3) >= 1).all()


def _more_compressed(
    point, action: LayerAction, knob: str, rng: np.random.Generator
) -> LayerAction | None:
    k = point.knobs[knob]
    value = getattr(action, knob)
    if knob == "prune":
        new = float(rng.uniform(value, k.high))
    elif knob == "rank":
        new = float(rng.uniform(k.low, value))
    else:
        lower = [b for b in k.choices if b < value]
        if not lower:
            return None
        new = lower[int(rng.integers(len(lower)))]
    return action.replace(**{knob: new})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["test_convnet", "test_resnet", "test_mobilenetv2", "test_lstm"])
def test_costs_are_monotone(name: str) -> None:
    """Raising prune, lowering bits or lowering rank never raises MACs, params, BOPs or size."""
    model = create_model(name).eval()
    space = CompressionSpace.from_model(model, verify=False)
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(150):
        policy = space.sample(trial)
        point = space.decision_points[int(rng.integers(len(space.decision_points)))]
        knob = list(point.knobs)[int(rng.integers(len(point.knobs)))]
        new_action = _more_compressed(point, policy.get(point.name), knob, rng)
        if new_action is None:
            continue
        before = space.costs(policy)
        after = space.costs(policy.with_layer(point.name, new_action))
        for metric in ("macs", "params", "bops", "size_bytes"):
            assert after[metric] <= before[metric] + 1e-6, (
                name,
                point.name,
                knob,
                metric,
                before,
                after,
            )
        checked += 1
    assert checked > 100


@pytest.mark.timeout(60)
def test_model_and_its_mode_are_untouched_by_space_discovery() -> None:
    model = create_model("test_resnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CompressionSpace.from_model(model)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.timeout(60)
def test_round_to_makes_kept_channels_multiples(convnet_space) -> None:
    from autocompress.compression import compress

    model = create_model("test_resnet").eval()
    space = CompressionSpace.from_model(model, round_to=4)
    policy = space.uniform(prune=0.3)
    small = compress(model, policy, space=space)
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths) and sum(widths) < sum(
        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert count_macs(small, space.example_input) == space.macs(policy)


@pytest.mark.timeout(60)
def test_space_pickles_and_deep_copies(convnet_space) -> None:
    import copy
    import pickle

    _, space = convnet_space
    policy = space.sample(0)
    for clone in (pickle.loads(pickle.dumps(space)), copy.deepcopy(space)):
        assert clone.names == space.names
        assert clone.costs(policy) == space.costs(policy)
        assert dict(clone["fc1"].knobs) == dict(space["fc1"].knobs)
