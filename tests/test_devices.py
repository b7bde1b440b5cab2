"""``--device``: values checked before anything is built, the CPU path unchanged (the same
candidates as without the option), and the CUDA path where a GPU is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autocompress.devices import (
    amp_dtype,
    check_device_name,
    device_tag,
    model_device,
    resolve_device,
    train_autocast,
)
from autocompress.errors import UserInputError

pytestmark = pytest.mark.timeout(300)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_allowed_forms(value: str) -> None:
    assert check_device_name(value) == value


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "tpu", "", 0, None])
def test_bad_forms_name_the_value_and_what_is_allowed(value: object) -> None:
    with pytest.raises(UserInputError, match=r"allowed: auto, cpu, cuda, cuda:N") as info:
        check_device_name(value)
    assert repr(value) in str(info.value)
    with pytest.raises(UserInputError):
        resolve_device(value)  # type: ignore[arg-type]


def test_cpu_and_auto_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert device_tag(torch.device("cpu")) == ""  # CPU cache keys stay what they were
    assert amp_dtype(torch.device("cpu")) is None  # no autocast on the CPU
    with train_autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled()
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused(value: str) -> None:
    with pytest.raises(UserInputError, match=rf"'{value}' needs CUDA.*allowed here: auto, cpu"):
        resolve_device(value)


def _assert_one_line_error(res: object, *needles: str) -> None:
    code, err = res.exit_code, res.stderr  # type: ignore[attr-defined]
    assert code == 2, (code, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _invoke(*args: str) -> object:
    from click.testing import CliRunner

    from autocompress.cli import main

    res = CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


@pytest.mark.parametrize("command", ["train", "search", "finetune", "export"])
def test_cli_refuses_a_bad_device_before_anything_is_created(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = {
        "train": ["train", "--model", "test_mlp", "--epochs", "1", "--out", str(out / "m.pt")],
        "search": ["search", "--model", "test_mlp", "--trials", "2", "--out", str(out)],
        "finetune": ["finetune", str(out), "--point", "knee"],
        "export": ["export", str(out), "--point", "knee"],
    }[command]
    _assert_one_line_error(_invoke(*args, "--device", "gpu"), "'gpu'", "auto, cpu, cuda, cuda:N")
    assert not out.exists()
    if not torch.cuda.is_available():
        _assert_one_line_error(_invoke(*args, "--device", "cuda:1"), "'cuda:1'", "needs CUDA")
        assert not out.exists()


def test_spec_device_and_ray_resources_are_checked(tmp_path: Path) -> None:
    from autocompress.search import SearchSpec

    with pytest.raises(UserInputError, match=r"device 'gpu' is not allowed; allowed: auto, cpu"):
        SearchSpec(device="gpu")
    with pytest.raises(UserInputError, match=r"gpus_per_trial=-0.5 is out of range"):
        SearchSpec(backend="ray", gpus_per_trial=-0.5)
    with pytest.raises(UserInputError, match=r"cpus_per_trial=0.0 is out of range"):
        SearchSpec(backend="ray", cpus_per_trial=0.0)
    with pytest.raises(UserInputError, match=r"apply to backend ray only"):
        SearchSpec(gpus_per_trial=1)
    with pytest.raises(UserInputError, match=r"'cuda' with backend ray needs gpus_per_trial > 0"):
        SearchSpec(backend="ray", device="cuda")
    spec = SearchSpec(backend="ray", device="cuda", gpus_per_trial=0.25, cpus_per_trial=2)
    assert (spec.gpus_per_trial, spec.cpus_per_trial) == (0.25, 2.0)
    # A run-level setting: the same search resumes on another device.
    assert spec.identity() == SearchSpec(backend="ray").identity()
    assert SearchSpec.from_dict(spec.to_dict()) == spec


def _candidates(run_dir: Path) -> list[tuple[str, dict]]:
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [(json.dumps(r["policy"], sort_keys=True), r["metrics"]) for r in rows]


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with CUDA present no flag means the GPU, whose float sums differ from the CPU's")
def test_device_cpu_gives_exactly_the_candidates_of_no_flag(tmp_path: Path, one_torch_thread: None) -> None:
    from autocompress.search import SearchSpec, run_search

    settings = {"model": "test_mlp", "trials": 4, "seed": 0, "cache": False}
    plain = run_search(SearchSpec(out=str(tmp_path / "plain"), **settings))
    on_cpu = run_search(SearchSpec(out=str(tmp_path / "cpu"), device="cpu", **settings))
    a, b = _candidates(plain.run_dir), _candidates(on_cpu.run_dir)
    assert len(a) >= 4 and a == b  # same policies, bit-identical metrics (no cache in between)


def test_cpu_evaluator_keeps_its_cache_keys(one_torch_thread: None) -> None:
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.problem import Problem

    problem = Problem.build("test_mlp", data="digits", train_epochs=1,
                            evaluator=EvaluatorConfig(latency="none"))
    ev = problem.evaluator
    policy = problem.space.uniform(prune=0.5)
    key = ev.key(policy)
    ev.device = "cpu"
    assert ev.key(policy) == key and problem.settings["device"] == "cpu"


@needs_cuda
def test_cuda_evaluation_matches_cpu_and_is_cached_apart(one_torch_thread: None) -> None:
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.problem import Problem

    problem = Problem.build("test_resnet", data="digits", train_epochs=1,
                            evaluator=EvaluatorConfig(latency="none", finetune_steps=4))
    ev = problem.evaluator
    policy = problem.space.uniform(prune=0.5)
    cpu_key, cpu = ev.key(policy), ev.evaluate(policy)
    ev.device = resolve_device("cuda")
    gpu_key, gpu = ev.key(policy), ev.evaluate(policy)
    assert gpu.ok and gpu_key != cpu_key
    # fp32 scoring, bf16 fine-tune steps: close, not bit-identical.
    assert abs(gpu.metrics["acc"] - cpu.metrics["acc"]) < 0.1
    assert next(ev.compress(policy).parameters()).is_cuda
    assert next(problem.model.parameters()).device.type == "cpu"  # compression stays on the CPU


@needs_cuda
def test_train_on_cuda_returns_a_cpu_model() -> None:
    from autocompress.data import load_data
    from autocompress.models import create_model, default_input_shape
    from autocompress.training import TrainConfig, train_model

    shape = default_input_shape("test_mlp", create_model("test_mlp", num_classes=10))
    data = load_data("digits", input_shape=shape, seed=0)
    net = create_model("test_mlp", num_classes=data.num_classes)
    result = train_model(net, data, TrainConfig(epochs=1, batch_size=32), device="cuda")
    assert result.val_acc > 0.3 and model_device(net).type == "cpu"
