"""EvaluatorConfig validation, dict round trip and its stable key."""

from __future__ import annotations

import pytest

from autocompress.errors import UserInputError
from autocompress.evaluators import EvaluatorConfig


def test_defaults_and_round_trip() -> None:
    c = EvaluatorConfig()
    assert c.val_samples is None and c.bn_recalib and c.latency == "predicted"
    assert c.latency_backend == "ort" and c.finetune_steps == 0
    assert EvaluatorConfig.from_dict(c.to_dict()) == c


def test_key_is_stable_and_sensitive() -> None:
    a, b = EvaluatorConfig(), EvaluatorConfig()
    assert a.key() == b.key() and len(a.key()) == 64
    assert EvaluatorConfig(bn_recalib=False).key() != a.key()
    assert EvaluatorConfig(finetune_steps=10).key() != a.key()
    assert EvaluatorConfig(latency_batch=64).key() != a.key()
    # the evaluation batch size does not change a score, so it does not change the key
    assert EvaluatorConfig(batch_size=32).key() == a.key()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_samples": 0}, "val_samples"),
        ({"recalib_batches": -1}, "recalib_batches"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"kd_alpha": 1.5}, "kd_alpha"),
        ({"kd_temperature": 0}, "kd_temperature"),
        ({"latency": "fast"}, "none, predicted, measured"),
        ({"latency_backend": "tensorrt"}, "torch, ort, ort-int8"),
        ({"latency_threads": 0}, "latency_threads"),
        ({"bn_recalib": "yes"}, "bn_recalib"),
        ({"latency_clock": "tsc"}, "wall, cpu"),
        ({"latency_clock": "cpu", "latency_threads": 2}, "latency_threads=1"),
    ],
)
def test_bad_values_raise_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(UserInputError, match=match) as info:
        EvaluatorConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(UserInputError, match="'val_sample'"):
        EvaluatorConfig.from_dict({"val_sample": 3})


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        EvaluatorConfig().val_samples = 3  # type: ignore[misc]
