"""Problem: builds from settings, trains its base model once and reuses it, loads checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import autocompress.problem as problem_mod
from autocompress.errors import UserInputError
from autocompress.evaluators import CompressionEvaluator, EvaluatorConfig, model_fingerprint
from autocompress.problem import Problem

CFG = EvaluatorConfig(latency="none")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from two intra-op threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every real base-model training run Problem.build starts."""
    calls: list[str] = []
    real = problem_mod.train_model

    def counting(model, data, config, on_epoch=None):  # type: ignore[no-untyped-def]
        calls.append(type(model).__name__)
        return real(model, data, config, on_epoch=on_epoch)

    monkeypatch.setattr(problem_mod, "train_model", counting)
    return calls


@pytest.mark.timeout(300)
def test_builds_trains_once_and_reuses_the_cached_base(tmp_path: Path, train_calls: list[str]) -> None:
    first = Problem.build("test_mlp", train_epochs=3, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == ["TinyMLP"]
    assert first.checkpoint_path is not None and first.checkpoint_path.is_file()
    assert first.checkpoint_path.parent == tmp_path / "base"
    assert not first.model.training
    assert first.example_input.shape == (1, 1, 8, 8) and first.input_shape == (1, 8, 8)
    assert first.num_classes == 10 and isinstance(first.evaluator, CompressionEvaluator)
    assert first.space.decision_points and first.model_name == "test_mlp"
    assert first.base.ok and first.base.metrics["acc"] > 0.8  # really trained

    second = Problem.build("test_mlp", train_epochs=3, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == ["TinyMLP"]  # reused, not trained again
    assert second.checkpoint_path == first.checkpoint_path
    assert model_fingerprint(second.model) == model_fingerprint(first.model)
    assert second.base.cached  # the evaluation cache is shared across runs too

    third = Problem.from_settings(first.settings)  # what a worker process does
    assert train_calls == ["TinyMLP"] and third.settings["evaluator"] == first.settings["evaluator"]
    assert model_fingerprint(third.model) == model_fingerprint(first.model)
    assert third.space.names == first.space.names

    Problem.build("test_mlp", train_epochs=4, evaluator=CFG, cache_dir=tmp_path, progress=False)
    Problem.build("test_mlp", train_epochs=3, seed=1, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert len(train_calls) == 3  # epochs and seed are part of the key


def test_checkpoint_and_module_inputs(tmp_path: Path, train_calls: list[str]) -> None:
    torch.manual_seed(3)
    from autocompress.models import create_model

    net = create_model("test_mlp")
    ckpt = tmp_path / "mine.pt"
    torch.save(net.state_dict(), ckpt)
    p = Problem.build("test_mlp", checkpoint=ckpt, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == [] and p.checkpoint_path == ckpt
    assert model_fingerprint(p.model) == model_fingerprint(net)
    q = Problem.build(net, evaluator=CFG, cache_dir=tmp_path, progress=False)
    assert train_calls == [] and q.model is net and q.model_name == "TinyMLP"
    assert q.settings["model"] == "TinyMLP" and q.settings["evaluator"]["latency"] == "none"
    with pytest.raises(UserInputError, match="module object"):
        Problem.from_settings(q.settings)


def test_bad_settings_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown model 'nope'"):
        Problem.build("nope", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="num_classes=3"):
        Problem.build("test_mlp", num_classes=3, train_epochs=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="train_epochs"):
        Problem.build("test_mlp", train_epochs=-1, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="does not exist"):
        Problem.build("test_mlp", checkpoint=tmp_path / "missing.pt", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserInputError, match="input shape"):
        Problem.build("test_mlp", input_shape=(3, 16, 16), train_epochs=0, cache_dir=tmp_path,
                      progress=False)


@pytest.mark.timeout(300)
def test_default_problem_is_tiny_and_trained(tmp_path: Path) -> None:
    p = Problem.default(cache_dir=tmp_path, progress=False)
    assert p.model_name == "test_resnet" and p.data.name == "digits"
    assert p.evaluator.config.latency == "none" and "latency_ms" not in p.evaluator.metrics
    assert sum(t.numel() for t in p.model.parameters()) < 100_000
    assert p.base.metrics["acc"] > 0.9
