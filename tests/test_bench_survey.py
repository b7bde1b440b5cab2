"""benchmarks/bench_survey.py: every survey recipe loads and becomes the policy it describes; the
``--quick`` run on digits prints one row per recipe with really smaller compressed models."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _bench import load_benchmark

from autocompress.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    return load_benchmark("bench_survey", fresh=False)


RECIPES = sorted(p.stem for p in (ROOT / "configs" / "survey").glob("*.yaml"))


def test_every_table_of_the_survey_has_its_recipes() -> None:
    bench = _bench()
    recipes = bench.load_recipes()
    assert [r.name for r in recipes] == sorted(RECIPES, key=lambda n: (int(n[1]), n))
    assert sum(r.table == 5 for r in recipes) == 8
    assert {r.schedule for r in recipes} == {"finetune", "scratch", "inq"}
    assert {r.search_budget for r in recipes if r.table == 7} == {"size"}
    for r in recipes:  # every recipe carries the survey's figures it is compared with
        assert r.survey["top1_before"] > r.survey["top1_after"] - 5


@pytest.mark.timeout(120)
def test_recipes_become_the_policies_they_describe() -> None:
    import torch

    from autocompress.compression import CompressionSpace
    from autocompress.models import create_model

    bench = _bench()

    class _Problem:  # what recipe_policy reads: the base model and its space
        def __init__(self, name: str, importance: str) -> None:
            torch.manual_seed(0)
            self.model = create_model(name).eval()
            self.space = CompressionSpace.from_model(self.model, knobs=bench.COMPRESS_KNOBS,
                                                     importance=importance)

    plain, bnd, slim = _Problem("alexnet_cifar", "l1"), _Problem("alexnet_cifar_bnd", "l1"), \
        _Problem("alexnet_cifar_bnd", "bn")
    p = bench.recipe_policy(bench.load_recipe(ROOT / "configs/survey/t5_l1_bnd_first30_other50.yaml"), bnd)
    assert p["features.0"].prune == 0.3 and p["features.4"].prune == 0.5 and p["features.14"].prune == 0.5
    assert p["classifier.1"].prune == 0.0  # the survey ranks convolutional filters only
    p = bench.recipe_policy(bench.load_recipe(ROOT / "configs/survey/t5_magnitude_conv60_fc70.yaml"), plain)
    assert p["features.8"].sparsity == 0.6 and p["classifier.4"].sparsity == 0.7 and p["features.8"].prune == 0
    p = bench.recipe_policy(bench.load_recipe(ROOT / "configs/survey/t7_bnn_1bit.yaml"), plain)
    assert {a.w_bits for a in p.layers.values()} == {1}
    hinge = bench.load_recipe(ROOT / "configs/survey/t7_bnn_1bit_hinge.yaml")
    assert hinge.loss == "hinge" and bench.recipe_policy(hinge, plain) == p
    inq = bench.load_recipe(ROOT / "configs/survey/t7_inq_5bit.yaml")
    assert inq.knobs == bench.POW2_KNOBS and inq.schedule == "inq"
    bnd.space = CompressionSpace.from_model(bnd.model, knobs=inq.knobs, importance="l1")
    p = bench.recipe_policy(inq, bnd)
    assert {(a.pow2_bits, a.w_bits) for a in p.layers.values()} == {(5, 32)}  # INQ's grid, every layer
    p = bench.recipe_policy(bench.load_recipe(ROOT / "configs/survey/t5_slimming_50.yaml"), slim)
    n = {"features.0": 64, "features.4": 192, "features.8": 384, "features.11": 256, "features.14": 256}
    removed = sum(round(p[k].prune * v) for k, v in n.items())
    assert removed == int(0.5 * sum(n.values()))  # 50% of all conv channels, network-wide
    assert p["classifier.1"].prune == 0.0


def test_bad_recipes_are_refused_with_one_line(tmp_path: Path) -> None:
    bench = _bench()
    cases = {
        "unknown_key": ("table: 5\nrow: x\nmodel: alexnet_cifar\nprun: {conv: 0.3}\n", "unknown key 'prun'"),
        "selector": ("table: 5\nrow: x\nmodel: alexnet_cifar\nprune: {fc: 0.3}\n", "selector 'fc'"),
        "bits": ("table: 7\nrow: x\nmodel: alexnet_cifar\nw_bits: {all: 7}\n", "w_bits.all=7"),
        "inq_low": ("table: 7\nrow: x\nmodel: alexnet_cifar\nw_bits: {all: 1}\nschedule: inq\n"
                    "inq_steps: [0.5, 1.0]\n", "inq needs w_bits of 3 or more"),
        "model": ("table: 5\nrow: x\nmodel: alexnet\n", "model='alexnet'"),
        "two_grids": ("table: 7\nrow: x\nmodel: alexnet_cifar\nw_bits: {all: 8}\npow2_bits: {all: 5}\n",
                      "w_bits and pow2_bits both"),
        "pow2_bits": ("table: 7\nrow: x\nmodel: alexnet_cifar\npow2_bits: {conv: 1}\n", "pow2_bits.conv=1"),
        "loss": ("table: 7\nrow: x\nmodel: alexnet_cifar\nloss: l2\n", "loss='l2'; allowed: ce, hinge"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(UserInputError, match=match):
            bench.load_recipe(path)
    with pytest.raises(UserInputError, match="--recipes 'nope' is unknown"):
        bench.load_recipes(["nope"])


@pytest.mark.timeout(120)
def test_inq_schedule_ends_on_the_powers_of_two_grid(tmp_path: Path) -> None:
    """INQ on a tiny model: the first stage fixes each layer's largest half on the grid of the
    full-precision layer, the rest is retrained, and the last stage puts every weight on that
    grid, which ``compress`` then leaves as it is; with the single step 1.0 it is ``compress``."""
    import torch

    from autocompress.compression import CompressionSpace, compress
    from autocompress.compression.quantize import pow2_levels, pow2_weight
    from autocompress.data import load_data
    from autocompress.models import create_model

    bench = _bench()

    class _Problem:  # what Bench.inq and Bench.finetune_ read
        model_name = "test_mlp"

        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = create_model("test_mlp").eval()
            self.data = load_data("digits", input_shape=(1, 8, 8), seed=0)
            self.space = CompressionSpace.from_model(self.model, knobs=bench.POW2_KNOBS)

    problem = _Problem()
    args = bench.parse_args(["--quick", "--train-samples", "64", "--out", str(tmp_path)])
    b = bench.Bench(args)
    policy = problem.space.uniform(pow2_bits=4)
    direct = compress(problem.model, policy, space=problem.space)
    small, _ = b.inq(problem, policy, [0.5, 1.0])
    one, _ = b.inq(problem, policy, [1.0])
    changed = 0
    for n in policy.layers:
        w0 = problem.model.get_submodule(n).weight.detach()
        q, q0 = small.get_submodule(n).weight.detach(), direct.get_submodule(n).weight.detach()
        assert torch.equal(q, pow2_weight(q, 4, pow2_levels(w0, 4)))  # on the original layer's grid
        top = torch.argsort(w0.abs().flatten(), descending=True, stable=True)[: (w0.numel() + 1) // 2]
        assert torch.equal(q.flatten()[top], q0.flatten()[top])  # frozen at the first stage
        changed += int((q != q0).sum())
        assert torch.equal(one.get_submodule(n).weight, q0)
    assert changed > 0  # the other half was retrained before it was quantized


def _readme_commands() -> list[list[str]]:
    """The ``bench_survey.py`` command lines of benchmarks/README.md's survey section."""
    import re
    import shlex

    text = (ROOT / "benchmarks" / "README.md").read_text()
    section = text[text.index("## The survey's Tables 5–7"):]
    section = section[:section.index("\n## ", 1)]
    lines = re.findall(r"```\n(.*?)```", section, flags=re.S)
    cmds = [shlex.split(line) for block in lines for line in block.replace("\\\n", " ").splitlines()
            if "bench_survey.py" in line]
    return [c[c.index("benchmarks/bench_survey.py") + 1:] for c in cmds]


