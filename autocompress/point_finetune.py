"""Fine-tuning a searched point of a run on its built problem, and the end of a search.

A searched point is scored after only BatchNorm recalibration (and at most a few fine-tune
steps); a few epochs of knowledge distillation from the uncompressed model (``distill``) recover
most of the accuracy lost to compression. Quantized layers train with straight-through fake
quantization and are projected back onto their grid afterwards (``snap_quantized_weights_``).

This is the run-directory side of that fine-tune, given the run's ``Problem``: ``finetune_point``
/ ``finetune_front`` write ``RUN/finetune/point-<id>.json`` and ``.pt``, ``measure_front_test``
records the front's test top-1 in ``pareto.json``, and ``finish_search`` is what a search runs
at its end (``search --finetune-top K``). It sits beside ``problem``, below the search, so the
search calls it directly; ``report.finetune`` adds the rebuilding of a stored run's problem and
the weights-only loading of a fine-tuned model, and re-exports the names below.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autocompress.compression import ActQuant, CompressionPolicy
from autocompress.compression.policy import read_policy
from autocompress.compression.quantize import quantized_weight_bytes, requantize
from autocompress.devices import resolve_device
from autocompress.distill import distill
from autocompress.errors import UserInputError
from autocompress.evaluators.accuracy import recalibrate_bn, topk_correct
from autocompress.rundir import (
    FINETUNE_DIR,
    PARETO_FILE,
    TEST_CACHE_FILE,
    RunRecord,
    atomic_path,
    read_pareto,
    read_run,
    read_test_cache,
    safe_point_name,
    write_text_atomic,
)
from autocompress.training import seed_everything

if TYPE_CHECKING:
    from autocompress.problem import Problem

#: Builds a stored run's ``Problem`` when none is given (``report`` rebuilds it from spec.json).
ProblemBuilder = Callable[[RunRecord], "Problem"]


def load_run(run_dir: str | Path) -> RunRecord:
    """The run as ``rundir.read_run`` reads it, with compression policies."""
    return read_run(run_dir, read_policy)


@dataclass(frozen=True)
class FinetuneResult:
    """Accuracy of a point before and after fine-tuning, and where the result was written.

    ``acc_before`` is the compressed model as the search scored it (recomputed now on the whole
    validation split), ``acc_after`` the same model after fine-tuning; ``teacher_acc`` is the
    original model's. ``test_before`` / ``test_after`` / ``teacher_test_acc`` are the same three
    on the held-out test split, when the data has one (else None); the test split is only
    measured, never used to choose anything.
    """

    point_id: str
    acc_before: float
    acc_after: float
    teacher_acc: float
    recorded_acc: float | None
    epochs: int
    kd: bool
    temperature: float
    alpha: float
    lr: float
    batch_size: int
    seed: int
    history: list[dict[str, float]] = field(default_factory=list)
    record_path: Path | None = None
    weights_path: Path | None = None
    seconds: float = 0.0
    test_before: float | None = None
    test_after: float | None = None
    teacher_test_acc: float | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> FinetuneResult:
        """The result a fine-tune record (``RUN/finetune/point-<id>.json``) holds."""
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in rec.items() if k in names}
        for k in ("record_path", "weights_path"):
            kw[k] = None if kw.get(k) is None else Path(str(kw[k]))
        kw.setdefault("history", [])
        return cls(**kw)

    @property
    def gain(self) -> float:
        """Accuracy points gained (fraction)."""
        return self.acc_after - self.acc_before

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        d = asdict(self)
        d["record_path"] = None if self.record_path is None else str(self.record_path)
        d["weights_path"] = None if self.weights_path is None else str(self.weights_path)
        d["gain"] = self.gain
        return d

    def lines(self) -> list[str]:
        """Human-readable summary (what the CLI prints)."""
        how = f"KD T={self.temperature:g} alpha={self.alpha:g}" if self.kd else "cross-entropy"
        return [
            f"point {self.point_id}: {self.epochs} epoch(s), {how}, lr {self.lr:g}, seed {self.seed}",
            f"top-1 before {100 * self.acc_before:.2f}% -> after {100 * self.acc_after:.2f}% "
            f"({100 * self.gain:+.2f} points; original model {100 * self.teacher_acc:.2f}%)",
        ] + ([
            f"test top-1 before {100 * self.test_before:.2f}% -> after {100 * self.test_after:.2f}% "
            f"({100 * (self.test_after - self.test_before):+.2f} points; original model "
            + (f"{100 * self.teacher_test_acc:.2f}%)" if self.teacher_test_acc is not None else "-)")
        ] if self.test_before is not None and self.test_after is not None else []) + [
            f"recorded in {self.record_path}, weights in {self.weights_path}",
        ]


def _free_stem(directory: Path, stem: str) -> str:
    """``stem`` or ``stem-2``, ``stem-3``, ... : the first whose .json and .pt are both free."""
    candidate, n = stem, 1
    while (directory / f"{candidate}.json").exists() or (directory / f"{candidate}.pt").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


@torch.no_grad()
def snap_quantized_weights_(model: nn.Module) -> int:
    """Project every quantized layer's latent weights back onto its bit-width grid, in place.

    Straight-through training updates float ("latent") weights; the compressed model's inference
    path expects weights already on the grid. Returns the number of weight tensors projected.
    """
    n = 0
    for m in model.modules():
        for p, _ in quantized_weight_bytes(m):
            # requantize knows each layer's grid (e.g. the unit-scale one of a low-rank factor
            # whose scales were folded into its partner).
            p.copy_(requantize(m, p))
            n += 1
    return n


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(topk_correct(model, x, y, ks=(1,))[1])


def _check(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserInputError(f"{name}={value!r} is not a number")
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise UserInputError(f"{name}={value!r} is out of range; allowed: "
                             f"{'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return float(value)


def finetune_point(
    run_dir: str | Path,
    point_id: str | int,
    epochs: int = 3,
    kd: bool = True,
    temperature: float = 4.0,
    alpha: float = 0.9,
    lr: float = 0.01,
    *,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
    problem: Problem | None = None,
    build_problem: ProblemBuilder | None = None,
    device: str | None = None,
) -> FinetuneResult:
    """Fine-tune point ``point_id``'s compressed model and record accuracy before and after.

    Accuracy is recorded on the validation split and, when the data has a held-out test split
    (an image folder's ``test/``, torchvision's test files), on the test split too.

    Args:
        run_dir: the search run directory.
        point_id: an id of a Pareto point.
        epochs: passes over the training split.
        kd: distil from the original model (else plain cross-entropy).
        temperature: softmax temperature T of the distillation term.
        alpha: weight of the distillation term (``1 - alpha`` weighs cross-entropy).
        lr: peak learning rate (SGD, Nesterov momentum 0.9, cosine decay to 0).
        batch_size: training batch size.
        weight_decay: L2 penalty.
        seed: seed of the batch order (same seed, same result).
        problem: the run's already built ``Problem`` (the search passes its own).
        build_problem: builds it from the run when ``problem`` is None (it then also applies
            ``device``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: where the point trains (bf16
            autocast on CUDA) and is scored (fp32); None: the problem's evaluator's device.

    Returns:
        ``FinetuneResult``; the record and weights are written under ``RUN/finetune/``.

    Raises:
        UserInputError: a point not on the front or a setting out of range.

    Example:
        >>> r = finetune_point("runs/demo", 3, epochs=5, problem=problem)  # doctest: +SKIP
        >>> r.acc_before, r.acc_after  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserInputError(f"epochs={epochs!r}; expected an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError(f"batch_size={batch_size!r}; expected an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserInputError(f"seed={seed!r} is not an integer")
    temperature = _check("temperature", temperature, 0.0, 100.0, lo_open=True)
    alpha = _check("alpha", alpha, 0.0, 1.0)
    lr = _check("lr", lr, 0.0, 10.0, lo_open=True)
    weight_decay = _check("weight_decay", weight_decay, 0.0, 1.0)
    run = load_run(run_dir)
    point = run.point(point_id)

    if problem is None:
        if build_problem is None:
            raise TypeError("finetune_point needs the run's problem or a build_problem")
        problem = build_problem(run)
    elif device is not None:
        problem.evaluator.device = resolve_device(device)
    dev = problem.evaluator.device
    teacher = problem.evaluator.teacher()
    student = scored_model(problem, point.policy)
    x_val, y_val = problem.data.tensors("val")
    teacher_acc = _accuracy(teacher, x_val, y_val)
    acc_before = _accuracy(student, x_val, y_val)
    test = test_tensors(problem)
    teacher_test = test_before = None
    if test is not None:
        teacher_test = _accuracy(teacher, *test)
        test_before = _accuracy(student, *test)

    seed_everything(seed)
    loader = problem.data.loader("train", batch_size, shuffle=True, seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        total = n = 0.0
        for loss, size in distill(student, teacher if kd else None, loader, opt, alpha=alpha,
                                  temperature=temperature, scheduler=sched,
                                  device=None if dev.type == "cpu" else dev):
            total += loss * size
            n += size
        # Score a snapped copy: the latent weights keep training unprojected.
        scored = copy.deepcopy(student).eval()
        snap_quantized_weights_(scored)
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1.0),
                        "val_acc": _accuracy(scored, x_val, y_val)})
    student.eval()
    snap_quantized_weights_(student)
    acc_after = _accuracy(student, x_val, y_val)
    test_after = _accuracy(student, *test) if test is not None else None

    directory = run.path / FINETUNE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    safe = safe_point_name(point.id)
    stem = _free_stem(directory, f"point-{safe}")
    weights = directory / f"{stem}.pt"
    record = directory / f"{stem}.json"
    # Tensors only: the module's structure is rebuilt from the policy when it is loaded back.
    with atomic_path(weights) as tmp:
        torch.save({k: v.cpu() for k, v in student.state_dict().items()}, tmp)
    recorded = point.metrics.get("acc")
    result = FinetuneResult(
        point_id=point.id, acc_before=acc_before, acc_after=acc_after, teacher_acc=teacher_acc,
        recorded_acc=None if recorded is None or not math.isfinite(recorded) else recorded,
        epochs=epochs, kd=kd, temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size,
        seed=seed, history=history, record_path=record, weights_path=weights,
        seconds=time.perf_counter() - t0, test_before=test_before, test_after=test_after,
        teacher_test_acc=teacher_test,
    )
    payload = {**result.to_dict(), "policy": point.policy.to_dict(), "metrics": point.metrics,
               "weight_decay": weight_decay, "weights_format": WEIGHTS_FORMAT,
               "act_quant_modes": _act_quant_modes(student)}
    # Whole or not at all (a full disk leaves no truncated record), and exclusive: a concurrent
    # fine-tune that picked the same name fails instead of overwriting.
    write_text_atomic(record, json.dumps(payload, indent=2, sort_keys=True), exclusive=True)
    return result


