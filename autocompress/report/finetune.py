"""Fine-tune one Pareto point's compressed model, distilling from the original, and record it.

A searched point is scored after only BatchNorm recalibration (and at most a few fine-tune steps);
a few epochs of training recover most of the accuracy lost to compression. Knowledge distillation
from the uncompressed model (Hinton et al. 2015; survey section 2.3) trains the student on
``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)``.

Quantized layers train with straight-through fake quantization (the compression core re-quantizes
weights in the forward pass in training mode and rounds activations as ``x + (q(x) - x).detach()``),
so gradients flow through the rounding; after training the latent weights are projected back onto
their quantization grid, so the saved model holds exactly ``w_bits``-bit weights again.

Results go to ``RUN/finetune/point-<id>.json`` (accuracy before/after, settings, per-epoch history,
the point's policy) and ``RUN/finetune/point-<id>.pt`` (the fine-tuned weights as a ``state_dict``
of tensors). ``load_finetuned`` rebuilds the compressed module from the run and the policy and loads
those weights with ``torch.load(..., weights_only=True)``: nothing read back from a run directory is
unpickled as code, so a planted ``.pt`` file cannot run anything. An earlier result is never
overwritten: the next free name (``point-<id>-2.json``, ...) is used.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compression import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.report._io import atomic_path, write_text_atomic
from autocompress.report.run import Candidate, RunRecord, load_run

if TYPE_CHECKING:
    from autocompress.problem import Problem


@dataclass(frozen=True)
class FinetuneResult:
    """Accuracy of a point before and after fine-tuning, and where the result was written.

    ``acc_before`` is the compressed model as the search scored it (recomputed now on the whole
    validation split), ``acc_after`` the same model after fine-tuning; ``teacher_acc`` is the
    original model's.
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
            f"recorded in {self.record_path}, weights in {self.weights_path}",
        ]


def _records(directory: Path, point_id: str) -> list[tuple[int, Path]]:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in point_id)
    out = []
    for f in directory.glob(f"point-{safe}*.json"):
        suffix = f.stem[len(f"point-{safe}"):]
        if suffix == "":
            out.append((1, f))
        elif suffix.startswith("-") and suffix[1:].isdigit():
            out.append((int(suffix[1:]), f))
    return sorted(out)


