"""Model registry: every built-in builds and runs; torchvision names resolve; user models and checkpoints."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torchvision.models as tvm

from autocompress.errors import UserInputError
from autocompress.models import (
    create_model,
    default_input_shape,
    list_models,
    load_checkpoint,
    register_model,
)


@pytest.mark.parametrize("name", list_models())
def test_every_builtin_builds_and_runs(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_builtins_cover_the_issue_list() -> None:
    names = set(list_models())
    assert {"resnet20", "resnet56", "vgg11_bn", "vgg16_bn", "mobilenetv2", "lstm"} <= names
    assert len(list_models("test_*")) >= 4
    assert list_models("resnet*") == ["resnet20", "resnet56"]


def test_resnet_depths_and_option_b_shortcuts() -> None:
    r20, r56 = create_model("resnet20"), create_model("resnet56")
    convs20 = [m for m in r20.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    convs56 = [m for m in r56.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs20) == 19 and len(convs56) == 55  # + the fc layer = 20 / 56 weighted layers
    projections = [m for m in r20.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2  # option B: 1x1 projections where the stage width changes


def test_mobilenetv2_width_multiplier_shrinks_model() -> None:
    full = sum(p.numel() for p in create_model("mobilenetv2").parameters())
    half = sum(p.numel() for p in create_model("mobilenetv2", width_mult=0.5).parameters())
    assert half < 0.6 * full


@pytest.mark.parametrize("name", sorted(tvm.list_models(module=tvm)))
def test_every_torchvision_classifier_name_resolves(name: str) -> None:
    # Building all of them (some have >500M parameters) would take minutes; resolution through our
    # prefix + the constructor lookup is what the name contract promises. A few are built below.
    assert f"tv:{name}" in list_models("tv:*", torchvision=True)
    assert callable(tvm.get_model_builder(name))


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small", "tv:squeezenet1_0"])
def test_torchvision_models_build_with_num_classes(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert default_input_shape(name, model) == (3, 224, 224)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UserInputError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")
    with pytest.raises(UserInputError, match="unknown torchvision model 'nonet'"):
        create_model("tv:nonet")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20", input_shape=(3, 32, 32))(lambda num_classes=10: None)


def test_user_factory_and_import_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def small(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:small", num_classes=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(UserInputError, match="cannot import module 'no_such_pkg.mod'"):
        create_model("no_such_pkg.mod:factory")
    with pytest.raises(UserInputError, match="has no callable 'missing'"):
        create_model("my_models:missing")
    sys.modules.pop("my_models", None)


def test_checkpoint_round_trip_and_torchscript(tmp_path) -> None:
    model = create_model("test_convnet").eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    other = load_checkpoint(create_model("test_convnet"), path).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), other(x))
    ts = tmp_path / "m.ts"
    torch.jit.script(model).save(str(ts))
    third = load_checkpoint(create_model("test_convnet"), ts).eval()
    assert torch.equal(model(x), third(x))


def test_checkpoint_mismatch_names_first_key(tmp_path) -> None:
    path = tmp_path / "r.pt"
    torch.save(create_model("test_convnet", num_classes=10).state_dict(), path)
    with pytest.raises(UserInputError, match=r"key 'fc2.weight' has shape \(10, 32\) in the checkpoint, \(4, 32\)"):
        load_checkpoint(create_model("test_convnet", num_classes=4), path)
    with pytest.raises(UserInputError, match="missing key"):
        load_checkpoint(create_model("test_resnet"), path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="cannot read checkpoint"):
        load_checkpoint(create_model("test_convnet"), bad)
    with pytest.raises(UserInputError, match="does not exist"):
        load_checkpoint(create_model("test_convnet"), tmp_path / "none.pt")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("os:system", "builtin_function_or_method"),  # never called: a builtin is refused
        ("os:getcwd", "builtin_function_or_method"),
        ("json:JSONDecoder", "not an nn.Module subclass"),
        ("collections:OrderedDict", "not an nn.Module subclass"),
        ("shutil:rmtree", "cannot be called"),  # a required argument we would not supply
        ("os:", "package.module:factory"),
        ("../x:y", "package.module:factory"),
    ],
)
def test_user_factory_must_build_a_module(spec: str, fragment: str) -> None:
    with pytest.raises(UserInputError, match="nn.Module|package.module|cannot be called") as info:
        create_model(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_user_factory_results_and_failures(tmp_path, monkeypatch) -> None:
    (tmp_path / "odd_models.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        CALLS = []
        def not_a_model(num_classes=10):
            CALLS.append(num_classes)
            return "a string"
        def broken(num_classes=10):
            raise RuntimeError("boom inside")
        def no_classes():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        class Net(nn.Module):
            def __init__(self, num_classes=10, width=64):
                super().__init__()
                self.fc = nn.Linear(width, num_classes)
            def forward(self, x):
                return self.fc(x.flatten(1))
        import functools
        wide = functools.partial(Net, width=64)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserInputError, match="returned a str, not an nn.Module"):
        create_model("odd_models:not_a_model", num_classes=3)
    with pytest.raises(UserInputError, match="failed: RuntimeError: boom inside"):
        create_model("odd_models:broken")
    assert create_model("odd_models:no_classes")(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert create_model("odd_models:Net", num_classes=4)(torch.randn(1, 1, 8, 8)).shape == (1, 4)
    assert create_model("odd_models:wide", num_classes=5)(torch.randn(1, 1, 8, 8)).shape == (1, 5)
    import odd_models

    assert odd_models.CALLS == [3]  # called once, with the registry's own argument only
    sys.modules.pop("odd_models", None)


class _Plant:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        import os

        return (os.mkdir, (self.marker,))


def test_checkpoint_directory_planted_pickle_and_no_warnings(tmp_path, recwarn) -> None:
    with pytest.raises(UserInputError, match="is a directory"):
        load_checkpoint(create_model("test_convnet"), tmp_path)
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save({"state_dict": _Plant(str(marker))}, planted)
    with pytest.raises(UserInputError, match="cannot read checkpoint"):
        load_checkpoint(create_model("test_convnet"), planted)
    assert not marker.exists()
    assert not [w for w in recwarn if "torch" in str(w.filename)]  # torch's notices stay inside
