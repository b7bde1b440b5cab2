"""SearchSpec: defaults, validation naming the key, YAML presets, CLI overrides, identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.errors import UserInputError
from autocompress.search import SearchSpec, list_searchers
from autocompress.search.spec import Objective

pytestmark = pytest.mark.timeout(60)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_embedded_default_and_match_default_yaml() -> None:
    spec = SearchSpec()
    assert spec.model == "resnet20" and spec.data == "digits" and spec.strategy == "ladder"
    assert [b.text for b in spec.budgets] == ["macs=50%"]
    assert spec.objectives == (Objective("acc", "maximize"), Objective("macs", "minimize"))
    assert SearchSpec.from_yaml(CONFIGS[0].parent / "default.yaml") == spec
    assert spec.run_dir == Path("runs/resnet20-digits-ladder-s0")


def test_round_to_is_auto_by_default_and_checked() -> None:
    assert SearchSpec().round_to == "auto" and SearchSpec(round_to="AUTO").round_to == "auto"
    assert SearchSpec(round_to=1).round_to == 1 and SearchSpec(round_to="16").round_to == 16
    for bad in (0, -8, 2.5, "fast", True):
        with pytest.raises(UserInputError, match=r"round_to=.*expected a positive integer or auto"):
            SearchSpec(round_to=bad)


def test_importance_is_checked_and_part_of_what_is_searched(tmp_path: Path) -> None:
    from autocompress.search.storage import prepare_run_dir, write_spec

    assert SearchSpec().importance == "l1"
    bn = SearchSpec.from_cli(None, {"importance": "bn", "out": str(tmp_path / "run")})
    assert bn.importance == "bn" and SearchSpec.from_dict(bn.to_dict()) == bn
    for bad in ("gamma", "", None, 1):
        with pytest.raises(UserInputError, match="importance"):
            SearchSpec(importance=bad)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match=r"importance='L1'; allowed: l1, l2, taylor, bn"):
        SearchSpec(importance="L1")
    # another importance is another search: a run directory refuses it (and a resume keeps its own)
    l1 = bn.replace(importance="l1")
    assert ("importance", "l1", "bn") in l1.differences(bn)
    (tmp_path / "run").mkdir()
    write_spec(tmp_path / "run", bn)
    with pytest.raises(UserInputError, match="differs in importance"):
        prepare_run_dir(l1)
    assert prepare_run_dir(l1.replace(resume=True)).importance == "bn"  # l1 was not given
    (tmp_path / "other").mkdir()
    write_spec(tmp_path / "other", l1.replace(out=str(tmp_path / "other")))
    with pytest.raises(UserInputError, match="--resume .* differs in importance"):
        prepare_run_dir(bn.replace(out=str(tmp_path / "other"), resume=True))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads(path: Path) -> None:
    spec = SearchSpec.from_yaml(path)
    assert spec.strategy in list_searchers()
    assert spec.trials >= 1
    assert SearchSpec.from_dict(spec.to_dict()) == spec  # JSON round trip


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"strategy": "annealing"}, "strategy 'annealing'"),
        ({"trials": 0}, "trials=0"),
        ({"trials": "many"}, "trials='many'"),
        ({"seed": -1}, "seed=-1"),
        ({"knobs": ["prune", "sparsty"]}, "knob 'sparsty'"),
        ({"objectives": ["acc", "beauty"]}, "objective 'beauty'"),
        ({"objectives": ["acc:up"]}, "direction 'up'"),
        ({"budgets": ["flops=fifty"]}, "fifty"),
        ({"budgets": ["macs=50%", "macs=40%"]}, "more than once"),
        ({"budgets": ["macs=50%"], "soft_budgets": ["macs=40%"]}, "both hard and soft"),
        ({"backend": "spark"}, "backend='spark'"),
        ({"workers": 0}, "workers=0"),
        ({"ray_address": "not an address"}, "ray_address"),
        ({"promote_fraction": 1.5}, "promote_fraction=1.5"),
        ({"max_prune": 1.0}, "max_prune=1.0"),
        ({"evaluator": {"val_sample": 10}}, "val_sample"),
        ({"evaluator": {"latency": "fast"}}, "latency='fast'"),
        ({"strategy": "nsga2", "strategy_settings": {"temperature": 1}}, "temperature"),
        ({"strategy": "ddpg", "strategy_settings": {"net_arch2": [4]}}, "net_arch2"),
        ({"resume": True, "force": True}, "choose one"),
        ({"colour": "blue"}, "unknown search setting 'colour'"),
        ({"multi_fidelity": "maybe"}, "multi_fidelity='maybe'"),
        ({"threads": 0}, "threads=0"),
    ],
)
def test_bad_values_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(UserInputError) as info:
        SearchSpec.from_dict(data)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_strategy_settings_are_checked_against_the_searcher() -> None:
    spec = SearchSpec.from_dict({"strategy": "ddpg",
                                 "strategy_settings": {"net_arch": [16], "warmup_episodes": 2}})
    assert spec.strategy_settings == {"net_arch": [16], "warmup_episodes": 2}
    ok = SearchSpec.from_dict({"strategy": "ddpg_bc", "strategy_settings": {"budget_range": [0.2, 0.4]}})
    assert ok.strategy_settings["budget_range"] == [0.2, 0.4]
    with pytest.raises(UserInputError, match="budget_range"):
        SearchSpec.from_dict({"strategy": "ddpg", "strategy_settings": {"budget_range": [0.2, 0.4]}})


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: resnet20\n  trials: [\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        SearchSpec.from_yaml(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: resnet20\ntrails: 10\n")
    with pytest.raises(UserInputError, match="unknown search setting 'trails'"):
        SearchSpec.from_yaml(unknown)
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("trials: [1, 2]\n")
    with pytest.raises(UserInputError, match="trials="):
        SearchSpec.from_yaml(wrong_type)
    with pytest.raises(UserInputError, match="does not exist"):
        SearchSpec.from_yaml(tmp_path / "missing.yaml")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(UserInputError, match="mapping"):
        SearchSpec.from_yaml(notmap)


def test_from_cli_merges_flags_over_a_preset() -> None:
    quick = CONFIGS[0].parent / "quick.yaml"
    spec = SearchSpec.from_cli(quick, {
        "budget": ["flops=500K", "latency=2ms"], "objective": ["acc", "latency"],
        "trials": 7, "seed": None, "strategy": "tpe", "set": ["n_startup_trials=3"],
        "evaluator_setting": ["val_samples=64"], "out": "runs/x", "knob": [],
        "ray-address": None, "backend": "ray", "workers": 2,
    })
    assert spec.model == "test_resnet"  # from the preset
    assert [b.text for b in spec.budgets] == ["flops=500K", "latency=2ms"]
    assert spec.objective_names == ["acc", "latency_ms"]
    assert spec.trials == 7 and spec.seed == 0 and spec.strategy == "tpe"
    assert spec.strategy_settings == {"n_startup_trials": 3}
    assert spec.evaluator.val_samples == 64
    assert spec.evaluator.low_fidelity_val_samples == 96  # the preset's value survives
    assert spec.evaluator.latency == "predicted"  # a latency budget switches latency on
    assert spec.run_dir == Path("runs/x") and spec.backend == "ray" and spec.workers == 2
    assert SearchSpec.from_cli(None, {}) == SearchSpec()
    with pytest.raises(UserInputError, match="KEY=VALUE"):
        SearchSpec.from_cli(None, {"set": ["population_size"]})


def test_identity_ignores_run_level_fields() -> None:
    a = SearchSpec(trials=10)
    b = SearchSpec(trials=99, workers=3, backend="ray", out="elsewhere", threads=4)
    assert a.identity_hash() == b.identity_hash()
    c = SearchSpec(strategy="tpe")
    assert a.identity_hash() != c.identity_hash()
    assert [d[0] for d in a.differences(c)] == ["strategy"]
    d = SearchSpec.from_dict({"evaluator": {"val_samples": 64}})
    assert [x[0] for x in a.differences(d)] == ["evaluator.val_samples"]


@pytest.mark.parametrize(
    ("strategy", "settings", "fragment"),
    [
        ("nsga2", {"population_size": -4}, "population_size=-4"),
        ("nsga2", {"population_size": "abc"}, "population_size='abc'"),
        ("nsga2", {"population_size": 1}, "population_size=1"),
        ("nsga2", {"mutation_prob": 5}, "mutation_prob=5"),
        ("nsga2", {"crossover_prob": "high"}, "crossover_prob='high'"),
        ("nsga2", {"budget_projection": "maybe"}, "budget_projection='maybe'"),
        ("tpe", {"n_startup_trials": -1}, "n_startup_trials=-1"),
        ("random", {"max_tries": 0}, "max_tries=0"),
        ("uniform", {"points": 0}, "points=0"),
        ("greedy", {"levels": [0.5, 2]}, "levels level=2"),
        ("ddpg", {"warmup_episodes": -3}, "warmup_episodes=-3"),
        ("ddpg", {"net_arch": []}, "net_arch=[]"),
        ("ddpg", {"tau": 0}, "tau=0"),
        ("ddpg", {"reward": "happiness"}, "happiness"),
        ("ddpg", {"reward": "lagrangian"}, "soft_budgets"),
        ("ddpg", {"reward_weights": {"acc": "x"}}, "reward_weights"),
        ("ppo", {"gamma": 2}, "gamma=2"),
        ("ppo", {"device": "tpu"}, "device='tpu'"),
        ("ddpg_bc", {"budget_range": [0.9, 0.1]}, "budget_range"),
    ],
)
def test_strategy_setting_values_are_checked(strategy: str, settings: dict, fragment: str) -> None:
    with pytest.raises(UserInputError) as info:
        SearchSpec.from_dict({"strategy": strategy, "strategy_settings": settings})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_strategy_setting_values_are_normalised() -> None:
    spec = SearchSpec.from_cli(None, {"strategy": "nsga2", "set": ["population_size=8", "mutation_prob=0.1"]})
    assert spec.strategy_settings == {"population_size": 8, "mutation_prob": 0.1}
    lag = SearchSpec.from_dict({"strategy": "ddpg", "budgets": [], "soft_budgets": ["macs=50%"],
                                "strategy_settings": {"reward": "lagrangian"}})
    assert lag.strategy_settings == {"reward": "lagrangian"}


@pytest.mark.parametrize("key", ["budgets", "soft_budgets"])
def test_relative_budgets_above_100_percent_are_refused(key: str) -> None:
    with pytest.raises(UserInputError, match="at most 100%"):
        SearchSpec.from_dict({"budgets": [], key: ["macs=200%"]})
    assert SearchSpec.from_dict({"budgets": [], key: ["macs=100%"]})


def test_preflight_checks_paths_and_storage_without_writing(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    cases = [
        ({"checkpoint": str(tmp_path / "ckpt")}, "is a directory"),
        ({"checkpoint": str(tmp_path / "none.pt")}, "does not exist"),
        ({"data": "cifar10", "data_root": str(tmp_path / "nope")}, "does not exist"),
        ({"data": f"imagefolder:{tmp_path / 'nope'}"}, "is not a directory"),
        ({"out": "/sys/autocompress-run"}, "not writable"),
        ({"storage": "bogus"}, "not allowed"),
        ({"storage": "sqlite://"}, "in-memory"),
        ({"storage": "sqlite:////no/such/dir/x.db"}, "does not exist"),
        ({"storage": "postgresql://u@127.0.0.1:1/db"}, "cannot be opened"),
    ]
    for settings, fragment in cases:
        spec = SearchSpec.from_dict({"out": str(tmp_path / "run"), **settings})
        with pytest.raises(UserInputError, match=fragment):
            spec.preflight()
    SearchSpec.from_dict({"out": str(tmp_path / "run"), "storage": f"sqlite:///{tmp_path}/s.db"}).preflight()
    SearchSpec.from_dict({"out": str(tmp_path / "run"), "storage": "sqlite"}).preflight()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing created


def test_config_that_is_not_text(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    with pytest.raises(UserInputError, match="not UTF-8"):
        SearchSpec.from_yaml(binary)
    tag = tmp_path / "tag.yaml"
    tag.write_text(f"model: !!python/object/apply:os.mkdir [{str(tmp_path / 'ran')!r}]\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        SearchSpec.from_yaml(tag)
    assert not (tmp_path / "ran").exists()
