"""CompressionPolicy / LayerAction: validation, JSON round-trip, stable keys."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from autocompress.compression import ALLOWED_BITS, CompressionPolicy, LayerAction
from autocompress.errors import UserInputError


def _policy() -> CompressionPolicy:
    return CompressionPolicy(
        {
            "layer1.0.conv1": LayerAction(prune=0.25, w_bits=8, a_bits=6),
            "fc": LayerAction(rank=0.5, w_bits=2),
            "stem": LayerAction(),
        }
    )


@pytest.mark.timeout(30)
def test_json_round_trip_and_dict_format() -> None:
    p = _policy()
    assert CompressionPolicy.from_json(p.to_json()) == p
    assert CompressionPolicy.from_dict(p.to_dict()) == p
    d = json.loads(p.to_json())
    assert set(d) == {"_type", "_version", "_data"}
    assert d["_version"] == CompressionPolicy.schema_version
    assert d["_data"]["layers"]["fc"] == {"prune": 0.0, "w_bits": 2, "a_bits": 32, "rank": 0.5}


@pytest.mark.timeout(30)
def test_key_is_stable_and_ignores_identity_entries() -> None:
    p = _policy()
    q = CompressionPolicy({k: p[k] for k in reversed(list(p))})  # other insertion order
    assert p.key() == q.key() and hash(p) == hash(q) and p == q
    assert len(p.key()) == 64
    without_identity = CompressionPolicy({k: v for k, v in p.layers.items() if not v.is_identity})
    assert without_identity.key() == p.key()
    assert p.with_layer("fc", LayerAction(rank=0.25)).key() != p.key()
    # a fixed policy has a fixed key across processes and versions of Python's hash seed
    assert (
        CompressionPolicy({"a": LayerAction(prune=0.5)}).key()
        == CompressionPolicy.from_json(
            CompressionPolicy({"a": LayerAction(prune=0.5)}).to_json()
        ).key()
    )


@pytest.mark.timeout(30)
def test_policy_is_frozen_picklable_and_copyable() -> None:
    p = _policy()
    with pytest.raises(TypeError):
        p.layers["fc"] = LayerAction()  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.layers = {}  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.deepcopy(p) == p
    assert p.get("not-there") == LayerAction()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prune": 1.0}, "0 <= prune < 1"),
        ({"prune": -0.1}, "0 <= prune < 1"),
        ({"rank": 0.0}, "0 < rank <= 1"),
        ({"rank": 1.5}, "0 < rank <= 1"),
        ({"w_bits": 7}, str(ALLOWED_BITS)),
        ({"a_bits": 0}, str(ALLOWED_BITS)),
        ({"w_bits": 4.5}, "not an integer"),
    ],
)
def test_layer_action_rejects_bad_values(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(UserInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        LayerAction(**kwargs)


@pytest.mark.timeout(30)
def test_from_dict_errors_name_the_layer_type_and_version() -> None:
    d = _policy().to_dict()
    d["_data"]["layers"]["fc"]["prune"] = 3.0
    with pytest.raises(UserInputError, match=r"layer 'fc'.*prune=3\.0"):
        CompressionPolicy.from_dict(d)
    d = _policy().to_dict()
    d["_data"]["layers"]["fc"]["sparsty"] = 0.5
    with pytest.raises(UserInputError, match="unknown knob"):
        CompressionPolicy.from_dict(d)
    with pytest.raises(UserInputError, match="_type"):
        CompressionPolicy.from_dict({**_policy().to_dict(), "_type": "SomethingElse"})
    with pytest.raises(UserInputError, match="_version"):
        CompressionPolicy.from_dict({**_policy().to_dict(), "_version": 99})
    with pytest.raises(UserInputError, match="does not parse"):
        CompressionPolicy.from_json("{not json")
    with pytest.raises(UserInputError, match="layer 'x'"):
        CompressionPolicy({"x": {"w_bits": 7}})  # type: ignore[dict-item]
