"""Benchmark: the compression survey's Tables 5-7 (AlexNet, CIFAR-10) reproduced, then searched.

"A comprehensive survey on model compression and acceleration" (Choudhary et al., Artif. Intell.
Rev. 2020), section 6, compresses a CIFAR AlexNet (2.87M parameters) with L1-norm filter pruning,
magnitude pruning, network slimming (Table 5), training the pruned architecture from scratch
(Table 6), INQ and binary weights (Table 7). Each recipe is one file of ``configs/survey/``
(``Recipe`` below reads it; nothing in it is executed). For every recipe this script

1. trains the base model it starts from once (``autocompress.training.train_model``, what
   ``autocompress train`` runs; ``slimming_l1`` for network slimming) or loads it from
   ``--checkpoint-dir`` (``alexnet_cifar.pt``, ``alexnet_cifar_bnd.pt``,
   ``alexnet_cifar_bnd-slim.pt``, each with its ``.json`` training record);
2. turns the recipe into a ``CompressionPolicy`` (per layer ``prune`` / ``sparsity`` / ``w_bits`` /
   ``pow2_bits``;
   network slimming's global |gamma| threshold by ``prune.global_bn_ratios``), compresses the base
   as the engine's evaluator scores it (compress with reconstruction, BatchNorm recalibration)
   and fine-tunes it with the engine's training loop (``autocompress.distill``, the settings of
   ``finetune_point``; cross-entropy as the survey's recipes, ``--kd`` distils from the base);
   Table 6 also trains the pruned architecture from fresh weights for the base's epochs, Table 7's
   INQ rows put a growing share of the weights on INQ's powers-of-two grid stage by stage, its
   BNN hinge-loss row fine-tunes with the squared hinge loss (``distill.hinge_loss``);
3. runs a short ``ladder`` search (``run_search``) at the recipe's FLOPs (filter pruning), params
   (magnitude pruning) or weight size (quantization), fine-tunes its best feasible point the same
   way, and reports it beside the recipe;
4. prints markdown tables (survey figure | our reproduction | the searched policy), params and
   FLOPs counted on the compressed modules (FLOPs = 2 x MACs), top-1 / top-5 on the test split
   (the validation split when the data has none), and writes every figure to ``--json``.

Each finished recipe's row is kept in ``OUT/rows/`` under a hash of its recipe, base checkpoint
and settings, so a stopped run, started again with the same command, goes on with the recipe it
stopped in (``--fresh`` recomputes every row).

CIFAR-10 as benchmarks/README.md reports it (about 30 minutes for the three base models, which are
trained once and kept in the checkpoint directory, then about an hour on 2 cores)::

    .venv/bin/python benchmarks/bench_survey.py --data imagefolder:~/.cache/autocompress/data/cifar10 \\
        --checkpoint-dir ~/.cache/autocompress/bench/survey --base-epochs 20 --finetune-epochs 3 \\
        --search-trials 100 --out ~/.cache/autocompress/bench/survey/out --json /tmp/bench-survey.json

Smoke run on the bundled digits (about 10 minutes on 2 shared cores; tiny epochs, 3 candidates
per search)::

    .venv/bin/python benchmarks/bench_survey.py --quick --json /tmp/bench-survey-quick.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "configs" / "survey"
DEFAULT_DATA = "imagefolder:~/.cache/autocompress/data/cifar10"
SCHEDULES = ("finetune", "scratch", "inq")
SELECTORS = ("first_conv", "conv", "linear", "all")
SEARCH_BUDGETS = {"flops": "flops", "params": "params", "size": "size_bytes"}
SURVEY_KEYS = ("top1_before", "top5_before", "top1_after", "top5_after", "top1_scratch",
               "top5_scratch", "params_before", "params_after", "flops_before", "flops_after")
#: Peak learning rate of base training per model (the model without BatchNorm needs a lower one).
BASE_LR = {"alexnet_cifar": 0.01, "alexnet_cifar_bnd": 0.05}
#: Fine-tune learning rate per model: ``finetune_point``'s 0.01 for the BatchNorm model (a fifth of
#: its base rate); the same fifth for the model without BatchNorm, which diverges at 0.01.
FINETUNE_LR = {"alexnet_cifar": 0.002, "alexnet_cifar_bnd": 0.01}
COMPRESS_KNOBS = ("prune", "w_bits", "sparsity")
#: The space of a recipe on INQ's powers-of-two grid (``pow2_bits`` excludes ``w_bits``).
POW2_KNOBS = ("prune", "sparsity", "pow2_bits")
SEARCH_KNOBS = ("prune", "w_bits", "sparsity", "pow2_bits")
LOSSES = ("ce", "hinge")
_LAYER_KNOBS = ("prune", "sparsity", "w_bits", "pow2_bits")


def _error(msg: str) -> Exception:
    from autocompress.errors import UserInputError

    return UserInputError(msg)


# --- recipes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One row of the survey's Tables 5-7 as data: the base model, per-layer knobs, the schedule.

    ``prune``, ``sparsity``, ``w_bits`` and ``pow2_bits`` (INQ's powers-of-two grid; a recipe
    uses it or ``w_bits``) map a layer selector (``first_conv``: the first convolution; ``conv``:
    every convolution, or every other one when ``first_conv`` is given; ``linear``: every fully
    connected layer that has the knob; ``all``) to the knob's value.
    ``global_bn_prune``: network slimming's share of all BatchNorm-normalised channels removed
    network-wide. ``schedule``: ``finetune``, ``scratch`` (Table 6: also train the pruned
    architecture from fresh weights) or ``inq`` (incremental quantization over ``inq_steps``).
    ``loss``: the fine-tune's loss, ``ce`` (cross-entropy) or ``hinge`` (BNN's squared hinge loss).
    ``search``: the budget metric (``flops``, ``params``, ``size``) and knobs of the searched row.
    ``survey``: the survey's figures (accuracies in %, params and FLOPs in millions).
    """

    name: str
    table: int
    row: str
    model: str
    importance: str = "l1"
    slimming_l1: float | None = None
    prune: Mapping[str, float] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    w_bits: Mapping[str, int] = field(default_factory=dict)
    pow2_bits: Mapping[str, int] = field(default_factory=dict)
    global_bn_prune: float | None = None
    schedule: str = "finetune"
    inq_steps: tuple[float, ...] = ()
    loss: str = "ce"
    search_budget: str | None = None
    search_knobs: tuple[str, ...] = ()
    survey: Mapping[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from autocompress.compression.knobs import ALLOWED_BITS
        from autocompress.compression.pow2 import POW2_BITS
        from autocompress.compression.prune import IMPORTANCES
        from autocompress.models import list_models

        where = f"recipe {self.name!r}"
        if self.table not in (5, 6, 7):
            raise _error(f"{where}: table={self.table!r}; allowed: 5, 6, 7")
        if self.model not in list_models():
            raise _error(f"{where}: model={self.model!r}; allowed: a registered model (alexnet_cifar, ...)")
        if self.importance not in IMPORTANCES:
            raise _error(f"{where}: importance={self.importance!r}; allowed: {', '.join(IMPORTANCES)}")
        if self.schedule not in SCHEDULES:
            raise _error(f"{where}: schedule={self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.loss not in LOSSES:
            raise _error(f"{where}: loss={self.loss!r}; allowed: {', '.join(LOSSES)}")
        for knob in _LAYER_KNOBS:
            table = getattr(self, knob)
            if not isinstance(table, Mapping):
                raise _error(f"{where}: {knob} must map layer selectors to values, got {table!r}")
            choices = {"w_bits": ALLOWED_BITS, "pow2_bits": POW2_BITS}.get(knob)
            for sel, v in table.items():
                if sel not in SELECTORS:
                    raise _error(f"{where}: {knob} selector {sel!r}; allowed: {', '.join(SELECTORS)}")
                ok = (v in choices) if choices else (
                    isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v < 1.0)
                if not ok:
                    allowed = f"one of {choices}" if choices else "0 <= value < 1"
                    raise _error(f"{where}: {knob}.{sel}={v!r}; allowed: {allowed}")
        if self.w_bits and self.pow2_bits:
            raise _error(f"{where}: w_bits and pow2_bits both set the weights' grid; allowed: one of them")
        if self.global_bn_prune is not None and not 0.0 < self.global_bn_prune < 1.0:
            raise _error(f"{where}: global_bn_prune={self.global_bn_prune!r}; allowed: 0 < value < 1")
        if self.global_bn_prune is not None and self.importance != "bn":
            raise _error(f"{where}: global_bn_prune needs importance: bn (got {self.importance!r})")
        if self.schedule == "inq":
            steps = list(self.inq_steps)
            if not steps or steps != sorted(steps) or steps[-1] != 1.0 or steps[0] <= 0.0:
                raise _error(f"{where}: inq_steps={steps!r}; allowed: increasing shares ending at 1.0")
            if not self.pow2_bits and (not self.w_bits or min(self.w_bits.values()) < 3):
                raise _error(f"{where}: schedule inq needs w_bits of 3 or more (the per-channel grid) "
                             "or pow2_bits (INQ's powers of two)")
        if self.search_budget is not None and self.search_budget not in SEARCH_BUDGETS:
            raise _error(f"{where}: search budget {self.search_budget!r}; allowed: {', '.join(SEARCH_BUDGETS)}")
        for k in self.search_knobs:
            if k not in SEARCH_KNOBS:
                raise _error(f"{where}: search knob {k!r}; allowed: {', '.join(SEARCH_KNOBS)}")
        for k in self.survey:
            if k not in SURVEY_KEYS:
                raise _error(f"{where}: survey figure {k!r}; allowed: {', '.join(SURVEY_KEYS)}")

    @property
    def base_key(self) -> str:
        """File stem of the base model this recipe starts from."""
        return self.model + ("-slim" if self.slimming_l1 else "")

    @property
    def knobs(self) -> tuple[str, ...]:
        """The knobs of the space the recipe's policy lives in."""
        return POW2_KNOBS if self.pow2_bits else COMPRESS_KNOBS


_RECIPE_KEYS = {"table", "row", "model", "importance", "slimming_l1", "prune", "sparsity", "w_bits",
                "pow2_bits", "global_bn_prune", "schedule", "inq_steps", "loss", "search", "survey"}


def load_recipe(path: str | Path) -> Recipe:
    """Read one ``configs/survey/*.yaml`` recipe; unknown keys are errors."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _error(f"recipe {str(path)!r} does not load: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise _error(f"recipe {str(path)!r} is not a mapping")
    unknown = sorted(set(raw) - _RECIPE_KEYS)
    if unknown:
        raise _error(f"recipe {str(path)!r}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_RECIPE_KEYS))}")
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict) or set(search) - {"budget", "knobs"}:
        raise _error(f"recipe {str(path)!r}: search must be {{budget: ..., knobs: [...]}}, got {search!r}")
    try:
        return Recipe(name=path.stem, search_budget=search.get("budget"),
                      search_knobs=tuple(search.get("knobs") or ()),
                      inq_steps=tuple(raw.pop("inq_steps", ()) or ()),
                      **{k: v for k, v in raw.items() if v is not None or k == "slimming_l1"})
    except TypeError as exc:
        raise _error(f"recipe {str(path)!r}: {exc}") from None


def load_recipes(names: Sequence[str] | None = None, directory: Path = RECIPE_DIR) -> list[Recipe]:
    """Every recipe of ``directory`` (sorted by table then name), or the ones named."""
    paths = sorted(directory.glob("*.yaml"))
    known = [p.stem for p in paths]
    if names:
        for n in names:
            if n not in known:
                raise _error(f"--recipes {n!r} is unknown; allowed: {', '.join(known)}")
        paths = [p for p in paths if p.stem in names]
    return sorted((load_recipe(p) for p in paths), key=lambda r: (r.table, r.name))


def recipe_policy(recipe: Recipe, problem: Any) -> Any:
    """The recipe as a ``CompressionPolicy`` over ``problem``'s space (validated)."""
    from autocompress.compression import CompressionPolicy, LayerAction
    from autocompress.compression.prune import global_bn_ratios

    space = problem.space
    convs = [p.name for p in space.decision_points if p.kind == "conv"]
    first = convs[0] if convs else None

    def pick(table: Mapping[str, Any], point: Any) -> Any:
        if point.kind == "conv":
            if point.name == first and "first_conv" in table:
                return table["first_conv"]
            return table.get("conv", table.get("all"))
        if point.kind == "linear":
            return table.get("linear", table.get("all"))
        return table.get("all")

    ratios = (global_bn_ratios(problem.model, space.groups, recipe.global_bn_prune, space.max_prune)
              if recipe.global_bn_prune is not None else {})
    layers = {}
    for point in space.decision_points:
        kw: dict[str, Any] = {}
        for knob in _LAYER_KNOBS:
            v = pick(getattr(recipe, knob), point)
            if v is not None and knob in point.knobs:
                kw[knob] = v
        if point.name in ratios:
            kw["prune"] = ratios[point.name]
        layers[point.name] = LayerAction(**kw)
    policy = CompressionPolicy(layers)
    space.validate(policy)
    return policy


# --- settings --------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line settings; ``--quick`` shrinks every count for a smoke run on digits."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=f"imagefolder:PATH with train/ and test/ (default "
                   f"{DEFAULT_DATA}; quick: digits)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="base models MODEL[-slim].pt: loaded when present, else trained and written "
                        "(default ~/.cache/autocompress/bench/survey; quick: OUT/base)")
    p.add_argument("--recipes", nargs="+", default=None, help="recipe names (configs/survey/*.yaml stems)")
    p.add_argument("--base-epochs", type=int, default=None, help="base-model epochs (30; quick 4)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tune epochs of every compressed model, per INQ stage (5; quick 1)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tune learning rate (default per model: 0.002 without BatchNorm, 0.01 with)")
    p.add_argument("--kd", action="store_true",
                   help="fine-tune with knowledge distillation from the base (alpha 0.9, T 4) instead "
                        "of cross-entropy (the survey's recipes fine-tune on the labels)")
    p.add_argument("--search-trials", type=int, default=None, help="ladder candidates per search (30; quick 3)")
    p.add_argument("--no-search", action="store_true", help="recipes only")
    p.add_argument("--train-samples", type=int, default=None,
                   help="training samples used (all; quick 512)")
    p.add_argument("--val-samples", type=int, default=None,
                   help="validation samples a searched candidate is scored on (1000; quick 128)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (64; quick 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training and fine-tunes)")
    p.add_argument("--out", default="/tmp/bench-survey", help="search run directories, evaluation cache")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run on digits with tiny epochs")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every recipe (default: a recipe whose row OUT/rows/ holds for the same "
                        "settings and base checkpoint is reused, so a stopped run goes on where it stopped)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"data": "digits" if q else DEFAULT_DATA, "base_epochs": 4 if q else 30,
                "finetune_epochs": 1 if q else 5, "search_trials": 3 if q else 30,
                "train_samples": 512 if q else None, "val_samples": 128 if q else 1000,
                "batch_size": 32 if q else 64,
                "checkpoint_dir": str(Path(args.out) / "base") if q else "~/.cache/autocompress/bench/survey"}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def check_args(args: argparse.Namespace) -> list[Recipe]:
    """Refuse bad settings with one line each, before anything is trained or written."""
    from autocompress.devices import resolve_device

    for name in ("base_epochs", "finetune_epochs", "search_trials", "val_samples", "batch_size", "threads"):
        v = getattr(args, name)
        if isinstance(v, bool) or v < 1:
            raise _error(f"--{name.replace('_', '-')}={v}; allowed: an integer >= 1")
    if args.train_samples is not None and args.train_samples < 1:
        raise _error(f"--train-samples={args.train_samples}; allowed: an integer >= 1")
    if args.finetune_lr is not None and not (math.isfinite(args.finetune_lr) and 0 < args.finetune_lr <= 10):
        raise _error(f"--finetune-lr={args.finetune_lr}; allowed: 0 < lr <= 10")
    if args.data.startswith("imagefolder:"):
        folder = Path(args.data.split(":", 1)[1]).expanduser()
        if not folder.is_dir():
            raise _error(f"--data {args.data!r}: {str(folder)!r} is not a directory")
        args.data = "imagefolder:" + str(folder.resolve())
    resolve_device(args.device, "--device")
    args.checkpoint_dir = str(Path(args.checkpoint_dir).expanduser())
    return load_recipes(args.recipes)