def test_tensors(problem: Problem) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The whole held-out test split as (inputs, labels), or None when the data has none."""
    if getattr(problem.data, "test", None) is None:
        return None
    return problem.data.tensors("test")


def _check_top(top: Any) -> int | None:
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserInputError(f"top={top!r}; allowed: an integer >= 1 (or None for every front point)")
    return int(top)


def finetune_front(
    run_dir: str | Path,
    top: int | None = None,
    epochs: int = 3,
    kd: bool = True,
    temperature: float = 4.0,
    alpha: float = 0.9,
    lr: float = 0.01,
    *,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
    skip_done: bool = False,
    problem: Problem | None = None,
    build_problem: ProblemBuilder | None = None,
    on_point: Callable[[int, int, str], None] | None = None,
    device: str | None = None,
) -> list[FinetuneResult]:
    """Fine-tune every feasible front point (``top=None``) or the ``top`` best, one by one.

    "Best" is ``RunRecord.by_proxy_rank``: highest accuracy as the search scored it, ties broken
    by lower cost, then by id. Each point goes through ``finetune_point`` (the same KD schedule and
    settings) and gets its own record under ``RUN/finetune/``; nothing is overwritten.

    Args:
        run_dir: the search run directory.
        top: how many points (an integer >= 1), or None for all.
        epochs, kd, temperature, alpha, lr, batch_size, weight_decay, seed: as ``finetune_point``.
        skip_done: keep a point's existing fine-tune record instead of fine-tuning it again (a
            resumed ``search --finetune-top K`` fine-tunes only what is missing); its recorded
            result is returned.
        problem, build_problem: as ``finetune_point``.
        on_point: called with ``(i, n, point_id)`` before each point is fine-tuned.
        device: as ``finetune_point``.

    Returns:
        One ``FinetuneResult`` per selected point, best first.

    Example:
        >>> results = finetune_front("runs/demo", top=3, problem=problem)  # doctest: +SKIP
    """
    top = _check_top(top)
    run = load_run(run_dir)
    chosen = run.by_proxy_rank()
    if top is not None:
        chosen = chosen[:top]
    if not chosen:
        raise UserInputError(f"the Pareto front of {str(run.path)!r} has no feasible point to fine-tune")
    out: list[FinetuneResult] = []
    for i, point in enumerate(chosen):
        done = run.finetuned.get(point.id) if skip_done else None
        if done is not None:
            out.append(FinetuneResult.from_record(done))
            continue
        if on_point is not None:
            on_point(i, len(chosen), point.id)
        out.append(finetune_point(run.path, point.id, epochs, kd, temperature, alpha, lr,
                                  batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                                  problem=problem, build_problem=build_problem, device=device))
    return out


def measure_front_test(run_dir: str | Path, problem: Problem) -> tuple[dict[str, float], float | None]:
    """Top-1 on the held-out test split of the base model and of every front point; recorded.

    Each point is the model the search scored (compressed, BatchNorm recalibrated, its short
    fine-tune), i.e. what ``export`` hands over. The numbers go into ``RUN/pareto.json`` (each
    point's ``test_acc``, the base model's under ``test.base``) and are remembered by policy in
    ``RUN/test_top1.json``, so a resumed search measures only new points. Without a test split
    nothing is measured or written: ``({}, None)``.
    """
    test = test_tensors(problem)
    if test is None:
        return {}, None
    path = Path(run_dir)
    pareto = read_pareto(path)
    cache = read_test_cache(path)
    if not isinstance(cache.get("_base"), int | float):
        cache["_base"] = _accuracy(problem.model.eval(), *test)
    out: dict[str, float] = {}
    points = pareto.get("points") or []
    for p in points:
        policy = CompressionPolicy.from_dict(p["policy"])
        key = policy.key()
        if not isinstance(cache.get(key), int | float):
            cache[key] = _accuracy(scored_model(problem, policy), *test)
        p["test_acc"] = float(cache[key])
        out[str(p.get("id"))] = float(cache[key])
    pareto["test"] = {"base": float(cache["_base"]), "samples": int(len(test[1])),
                      "split": "held-out test split (never used to choose anything)"}
    write_text_atomic(path / TEST_CACHE_FILE, json.dumps(cache, indent=2, sort_keys=True))
    write_text_atomic(path / PARETO_FILE, json.dumps(pareto, indent=2, sort_keys=True) + "\n")
    return out, float(cache["_base"])


@dataclass(frozen=True)
class FrontFinish:
    """What ``finish_search`` adds to a search's result: test top-1 and fine-tuned points."""

    test_acc: dict[str, float] = field(default_factory=dict)
    base_test_acc: float | None = None
    finetuned: tuple[FinetuneResult, ...] = ()


