"""The knob registry: one declaration per knob type, one unit mapping, read by every consumer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autocompress.compression import CompressionPolicy, CompressionSpace, Knob, LayerAction
from autocompress.compression.knobs import (
    KNOB_TYPES,
    default_knob_names,
    from_unit,
    knob_names,
    knob_type,
    to_unit,
)
from autocompress.errors import UserInputError
from autocompress.models import create_model

pytestmark = pytest.mark.timeout(120)

BITS = Knob("w_bits", choices=(1, 2, 3, 4, 5, 6, 8, 16, 32), most_compressed=1, least_compressed=32)
PRUNE = Knob("prune", low=0.0, high=0.8, most_compressed=0.8, least_compressed=0.0)


def test_layer_action_fields_are_the_registry() -> None:
    """Every registered knob is a LayerAction field defaulting to its identity value, and back."""
    fields = {f.name: f.default for f in dataclasses.fields(LayerAction)}
    assert fields == {k: kt.identity for k, kt in KNOB_TYPES.items()}
    assert knob_names()[:4] == ("prune", "w_bits", "a_bits", "rank")
    assert default_knob_names() == ("prune", "w_bits", "a_bits", "rank")  # sparsity is opt-in
    assert LayerAction().is_identity


def test_unknown_knob_names_the_registered_ones() -> None:
    with pytest.raises(UserInputError, match="sparsity"):
        knob_type("sparsty")
    with pytest.raises(UserInputError, match="unknown knob"):
        CompressionPolicy.from_dict({"_type": "autocompress.CompressionPolicy", "_version": 1,
                                     "_data": {"layers": {"fc": {"spars": 0.5}}}})


def test_old_policies_keep_their_json_and_key() -> None:
    """A knob at its identity value is not written: policies of the four knobs hash as before."""
    p = CompressionPolicy({"a": LayerAction(prune=0.5, w_bits=8)})
    assert p.to_dict()["_data"]["layers"]["a"] == {"prune": 0.5, "w_bits": 8, "a_bits": 32, "rank": 1.0}
    # the sha256 of this exact policy before the registry existed
    assert p.key() == "20abc57f652a84bef0ed57af0c889cbe383595ef5a98f893f5ea57dc1a51826a"
    assert p.key() == CompressionPolicy({"a": LayerAction(prune=0.5, w_bits=8, sparsity=0.0)}).key()
    q = CompressionPolicy({"a": LayerAction(prune=0.5, w_bits=8, sparsity=0.25)})
    assert q.key() != p.key()
    assert CompressionPolicy.from_json(q.to_json()) == q


@pytest.mark.parametrize("knob", [BITS, PRUNE])
def test_unit_mapping_round_trips_and_hits_the_ends(knob: Knob) -> None:
    values = knob.choices if knob.choices else (0.0, 0.2, 0.5, 0.8)
    for v in values:
        assert from_unit(knob, to_unit(knob, v)) == pytest.approx(v)
    assert from_unit(knob, 0.0) == knob.least_compressed
    assert from_unit(knob, 1.0) == knob.most_compressed
    assert to_unit(knob, knob.least_compressed) == 0.0 and to_unit(knob, knob.most_compressed) == 1.0
    us = np.linspace(0, 1, 41)
    steps = [to_unit(knob, from_unit(knob, u)) for u in us]
    assert all(b >= a for a, b in zip(steps, steps[1:], strict=False))  # monotone


def test_every_reader_uses_the_one_mapping() -> None:
    """The env, the baseline searchers and the projection decode a unit value identically."""
    from autocompress.envs._features import decode_knob, encode_knob
    from autocompress.search._projection import _unit, _value
    from autocompress.search.baseline_searchers import knob_value

    for knob in (BITS, PRUNE):
        for u in np.linspace(0, 1, 23):
            assert decode_knob(knob, u) == knob_value(knob, u) == _value(knob, u) == from_unit(knob, u)
        for v in (knob.choices or (0.0, 0.4)):
            assert encode_knob(knob, v) == _unit(knob, v) == to_unit(knob, v)


def test_space_validates_every_registered_knob() -> None:
    model = create_model("test_mlp")
    space = CompressionSpace.from_model(model)
    name = space.names[0]
    assert all("sparsity" not in p.knobs for p in space.decision_points)
    with pytest.raises(UserInputError, match="no 'sparsity' knob"):
        space.validate(CompressionPolicy({name: LayerAction(sparsity=0.5)}))
    with pytest.raises(UserInputError, match="unknown knob 'foo'"):
        space.uniform(foo=1)
    with pytest.raises(UserInputError, match="unknown knob"):
        CompressionSpace.from_model(model, knobs=("prune", "foo"))


def test_tests_here_run_on_one_torch_thread() -> None:
    """``tests/conftest.py`` gives every test of this directory one torch thread."""
    import torch

    assert torch.get_num_threads() == 1
