"""Nothing read from a run directory or a user path runs code: planted pickles are refused.

Each loader gets a file whose unpickling would create a marker file (``__reduce__`` calling
``open(marker, "w")``); the marker must never appear and the command must fail with one line.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _cli_checks import assert_one_line_error
from click.testing import CliRunner, Result

from autocompress.cli import main
from autocompress.errors import UserInputError
from autocompress.report import load_run

pytestmark = pytest.mark.timeout(300)


class Planted:
    """Unpickling an instance calls ``open(marker, "w")``: the file appears iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, how: str) -> None:
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(Planted(marker)))
    elif how == "torch_save":  # the zip format torch.save writes, with the object inside
        torch.save({"weight": Planted(marker)}, path)
    else:
        raise AssertionError(how)


def _cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "160"})


def test_planted_pickle_round_trip_runs_code(tmp_path: Path) -> None:
    """The probe is live: an unrestricted unpickle of each planted file does create the marker."""
    for how in ("raw_pickle", "torch_save"):
        marker = tmp_path / f"ran-{how}"
        _plant(tmp_path / f"{how}.pt", marker, how)
        if how == "raw_pickle":
            pickle.loads((tmp_path / f"{how}.pt").read_bytes())
        else:
            torch.load(tmp_path / f"{how}.pt", weights_only=False)
        assert marker.exists()


@pytest.fixture
def run_copy(real_run: Path, tmp_path: Path) -> Path:
    """A private copy of the real run (planted files must not leak into other tests)."""
    return Path(shutil.copytree(real_run, tmp_path / "run", ignore=shutil.ignore_patterns("finetune", "export")))


def _plant_finetune(run: Path, pid: str, marker: Path, how: str) -> Path:
    point = load_run(run).point(pid)
    directory = run / "finetune"
    directory.mkdir(exist_ok=True)
    record = {"point_id": pid, "acc_after": 0.99, "policy": point.policy.to_dict(),
              "weights_format": "state_dict"}
    (directory / f"point-{pid}.json").write_text(json.dumps(record))
    weights = directory / f"point-{pid}.pt"
    _plant(weights, marker, how)
    return weights


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save"])
def test_export_finetuned_refuses_a_planted_pickle(run_copy: Path, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    _plant_finetune(run_copy, "1", marker, how)
    out = tmp_path / "m.onnx"
    line = assert_one_line_error(_cli("export", run_copy, "--point", "1", "--finetuned", "--out", out),
                            "point-1.pt", "could run code")
    assert "autocompress finetune" in line
    assert not marker.exists() and not out.exists()


def test_finetuned_weights_of_an_older_version_are_refused(run_copy: Path, tmp_path: Path) -> None:
    """A whole pickled module (what fine-tuning wrote before) is not unpickled either."""
    from autocompress.report._rebuild import rebuild_problem, scored_model
    from autocompress.report.finetune import latest_finetune, load_finetuned

    run = load_run(run_copy)
    _plant_finetune(run_copy, "1", tmp_path / "unused", "raw_pickle")
    weights = run_copy / "finetune" / "point-1.pt"
    torch.save(scored_model(rebuild_problem(run), run.point("1").policy), weights)
    record = latest_finetune(run_copy, "1")
    assert record is not None
    with pytest.raises(UserInputError, match="could run code"):
        load_finetuned(run, run.point("1"), record)
    weights.write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match="not a state_dict of plain tensors.*could run code"):
        load_finetuned(run, run.point("1"), record)
    torch.save({"fc1.weight": torch.zeros(3, 3)}, weights)  # tensors, but not this model's
    with pytest.raises(UserInputError, match="does not fit point 1"):
        load_finetuned(run, run.point("1"), record)
    record["policy"] = run.point("2").policy.to_dict()  # a record of another point's policy
    with pytest.raises(UserInputError, match="another policy than point 1"):
        load_finetuned(run, run.point("1"), record)


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save"])
def test_checkpoint_loader_refuses_a_planted_pickle(tmp_path: Path, how: str) -> None:
    from autocompress.models import create_model
    from autocompress.models._registry import load_checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    _plant(ckpt, marker, how)
    with pytest.raises(UserInputError):
        load_checkpoint(create_model("test_mlp"), ckpt)
    assert not marker.exists()


def test_search_checkpoint_and_config_do_not_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    _plant(ckpt, marker, "torch_save")
    assert_one_line_error(_cli("search", "--model", "test_mlp", "--checkpoint", ckpt, "--trials", "2",
                          "--out", tmp_path / "run"))
    assert not marker.exists()
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'model: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    assert_one_line_error(_cli("search", "--config", evil, "--out", tmp_path / "run2"))
    assert not marker.exists()


def _plant_in_sb3_zip(zip_path: Path, marker: Path) -> None:
    """Rewrite a stable-baselines3 save so that two of its cloudpickled entries run code."""
    import base64
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data = json.loads(members["data"])
    evil = base64.b64encode(pickle.dumps(Planted(marker))).decode()
    assert ":serialized:" in data["observation_space"]
    data["observation_space"] = {":type:": "<class 'x'>", ":serialized:": evil}
    data["planted_extra"] = {":type:": "<class 'x'>", ":serialized:": evil}
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)


def test_saved_rl_agent_with_planted_pickles_loads_without_running_them(tmp_path: Path) -> None:
    """SB3 saves non-JSON attributes as cloudpickle and unpickles them on load: the agent
    loader replaces every such entry by the freshly built agent's own value instead."""
    from autocompress.compression import CompressionSpace
    from autocompress.envs import Budget, CompressionEnv
    from autocompress.models import create_model
    from autocompress.policies import create_agent, load_agent

    model = create_model("test_convnet").eval()
    space = CompressionSpace.from_model(model, torch.randn(1, *model.input_shape), knobs=("prune",))
    base = space.costs(space.identity())

    def evaluate(policy: object) -> dict[str, float]:
        c = space.costs(policy)  # type: ignore[arg-type]
        return {**c, "acc": 0.5 + 0.5 * c["macs"] / base["macs"]}

    def env() -> CompressionEnv:
        return CompressionEnv(space=space, evaluate_fn=evaluate, budgets={"macs": Budget(0.5)})

    agent = create_agent("ddpg", env(), seed=0, net_arch=[16], warmup_episodes=2, batch_size=8)
    agent.learn(6)
    before = agent.propose()
    agent.save(tmp_path / "agent")
    marker = tmp_path / "pwned"
    _plant_in_sb3_zip(tmp_path / "agent" / "sb3_model.zip", marker)
    loaded = load_agent(tmp_path / "agent", env())
    assert not marker.exists()
    assert loaded.propose() == before  # the learned networks came back
    # AMC's exploration schedule continues where it stopped (it was a cloudpickled object).
    assert loaded.model.action_noise.episodes == agent.model.action_noise.episodes > 0
    loaded.learn(2)
    assert not marker.exists()
    (tmp_path / "agent" / "sb3_model.zip").write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match="not a saved stable-baselines3 model"):
        load_agent(tmp_path / "agent", env())