def finish_search(run_dir: str | Path, problem: Problem, *, finetune_top: int | None = None,
                  finetune_epochs: int = 3, seed: int = 0,
                  on_message: Callable[[str], None] | None = None) -> FrontFinish:
    """The end of a search: test top-1 of the front (data with a test split), then the
    fine-tune of the ``finetune_top`` best front points not fine-tuned yet (see ``finetune_front``).
    """
    test_acc, base_test = measure_front_test(run_dir, problem)
    finetuned: list[FinetuneResult] = []
    if finetune_top is not None and load_run(run_dir).front:

        def say(i: int, n: int, pid: str) -> None:
            if on_message is not None:
                on_message(f"fine-tuning point {pid} ({i + 1}/{n}, {finetune_epochs} epoch(s))")

        finetuned = finetune_front(run_dir, top=finetune_top, epochs=finetune_epochs, seed=seed,
                                   skip_done=True, problem=problem, on_point=say)
    return FrontFinish(test_acc=test_acc, base_test_acc=base_test, finetuned=tuple(finetuned))


#: ``weights_format`` of a fine-tune record whose ``.pt`` holds a ``state_dict`` of tensors.
WEIGHTS_FORMAT = "state_dict"


def _act_quant_modes(model: nn.Module) -> dict[str, str]:
    """Calibration outcome of each activation quantizer (``quant`` / ``off``): not in the state_dict."""
    return {name: m.mode for name, m in model.named_modules() if isinstance(m, ActQuant)}


def scored_model(problem: Problem, policy: CompressionPolicy) -> nn.Module:
    """The compressed model the evaluator scored: compress, BN recalibration, its short fine-tune.

    Mirrors ``CompressionEvaluator`` step by step so that an exported or fine-tuned point starts
    from the model whose accuracy the front reports. The model is on the evaluator's device.
    """
    ev = problem.evaluator
    problem.space.validate(policy)
    small = ev.compress(policy)
    c = ev.config
    if ev.needs_recalibration(policy, small):
        recalibrate_bn(small, ev.calib_batches)
    if c.finetune_steps > 0 and any(not a.is_identity for a in policy.layers.values()):
        ev.finetune(small, c.finetune_steps)
    return small.eval()


__all__ = [
    "WEIGHTS_FORMAT",
    "FinetuneResult",
    "FrontFinish",
    "ProblemBuilder",
    "finetune_front",
    "finetune_point",
    "finish_search",
    "load_run",
    "measure_front_test",
    "scored_model",
    "snap_quantized_weights_",
    "test_tensors",
]