# --- measuring -------------------------------------------------------------------------------
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, example: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 (%) and params, FLOPs (2 x MACs) and weight bytes counted on ``model``."""
    from autocompress.compression import count_macs, count_params, count_size_bytes
    from autocompress.evaluators.accuracy import topk_correct
    from autocompress.metrics import flops_from_macs

    acc = topk_correct(model.eval(), x, y, ks=(1, 5))
    return {"top1": 100 * acc[1], "top5": 100 * acc[5], "params": float(count_params(model)),
            "flops": flops_from_macs(count_macs(model.cpu(), example)),
            "size_bytes": float(count_size_bytes(model))}


def _subset(ds: Any, n: int | None, seed: int) -> Any:
    from torch.utils.data import Subset

    if n is None or n >= len(ds):
        return ds
    pick = sorted(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    if isinstance(ds, Subset):
        return Subset(ds.dataset, [ds.indices[i] for i in pick])
    return Subset(ds, pick)


class Bench:
    """Base models, problems and the evaluation split, each built once and shared by recipes."""

    def __init__(self, args: argparse.Namespace) -> None:
        from autocompress.devices import resolve_device
        from autocompress.evaluators import EvaluatorConfig

        self.args = args
        self.device = resolve_device(args.device)
        self.ev_config = EvaluatorConfig(val_samples=args.val_samples, latency="none", seed=args.seed)
        self._problems: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self.bases: dict[str, dict[str, Any]] = {}
        self._digests: dict[Path, str] = {}
        self.out = Path(args.out)

    # the data every training step sees: the problem's train split, cut to --train-samples
    def train_data(self, problem: Any) -> Any:
        data = problem.data
        return dataclasses.replace(data, train=_subset(data.train, self.args.train_samples, self.args.seed))

    def eval_split(self, problem: Any) -> tuple[str, torch.Tensor, torch.Tensor]:
        split = "test" if problem.data.test is not None else "val"
        x, y = problem.data.tensors(split)
        return split, x, y

    def checkpoint(self, recipe: Recipe) -> Path:
        """The recipe's base model: loaded from ``--checkpoint-dir``, or trained and written there."""
        from autocompress.data import load_data
        from autocompress.models import create_model, default_input_shape
        from autocompress.training import TrainConfig, save_checkpoint, train_model

        path = Path(self.args.checkpoint_dir) / f"{recipe.base_key}.pt"
        if recipe.base_key in self.bases:
            return path
        if not path.exists():
            shape = default_input_shape(recipe.model)
            data = load_data(self.args.data, input_shape=shape, seed=self.args.seed)
            data = dataclasses.replace(data, train=_subset(data.train, self.args.train_samples, self.args.seed))
            torch.manual_seed(self.args.seed)
            net = create_model(recipe.model, num_classes=data.num_classes)
            cfg = TrainConfig(epochs=self.args.base_epochs, lr=BASE_LR.get(recipe.model, 0.05),
                              batch_size=self.args.batch_size, seed=self.args.seed,
                              slimming_l1=recipe.slimming_l1)
            print(f"training base {recipe.base_key} ({cfg.epochs} epochs) -> {path}", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            res = train_model(net, data, cfg, state_path=path.with_name(path.name + ".partial"),
                              device=self.device)
            save_checkpoint(net, path, {
                "model": recipe.model, "data": self.args.data, "seed": self.args.seed,
                "train": {**dataclasses.asdict(cfg), "augment": res.augment, "schedule": res.schedule},
                "train_samples": self.args.train_samples, "val_acc": res.val_acc,
                "test_acc": res.test_acc, "seconds": round(res.seconds, 2), "history": res.history})
            path.with_name(path.name + ".partial").unlink(missing_ok=True)
        record = {}
        try:
            record = json.loads(path.with_name(path.name + ".json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        self.bases[recipe.base_key] = {
            "checkpoint": str(path), "epochs": (record.get("train") or {}).get("epochs"),
            "lr": (record.get("train") or {}).get("lr"), "seconds": record.get("seconds"),
            "slimming_l1": recipe.slimming_l1}
        return path

    def problem(self, recipe: Recipe, knobs: Sequence[str] = COMPRESS_KNOBS) -> Any:
        """The engine's ``Problem`` of the recipe's base model (built once per space)."""
        from autocompress.problem import Problem

        key = (recipe.base_key, recipe.importance, tuple(knobs))
        if key not in self._problems:
            ckpt = self.checkpoint(recipe)
            self._problems[key] = Problem.build(
                recipe.model, checkpoint=ckpt, data=self.args.data, seed=self.args.seed,
                knobs=tuple(knobs), round_to=1, importance=recipe.importance,
                evaluator=self.ev_config, cache_dir=self.out / "cache", progress=False,
                device=self.args.device)
        return self._problems[key]

    # --- training steps --------------------------------------------------------------------
    def finetune_(self, student: nn.Module, teacher: nn.Module | None, problem: Any, epochs: int,
                  around: Any = None, loss: str = "ce") -> float:
        """Fine-tune in place with the engine's training loop (``distill``, ``finetune_point``'s
        settings: SGD Nesterov, cosine to 0; cross-entropy or ``loss="hinge"`` (BNN's squared hinge
        loss), or KD alpha 0.9 T 4 with ``--kd``), then snap quantized weights to their grid."""
        from autocompress.distill import distill, hinge_loss
        from autocompress.report.finetune import snap_quantized_weights_
        from autocompress.training import seed_everything

        t0 = time.perf_counter()
        data = self.train_data(problem)
        seed_everything(self.args.seed)
        loader = data.loader("train", self.args.batch_size, shuffle=True, seed=self.args.seed)
        params = [p for p in student.parameters() if p.requires_grad]
        lr = self.args.finetune_lr or FINETUNE_LR.get(problem.model_name, 0.01)
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
        dev = self.device
        student.to(dev)
        if teacher is not None:
            teacher.to(dev)
        for _ in range(epochs):
            batches = loader if around is None else around(loader)
            distill(student, teacher if self.args.kd else None, batches, opt, scheduler=sched,
                    device=None if dev.type == "cpu" else dev,
                    loss_fn=hinge_loss if loss == "hinge" else None)
        student.cpu().eval()
        if teacher is not None:
            teacher.cpu()
        snap_quantized_weights_(student)
        return time.perf_counter() - t0

    def scratch(self, recipe: Recipe, problem: Any, policy: Any) -> tuple[nn.Module, float]:
        """Table 6: the pruned architecture with fresh weights, trained like the base model."""
        from autocompress.compression import compress
        from autocompress.training import TrainConfig, train_model

        small = compress(problem.model, policy, space=problem.space)
        torch.manual_seed(self.args.seed)
        if hasattr(small, "reset_weights_"):  # the model's own initialisation
            small.reset_weights_()
        else:
            for m in small.modules():
                if m is not small and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        cfg = TrainConfig(epochs=self.args.base_epochs, lr=BASE_LR.get(recipe.model, 0.05),
                          batch_size=self.args.batch_size, seed=self.args.seed)
        res = train_model(small, self.train_data(problem), cfg, device=self.device)
        return small.eval(), res.seconds

    def inq(self, problem: Any, policy: Any, steps: Sequence[float], loss: str = "ce") -> tuple[nn.Module, float]:
        """Incremental network quantization (Zhou et al. 2017): INQ's powers-of-two grid for the
        policy's ``pow2_bits`` layers, the engine's per-channel grid for its ``w_bits`` ones.

        Stage ``i`` fixes the ``steps[i]`` share of each quantized layer's weights with the largest
        magnitude (and, from the first stage, every output channel's largest weight, so the grid,
        set by the layer's or the channel's largest weight, never moves) at their grid values, and
        trains the others for ``--finetune-epochs``; after the last stage (1.0) every weight is on
        the grid, and ``compress`` with the policy leaves them where they are.
        """
        from autocompress.compression import compress
        from autocompress.compression.quantize import pow2_levels, pow2_weight

        t0 = time.perf_counter()
        model = copy.deepcopy(problem.model)
        grids: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        frozen: dict[str, torch.Tensor] = {}
        fixed: dict[str, torch.Tensor] = {}
        layers: dict[str, nn.Module] = {}

        def uniform(scale: torch.Tensor, qmax: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda w: torch.clamp(torch.round(w / scale), -qmax, qmax) * scale

        def powers(levels: torch.Tensor, bits: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda w: pow2_weight(w, bits, levels)

        with torch.no_grad():
            for n, a in policy.layers.items():
                if a.w_bits >= 32 and a.pow2_bits >= 32:
                    continue
                m = layers[n] = model.get_submodule(n)
                w = m.weight
                if a.pow2_bits < 32:
                    grids[n] = powers(pow2_levels(w, a.pow2_bits), a.pow2_bits)
                else:
                    qmax = 2 ** (a.w_bits - 1) - 1
                    scale = w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12) / qmax
                    grids[n] = uniform(scale.reshape(-1, *([1] * (w.dim() - 1))), qmax)
                frozen[n] = torch.zeros_like(w, dtype=torch.bool)
                top = w.reshape(w.shape[0], -1).abs().argmax(1)
                frozen[n].reshape(w.shape[0], -1)[torch.arange(w.shape[0]), top] = True

        def restore() -> None:
            with torch.no_grad():
                for n, m in layers.items():
                    m.weight[frozen[n]] = fixed[n][frozen[n]]

        def around(batches: Any) -> Iterator[Any]:
            for b in batches:
                restore()  # after the previous optimizer step, before the next forward
                yield b
            restore()

        for share in steps:
            with torch.no_grad():
                for n, m in layers.items():
                    w = m.weight
                    k = int(math.ceil(share * w.numel() - 1e-9))
                    order = torch.argsort(w.abs().flatten(), descending=True, stable=True)[:k]
                    frozen[n].view(-1)[order] = True
                    q = grids[n](w)
                    w[frozen[n]] = q[frozen[n]]
                    fixed[n] = w.detach().clone()
            if share < 1.0:
                self.finetune_(model, problem.model, problem, self.args.finetune_epochs, around=around,
                               loss=loss)
                restore()
        small = compress(model.eval(), policy, space=problem.space)
        return small.eval(), time.perf_counter() - t0

    # --- finished rows, kept per recipe ----------------------------------------------------------
    def row_path(self, recipe: Recipe) -> Path:
        """Where the recipe's row is kept: named by a hash of everything the row depends on (the
        recipe, the base checkpoint's bytes, the settings), so a changed input never reuses it and
        no earlier row is overwritten."""
        import hashlib

        ckpt = self.checkpoint(recipe)
        digest = self._digests.get(ckpt)
        if digest is None:  # hashed once per base, not at every look-up
            digest = self._digests[ckpt] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        a = self.args
        settings = {k: getattr(a, k) for k in (
            "data", "base_epochs", "finetune_epochs", "finetune_lr", "kd", "search_trials", "no_search",
            "train_samples", "val_samples", "batch_size", "seed", "device")}
        blob = json.dumps({"recipe": dataclasses.asdict(recipe), "base": digest, "settings": settings},
                          sort_keys=True, default=str)
        return self.out / "rows" / f"{recipe.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"

    def cached_row(self, recipe: Recipe) -> dict[str, Any] | None:
        """The recipe's row from an earlier run with the same inputs, or None."""
        if self.args.fresh:
            return None
        try:
            row = json.loads(self.row_path(recipe).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return row if isinstance(row, dict) and row.get("recipe") == recipe.name else None

    def keep_row(self, recipe: Recipe, row: Mapping[str, Any]) -> None:
        """Write the finished row atomically (a stopped run loses at most the recipe in progress)."""
        path = self.row_path(recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(row, indent=2, default=str))
        os.replace(tmp, path)

    # --- one recipe --------------------------------------------------------------------------
    def run_recipe(self, recipe: Recipe) -> dict[str, Any]:
        """The recipe's row: base, compressed before / after its schedule, and the searched policy."""
        from autocompress.report._rebuild import scored_model

        t0 = time.perf_counter()
        problem = self.problem(recipe, recipe.knobs)
        split, x, y = self.eval_split(problem)
        ex = problem.example_input
        policy = recipe_policy(recipe, problem)
        base = measure(problem.model, x, y, ex)
        small = scored_model(problem, policy).cpu()
        before = measure(small, x, y, ex)
        row: dict[str, Any] = {
            "recipe": recipe.name, "table": recipe.table, "row": recipe.row, "model": recipe.model,
            "base_key": recipe.base_key, "schedule": recipe.schedule, "split": split,
            "survey": dict(recipe.survey), "policy": policy.to_dict(), "base": base, "before": before}
        if recipe.schedule == "inq":
            small, secs = self.inq(problem, policy, recipe.inq_steps, loss=recipe.loss)
            row["inq_steps"] = list(recipe.inq_steps)
        else:
            secs = self.finetune_(small, problem.model, problem, self.args.finetune_epochs, loss=recipe.loss)
        row["loss"] = recipe.loss
        row["after"] = measure(small, x, y, ex)
        row["finetune_s"] = secs
        # the counts are those of the compressed modules, and the space predicts the same
        row["predicted"] = {k: float(v) for k, v in problem.space.costs(policy).items()
                            if k in ("params", "size_bytes")}
        if recipe.schedule == "scratch":
            fresh, secs = self.scratch(recipe, problem, policy)
            row["scratch"] = {**measure(fresh, x, y, ex), "seconds": secs}
        if recipe.search_budget is not None and not self.args.no_search:
            row["searched"] = self.search(recipe, row)
        row["seconds"] = time.perf_counter() - t0
        return row

    def search(self, recipe: Recipe, row: Mapping[str, Any]) -> dict[str, Any]:
        """A short ladder search at the recipe's FLOPs / params / size, best point fine-tuned."""
        from autocompress.report import load_run
        from autocompress.report._rebuild import scored_model
        from autocompress.search.runner import run_search
        from autocompress.search.spec import SearchSpec

        metric = SEARCH_BUDGETS[recipe.search_budget or "flops"]
        value = row["after"][metric]
        budget = f"{recipe.search_budget}={value:.0f}"
        problem = self.problem(recipe, recipe.search_knobs)
        split, x, y = self.eval_split(problem)
        out_dir = self.out / "runs" / recipe.name
        spec = SearchSpec(model=recipe.model, checkpoint=str(self.checkpoint(recipe)), data=self.args.data,
                          knobs=recipe.search_knobs, importance=recipe.importance, round_to=1,
                          budgets=[budget], strategy="ladder", trials=self.args.search_trials,
                          seed=self.args.seed, evaluator=self.ev_config.to_dict(), out=str(out_dir),
                          threads=self.args.threads, force=True, device=self.args.device)
        t0 = time.perf_counter()
        result = run_search(spec, problem=problem)
        out: dict[str, Any] = {"budget": budget, "evaluated": result.n_evaluated,
                               "feasible": result.n_feasible, "search_s": time.perf_counter() - t0,
                               "run_dir": str(out_dir)}
        ranked = load_run(out_dir).by_proxy_rank()
        if not ranked:
            out["note"] = "no feasible point"
            return out
        point = ranked[0]
        small = scored_model(problem, point.policy).cpu()
        out["before"] = measure(small, x, y, problem.example_input)
        out["finetune_s"] = self.finetune_(small, problem.model, problem, self.args.finetune_epochs,
                                           loss=recipe.loss)
        out["after"] = measure(small, x, y, problem.example_input)
        out["policy"] = point.policy.to_dict()
        return out


# --- the tables ------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _m(v: float | None) -> str:
    return _f(None if v is None else v / 1e6, ".2f")


def _drop(after: float | None, before: float | None) -> str:
    return "–" if after is None or before is None else f"{after - before:+.2f}"


def _survey_cell(s: Mapping[str, Any]) -> str:
    acc = (f"{_f(s.get('top1_before'))} → {_f(s.get('top1_after'))} "
           f"({_drop(s.get('top1_after'), s.get('top1_before'))})")
    size = ""
    if s.get("params_before") is not None:
        size = f"; {_f(s.get('params_after'))}M params"
        if s.get("flops_after") is not None:
            size += f", {_f(s.get('flops_before'))}→{_f(s.get('flops_after'))}M FLOPs"
    return acc + size


def _ours_cell(r: Mapping[str, Any]) -> str:
    b, pre, a = r["base"], r["before"], r["after"]
    return (f"{_f(b['top1'])} → {_f(pre['top1'])} → {_f(a['top1'])} ({_drop(a['top1'], b['top1'])}); "
            f"top-5 {_f(b['top5'])} → {_f(a['top5'])}")


def _searched_cell(r: Mapping[str, Any], size: bool = False) -> str:
    s = r.get("searched")
    if not s:
        return "–"
    if "after" not in s:
        return f"{s['budget']}: {s.get('note', '–')}"
    a, b = s["after"], r["base"]
    cost = (f"{a['size_bytes'] / 1024:.0f} KiB" if size
            else f"{_m(a['params'])}M params, {_m(a['flops'])}M FLOPs")
    return f"{cost}: {_f(a['top1'])} ({_drop(a['top1'], b['top1'])}), top-5 {_f(a['top5'])}"


def tables(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace,
           bases: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one table per survey table, then the epochs and data used."""
    out: list[str] = []
    t5 = [r for r in rows if r["table"] == 5]
    if t5:
        out += ["**Table 5** (pruning). Top-1 % base → compressed → fine-tuned (change from base).", "",
                "| survey row | survey top-1 before → after (Δ); size | ours: params M before → after | "
                "ours: FLOPs M before → after | ours: top-1 | searched at the same "
                "FLOPs (params for magnitude rows) |",
                "|---|---|---|---|---|---|"]
        for r in t5:
            b, a = r["base"], r["after"]
            out.append(f"| {r['row']} | {_survey_cell(r['survey'])} | {_m(b['params'])} → {_m(a['params'])} | "
                       f"{_m(b['flops'])} → {_m(a['flops'])} | {_ours_cell(r)} | {_searched_cell(r)} |")
        out.append("")
    t6 = [r for r in rows if r["table"] == 6]
    if t6:
        out += ["**Table 6** (training the pruned architecture from scratch, Liu et al. 2019).", "",
                "| model | survey top-1 / top-5 | ours top-1 / top-5 | params M | FLOPs M |",
                "|---|---|---|---|---|"]
        for r in t6:
            s, b, a, z = r["survey"], r["base"], r["after"], r.get("scratch") or {}
            out += [
                f"| base ({r['model']}) | {_f(s.get('top1_before'))} / {_f(s.get('top5_before'))} | "
                f"{_f(b['top1'])} / {_f(b['top5'])} | {_m(b['params'])} | {_m(b['flops'])} |",
                f"| pruned + fine-tuned ({r['row']}) | {_f(s.get('top1_after'))} / {_f(s.get('top5_after'))} | "
                f"{_f(a['top1'])} / {_f(a['top5'])} | {_m(a['params'])} | {_m(a['flops'])} |",
                f"| same architecture trained from scratch | {_f(s.get('top1_scratch'))} / "
                f"{_f(s.get('top5_scratch'))} | {_f(z.get('top1'))} / {_f(z.get('top5'))} | "
                f"{_m(z.get('params'))} | {_m(z.get('flops'))} |"]
        out.append("")
    t7 = [r for r in rows if r["table"] == 7]
    if t7:
        out += ["**Table 7** (weight quantization). Top-1 % 32-bit → quantized once → after the schedule.", "",
                "| survey row | survey top-1 32-bit → quantized (Δ) | ours: weight KiB 32-bit → quantized | "
                "ours: top-1 | searched at the same weight size |",
                "|---|---|---|---|---|"]
        for r in t7:
            b, a = r["base"], r["after"]
            out.append(f"| {r['row']} | {_survey_cell(r['survey'])} | {b['size_bytes'] / 1024:.0f} → "
                       f"{a['size_bytes'] / 1024:.0f} | {_ours_cell(r)} | {_searched_cell(r, size=True)} |")
        out.append("")
    split = rows[0]["split"] if rows else "test"
    base_txt = "; ".join(f"{k}: {v.get('epochs')} epochs, lr {v.get('lr')}"
                         + (f", slimming_l1 {v['slimming_l1']:g}" if v.get("slimming_l1") else "")
                         for k, v in bases.items())
    out.append(
        f"Data {args.data} ({'all' if args.train_samples is None else args.train_samples} training "
        f"samples), accuracies on the {split} split. Base models: {base_txt}. Every compressed model "
        f"(recipe and searched) is fine-tuned {args.finetune_epochs} epoch(s) "
        f"({'KD from the base' if args.kd else 'cross-entropy; squared hinge loss where the row says so'}, SGD lr "
        f"{args.finetune_lr or 'per model (alexnet_cifar 0.002, alexnet_cifar_bnd 0.01)'}, "
        f"cosine); INQ: {args.finetune_epochs} epoch(s) per stage; scratch: the base's epochs. "
        f"Searches: ladder, {args.search_trials} candidates each, scored on {args.val_samples} "
        "validation samples. FLOPs = 2 x MACs counted on the compressed model.")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the recipes, print the tables, write ``--json``; returns what was written."""
    args = parse_args(argv)
    recipes = check_args(args)
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else ()
    t0 = time.perf_counter()
    rows = []
    for recipe in recipes:
        row = bench.cached_row(recipe)
        if row is None:
            row = bench.run_recipe(recipe)
            bench.keep_row(recipe, row)
        else:
            print(f"{recipe.name}: reusing {bench.row_path(recipe)}", flush=True)
        a, b = row["after"], row["base"]
        print(f"{recipe.name}: top-1 {b['top1']:.2f} -> {row['before']['top1']:.2f} -> {a['top1']:.2f}, "
              f"params {b['params'] / 1e6:.3f}M -> {a['params'] / 1e6:.3f}M, FLOPs {b['flops'] / 1e6:.2f}M -> "
              f"{a['flops'] / 1e6:.2f}M ({row['seconds']:.0f} s, fine-tune {row['finetune_s']:.0f} s, "
              f"search {(row.get('searched') or {}).get('search_s', 0):.0f} s)", flush=True)
        rows.append(row)
    md = tables(rows, args, bench.bases)
    print(md)
    result = {"settings": {k: v for k, v in vars(args).items()}, "bases": bench.bases, "rows": rows,
              "markdown": md, "seconds": time.perf_counter() - t0, "load_avg_start": list(load0),
              "load_avg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else []}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    from autocompress.errors import UserInputError

    try:
        main()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
