"""``round_to="auto"``: the CPU's SIMD width in floats, as far as the narrowest layer allows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compression.hardware import (
    auto_round_to,
    check_round_to,
    cpu_simd_floats,
    narrowest_width,
)
from autocompress.errors import UserInputError
from autocompress.models import create_model


def test_simd_width_follows_the_cpu_capability_pytorch_dispatches_to() -> None:
    expected = {"AVX512": 16, "AVX2": 8}.get(str(torch.backends.cpu.get_cpu_capability()))
    assert cpu_simd_floats() in (4, 8, 16)
    if expected is not None:
        assert cpu_simd_floats() == expected


def test_auto_is_halved_until_the_narrowest_layer_can_lose_half_its_channels() -> None:
    lanes = cpu_simd_floats()
    resnet20 = create_model("resnet20")  # stage widths 16 / 32 / 64
    assert narrowest_width(resnet20, 10) == 16
    assert auto_round_to(resnet20, 10) == min(lanes, 8)
    narrow = create_model("test_resnet")  # width 8
    assert narrowest_width(narrow, 10) == 8 and auto_round_to(narrow, 10) == min(lanes, 4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.ReLU(), nn.Linear(3, 10))  # 3 hidden units
    assert narrowest_width(mlp, 10) == 3 and auto_round_to(mlp, 10) == 1
    wide = nn.Sequential(nn.Conv2d(3, 256, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))
    assert auto_round_to(wide, 10) == lanes  # the classifier's 10 outputs are never pruned
    assert auto_round_to() == lanes


def test_check_round_to() -> None:
    assert check_round_to("auto") == "auto" and check_round_to(" Auto ") == "auto"
    assert check_round_to(8) == 8 and check_round_to("4") == 4 and check_round_to(2.0) == 2
    for bad in (0, -1, 1.5, "x", True, None):
        with pytest.raises(UserInputError, match="expected a positive integer or auto"):
            check_round_to(bad)


def test_problem_resolves_auto_for_its_model() -> None:
    from autocompress.problem import Problem

    problem = Problem.build("test_mlp", data="digits", train_epochs=1, knobs=("prune",), round_to="auto",
                            progress=False)
    assert problem.space.round_to == auto_round_to(problem.model, problem.num_classes)
    assert problem.settings["round_to"] == problem.space.round_to


def test_a_run_records_what_auto_resolved_to_and_is_rebuilt_with_it(tmp_path, monkeypatch) -> None:
    """A report or export on a machine with another SIMD width rebuilds the models the search scored."""
    import json

    from autocompress.compression import hardware
    from autocompress.report import load_run
    from autocompress.report._rebuild import _PROBLEMS, rebuild_problem
    from autocompress.search import SearchSpec, run_search

    spec = SearchSpec(model="test_mlp", data="digits", knobs=("prune",), train_epochs=1, trials=2,
                      out=str(tmp_path / "run"))
    result = run_search(spec)
    used = json.loads((result.run_dir / "spec.json").read_text())["round_to_used"]
    assert json.loads((result.run_dir / "spec.json").read_text())["round_to"] == "auto"
    assert used == hardware.auto_round_to(create_model("test_mlp"), 10)
    other = 4 if used != 4 else 16
    monkeypatch.setattr(hardware, "cpu_simd_floats", lambda: other)
    assert hardware.auto_round_to() == other  # this "machine" would resolve differently
    _PROBLEMS.clear()
    assert rebuild_problem(load_run(result.run_dir)).space.round_to == used