def latest_finetune(run_dir: str | Path, point_id: str | int) -> dict[str, Any] | None:
    """The most recent fine-tune record of a point (``RUN/finetune/point-<id>[-n].json``), or None."""
    directory = Path(run_dir) / "finetune"
    for _, path in reversed(_records(directory, str(point_id))):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            continue  # an unreadable or torn record: an older one may still serve
        weights = path.with_suffix(".pt")  # written next to its record, same stem
        if isinstance(rec, dict) and weights.is_file():
            rec["weights_path"] = str(weights)
            rec["record_path"] = str(path)
            return rec
    return None


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
    from autocompress.compression.quantize import quantized_weight_bytes, requantize

    n = 0
    for m in model.modules():
        for p, _ in quantized_weight_bytes(m):
            # requantize knows each layer's grid (e.g. the unit-scale one of a low-rank factor
            # whose scales were folded into its partner).
            p.copy_(requantize(m, p))
            n += 1
    return n


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from autocompress.evaluators.accuracy import topk_correct

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
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune point ``point_id``'s compressed model and record accuracy before and after.

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
        progress: show progress while a missing base model is trained.

    Returns:
        ``FinetuneResult``; the record and weights are written under ``RUN/finetune/``.

    Raises:
        UserInputError: a point not on the front or a setting out of range.

    Example:
        >>> r = finetune_point("runs/demo", 3, epochs=5)  # doctest: +SKIP
        >>> r.acc_before, r.acc_after  # doctest: +SKIP
    """
    from autocompress.evaluators.accuracy import kd_loss
    from autocompress.report._rebuild import rebuild_problem, scored_model
    from autocompress.training import seed_everything

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

    problem = rebuild_problem(run, progress=progress)
    teacher = problem.model.eval()
    student = scored_model(problem, point.policy)
    x_val, y_val = problem.data.tensors("val")
    teacher_acc = _accuracy(teacher, x_val, y_val)
    acc_before = _accuracy(student, x_val, y_val)

    seed_everything(seed)
    loader = problem.data.loader("train", batch_size, shuffle=True, seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        student.train()
        total = n = 0.0
        for x, y in loader:
            out = student(x)
            if kd and alpha > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = kd_loss(out, t_out, y, alpha=alpha, temperature=temperature)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        # Score a snapped copy: the latent weights keep training unprojected.
        scored = copy.deepcopy(student).eval()
        snap_quantized_weights_(scored)
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1.0),
                        "val_acc": _accuracy(scored, x_val, y_val)})
    student.eval()
    snap_quantized_weights_(student)
    acc_after = _accuracy(student, x_val, y_val)

    directory = run.path / "finetune"
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in point.id)
    stem = _free_stem(directory, f"point-{safe}")
    weights = directory / f"{stem}.pt"
    record = directory / f"{stem}.json"
    # Tensors only: the module's structure is rebuilt from the policy when it is loaded back.
    with atomic_path(weights) as tmp:
        torch.save(student.state_dict(), tmp)
    recorded = point.metrics.get("acc")
    result = FinetuneResult(
        point_id=point.id, acc_before=acc_before, acc_after=acc_after, teacher_acc=teacher_acc,
        recorded_acc=None if recorded is None or not math.isfinite(recorded) else recorded,
        epochs=epochs, kd=kd, temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size,
        seed=seed, history=history, record_path=record, weights_path=weights,
        seconds=time.perf_counter() - t0,
    )
    payload = {**result.to_dict(), "policy": point.policy.to_dict(), "metrics": point.metrics,
               "weight_decay": weight_decay, "weights_format": WEIGHTS_FORMAT,
               "act_quant_modes": _act_quant_modes(student)}
    # Whole or not at all (a full disk leaves no truncated record), and exclusive: a concurrent
    # fine-tune that picked the same name fails instead of overwriting.
    write_text_atomic(record, json.dumps(payload, indent=2, sort_keys=True), exclusive=True)
    return result


#: ``weights_format`` of a fine-tune record whose ``.pt`` holds a ``state_dict`` of tensors.
WEIGHTS_FORMAT = "state_dict"


def _act_quant_modes(model: nn.Module) -> dict[str, str]:
    """Calibration outcome of each activation quantizer (``quant`` / ``off``): not in the state_dict."""
    from autocompress.compression import ActQuant

    return {name: m.mode for name, m in model.named_modules() if isinstance(m, ActQuant)}


def load_finetuned(run: RunRecord, point: Candidate, record: Mapping[str, Any],
                   problem: Problem | None = None, *, progress: bool = False) -> nn.Module:
    """The fine-tuned model of ``record`` (see ``latest_finetune``), rebuilt without unpickling code.

    The compressed module is rebuilt from the run and the point's policy exactly as the search
    scored it, then the recorded weights are loaded with ``torch.load(weights_only=True)`` and a
    strict ``load_state_dict``. A file that is not such a state dict (a planted pickle, a whole
    pickled module from an older version, another point's weights) is a ``UserInputError``.
    """
    from autocompress.report._rebuild import rebuild_problem, scored_model

    path = Path(str(record.get("weights_path")))
    where = f"{str(path)!r}"
    if record.get("policy") is not None:
        try:
            same = CompressionPolicy.from_dict(record["policy"]) == point.policy
        except (ValueError, TypeError, KeyError, AttributeError):
            same = False
        if not same:
            raise UserInputError(f"{str(record.get('record_path'))!r} was recorded for another "
                                 f"policy than point {point.id} of {str(run.path)!r}")
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserInputError(f"{where} does not exist: the fine-tuned weights are missing") from None
    except IsADirectoryError:
        raise UserInputError(f"{where} is a directory, not fine-tuned weights") from None
    except OSError:
        raise  # a disk problem, not the file's content
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign files
        # torch's weights-only unpickler stops at the first thing that is not a tensor, before
        # anything is constructed: a planted pickle lands here without having run.
        raise UserInputError(
            f"{where} is not a state_dict of plain tensors written by torch.save "
            f"({type(exc).__name__}); refused, since loading any other object could run code: "
            "re-run `autocompress finetune`"
        ) from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserInputError(f"{where} is not a state_dict (name -> tensor); re-run `autocompress finetune`")
    problem = problem if problem is not None else rebuild_problem(run, progress=progress)
    model = scored_model(problem, point.policy)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserInputError(f"{where} does not fit point {point.id}'s compressed model ({first})") from None
    modes = record.get("act_quant_modes")
    if isinstance(modes, Mapping):
        from autocompress.compression import ActQuant

        for name, m in model.named_modules():
            if isinstance(m, ActQuant) and modes.get(name) in ("quant", "off"):
                m.mode = str(modes[name])
    return model.eval()
