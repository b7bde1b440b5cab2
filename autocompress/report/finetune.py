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

``finetune_front`` runs the same loop over the front's feasible points, all of them or the K of
highest search accuracy (ties: lower cost first); ``search --finetune-top K`` calls it through
``finish_search`` at the end of a search, skipping points already fine-tuned (a resumed search
fine-tunes what is missing). When the data has a held-out test split, every record also holds
test top-1 before and after, and ``finish_search`` records each front point's test top-1 in
``pareto.json``; the test split is measured only, never used to choose anything.

The loop and its records live in ``autocompress.point_finetune`` (below the search, which calls
``finish_search`` with its own problem); here a stored run's problem is rebuilt when none is
given, and ``load_finetuned`` reads fine-tuned weights back. The names are re-exported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autocompress import point_finetune as _pf
from autocompress.compression import ActQuant, CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.point_finetune import (  # noqa: F401 - re-exported: the fine-tune API names them here
    WEIGHTS_FORMAT,
    FinetuneResult,
    FrontFinish,
    _accuracy,
    finish_search,
    measure_front_test,
    snap_quantized_weights_,
    test_tensors,
)
from autocompress.report._rebuild import rebuild_problem, scored_model
from autocompress.rundir import (
    Candidate,
    RunRecord,
    latest_finetune,  # noqa: F401 - re-exported: the fine-tune API names it here
)

if TYPE_CHECKING:
    from autocompress.problem import Problem


def _rebuilder(progress: bool, device: str | None) -> Callable[[RunRecord], Problem]:
    return lambda run: rebuild_problem(run, progress=progress, device=device)


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
    problem: Problem | None = None,
    device: str | None = None,
) -> FinetuneResult:
    """Fine-tune point ``point_id``'s compressed model and record accuracy before and after
    (``point_finetune.finetune_point``; the run's problem rebuilt from it when not given).

    Args:
        run_dir, point_id, epochs, kd, temperature, alpha, lr, batch_size, weight_decay, seed:
            as ``point_finetune.finetune_point``.
        progress: show progress while a missing base model is trained.
        problem: the run's already built ``Problem``; by default it is rebuilt from the run
            directory.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: where the point trains (bf16
            autocast on CUDA) and is scored (fp32); None: the problem's evaluator's device.

    Returns:
        ``FinetuneResult``; the record and weights are written under ``RUN/finetune/``.

    Raises:
        UserInputError: a point not on the front or a setting out of range.

    Example:
        >>> r = finetune_point("runs/demo", 3, epochs=5)  # doctest: +SKIP
        >>> r.acc_before, r.acc_after  # doctest: +SKIP
    """
    return _pf.finetune_point(run_dir, point_id, epochs, kd, temperature, alpha, lr,
                              batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                              problem=problem, build_problem=_rebuilder(progress, device),
                              device=device)


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
    progress: bool = False,
    problem: Problem | None = None,
    on_point: Callable[[int, int, str], None] | None = None,
    device: str | None = None,
) -> list[FinetuneResult]:
    """Fine-tune every feasible front point (``top=None``) or the ``top`` best, one by one
    (``point_finetune.finetune_front``; the run's problem rebuilt once when not given).

    Args:
        run_dir, top, epochs, kd, temperature, alpha, lr, batch_size, weight_decay, seed,
            skip_done, on_point: as ``point_finetune.finetune_front``.
        progress: show progress while a missing base model is trained.
        problem: the run's already built ``Problem`` (default: rebuilt from the run).
        device: as ``finetune_point``.

    Returns:
        One ``FinetuneResult`` per selected point, best first.

    Example:
        >>> results = finetune_front("runs/demo", top=3, epochs=3)  # doctest: +SKIP
    """
    return _pf.finetune_front(run_dir, top, epochs, kd, temperature, alpha, lr,
                              batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                              skip_done=skip_done, problem=problem,
                              build_problem=_rebuilder(progress, device), on_point=on_point,
                              device=device)


def load_finetuned(run: RunRecord, point: Candidate, record: Mapping[str, Any],
                   problem: Problem | None = None, *, progress: bool = False,
                   device: str | None = None) -> nn.Module:
    """The fine-tuned model of ``record`` (see ``latest_finetune``), rebuilt without unpickling code.

    The compressed module is rebuilt from the run and the point's policy exactly as the search
    scored it, then the recorded weights are loaded with ``torch.load(weights_only=True)`` and a
    strict ``load_state_dict``. A file that is not such a state dict (a planted pickle, a whole
    pickled module from an older version, another point's weights) is a ``UserInputError``.
    """
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
    problem = problem if problem is not None else rebuild_problem(run, progress=progress, device=device)
    model = scored_model(problem, point.policy)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserInputError(f"{where} does not fit point {point.id}'s compressed model ({first})") from None
    modes = record.get("act_quant_modes")
    if isinstance(modes, Mapping):
        for name, m in model.named_modules():
            if isinstance(m, ActQuant) and modes.get(name) in ("quant", "off"):
                m.mode = str(modes[name])
    return model.eval()