def test_readme_commands_parse() -> None:
    bench = _bench()
    cmds = _readme_commands()
    assert len(cmds) == 2
    full, quick = (bench.parse_args(c) for c in cmds)
    assert full.data == "imagefolder:~/.cache/autocompress/data/cifar10" and not full.quick
    assert full.checkpoint_dir.startswith("~/.cache/autocompress/bench")
    assert quick.quick and quick.data == "digits" and quick.finetune_epochs == 1


#: One recipe per schedule and search budget, all on one base model (the test trains it once).
SUBSET = ["t5_l1_bnd_first0_other60", "t5_magnitude_bnd_conv60_fc70", "t6_scratch_bnd_first0_other60",
          "t7_inq_5bit"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_run_prints_its_rows_and_really_compresses(tmp_path: Path, capsys: Any) -> None:
    """The README's ``--quick`` line on four recipes, with even smaller counts."""
    bench = _bench()
    quick = _readme_commands()[1]
    quick = [a for a in quick if not a.startswith("/tmp/")]
    if "--json" in quick:
        quick.remove("--json")
    out_json = tmp_path / "survey.json"
    result = bench.main([*quick, "--out", str(tmp_path / "out"), "--json", str(out_json),
                         "--recipes", *SUBSET, "--base-epochs", "1", "--train-samples", "128",
                         "--search-trials", "2"])
    printed = capsys.readouterr().out
    assert json.loads(out_json.read_text())["markdown"] == result["markdown"]
    rows = {r["recipe"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(SUBSET)
    for name, r in rows.items():
        assert f"| {r['row']} |" in printed or r["table"] == 6  # one table row per recipe
        base, after = r["base"], r["after"]
        assert 0 <= after["top1"] <= after["top5"] <= 100
        # counted on the compressed modules, and what the space predicts
        assert after["params"] == r["predicted"]["params"]
        if r["table"] == 7:
            assert after["size_bytes"] < base["size_bytes"] / 5  # 5-bit weights and their scales
        else:
            assert after["params"] < 0.45 * base["params"]
        if name.startswith(("t5_l1", "t6")):
            assert after["flops"] < 0.4 * base["flops"]
        if name.startswith("t5_magnitude"):
            assert after["flops"] == base["flops"]  # dense kernels: zeros cost the same
        s = r.get("searched")
        if s is not None and "after" in s:
            metric, value = s["budget"].split("=")
            assert s["after"][bench.SEARCH_BUDGETS[metric]] <= float(value)
    t6 = rows["t6_scratch_bnd_first0_other60"]
    assert t6["scratch"]["params"] == t6["after"]["params"] and "same architecture trained from scratch" in printed
    assert "**Table 5**" in printed and "**Table 6**" in printed and "**Table 7**" in printed
    # a second run with the same settings reuses every finished row; another setting recomputes
    kept = sorted(p.name for p in (tmp_path / "out" / "rows").glob("*.json"))
    assert len(kept) == len(SUBSET)
    again = bench.main([*quick, "--out", str(tmp_path / "out"), "--recipes", *SUBSET, "--base-epochs", "1",
                        "--train-samples", "128", "--search-trials", "2"])
    assert capsys.readouterr().out.count(": reusing ") == len(SUBSET)
    assert again["rows"] == json.loads(json.dumps(result["rows"], default=str))
    bench_args = bench.parse_args([*quick, "--out", str(tmp_path / "out"), "--base-epochs", "1",
                                   "--train-samples", "128", "--search-trials", "3"])
    bench.check_args(bench_args)
    other = bench.Bench(bench_args)
    recipe = bench.load_recipes([SUBSET[0]])[0]
    assert other.row_path(recipe).name not in kept and other.cached_row(recipe) is None
