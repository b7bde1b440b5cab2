"""``autocompress train``: build, train and save a base model with a progress bar and a metrics file."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from autocompress.data import load_data
from autocompress.devices import resolve_device
from autocompress.errors import UserInputError, check_writable
from autocompress.models import create_model, default_input_shape
from autocompress.training import TrainConfig, save_checkpoint, slimming_scales, train_model


def run_train(*, model: str, data: str, data_root: str | None = None, epochs: int = 10, lr: float = 0.05,
              batch_size: int = 64, seed: int = 0, out: str | None = None, force: bool = False,
              show_progress: bool = True, augment: bool | None = None,
              device: str = "auto", slimming_l1: float = 0.0) -> dict[str, Any]:
    """Train ``model`` on ``data`` and write ``out`` plus ``out.json``; returns the metrics record.

    ``augment`` None takes the data set's default (see ``DataSplits.augmentation``). The record
    holds ``test_acc`` (top-1 on the held-out split) next to ``val_acc`` when the data has one.
    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; checked first.
    ``slimming_l1``: network slimming's L1 penalty on BatchNorm scales (``TrainConfig``; 0 = off),
    so that ``importance="bn"`` pruning of the checkpoint later removes the near-zero channels.
    """
    dev = resolve_device(device)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, augment=augment,
                         slimming_l1=slimming_l1)
    out_path = Path(out or f"runs/base-{model.replace(':', '_').replace('/', '_')}-{data.replace(':', '_').replace('/', '_')}-{seed}.pt")
    if out_path.exists() and not force:
        raise UserInputError(f"--out {str(out_path)!r} already exists; pass --force to overwrite it or choose another path")
    # Everything that can be checked is checked before the first epoch: the output place (a
    # read-only or full disk must not be found out after training), the model, the data.
    check_writable(out_path, "--out")
    check_writable(out_path.with_name(out_path.name + ".json"), "--out")
    probe = create_model(model, num_classes=10)
    slimming_scales(probe, config.slimming_l1)  # refused on a model without BatchNorm, before data
    shape = default_input_shape(model, probe)
    splits = load_data(data, root=data_root, input_shape=shape, seed=seed)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    net = create_model(model, num_classes=splits.num_classes)
    # An interrupted run left its per-epoch state next to --out: the same command continues it.
    state_path = out_path.with_name(out_path.name + ".partial")
    resumed_from = _check_state(state_path, config, force)
    # Only now, with every input checked, the output's folder is made (`--out runs/base.pt` in a
    # fresh directory); a refused command creates nothing.
    out_path.parent.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    # Off a terminal no live display (an error line must stand alone on stderr); the final
    # state is printed once after training instead.
    live = show_progress and console.is_terminal
    # Two rows: epochs overall, and the steps of the current epoch with their ETA.
    with Progress(TextColumn("[bold]train[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not live) as bar:
        task = bar.add_task(model, total=epochs, unit="epochs")
        steps = bar.add_task("epoch 1", total=None, unit="steps")

        t_start = time.perf_counter()

        def on_epoch(epoch: int, loss: float, val: float) -> None:
            bar.update(task, completed=epoch, description=f"{model} loss {loss:.3f} val acc {val:.4f}")
            done = epoch - resumed_from
            per = (time.perf_counter() - t_start) / max(done, 1)
            # Off a terminal (a background run's log) a slow epoch gets one line with the ETA;
            # quick runs print nothing, so an error after them stays the only stderr line.
            if show_progress and not live and per >= 10.0:
                console.print(f"epoch {epoch}/{epochs} loss {loss:.4f} val acc {val:.4f} "
                              f"{per:.0f} s/epoch eta {per * (epochs - epoch) / 60:.1f} min", highlight=False)
            if epoch < epochs:
                bar.reset(steps, total=None, description=f"epoch {epoch + 1}")

        def on_step(step: int, total: int) -> None:
            bar.update(steps, completed=step, total=total)

        try:
            if resumed_from:
                bar.update(task, completed=resumed_from, description=f"{model} resumed after epoch {resumed_from}")
            result = train_model(net, splits, config, on_epoch=on_epoch, on_step=on_step,
                                 state_path=state_path, device=dev)
        except Exception:
            bar.live.transient = True  # the error line stands alone on stderr
            raise
    meta = {
        "model": model, "data": data, "data_root": data_root, "num_classes": splits.num_classes,
        "input_shape": list(shape), "seed": seed,
        "train": {**config.__dict__, "augment": result.augment, "schedule": result.schedule},
        "val_acc": result.val_acc, "test_acc": result.test_acc, "norm_stats": splits.norm_stats,
        "history": result.history, "seconds": round(result.seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(epochs, 1), 2), "torch": torch.__version__,
        "machine": platform.machine(), "checkpoint": str(out_path), "resumed_after_epoch": resumed_from,
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
    }
    save_checkpoint(net, out_path, meta)
    state_path.unlink(missing_ok=True)
    if show_progress and not live:
        console.print(bar.get_renderable())
    keys = ["model", "data", "seed", "val_acc", *(["test_acc"] if result.test_acc is not None else []),
            "seconds", "checkpoint"]
    return {k: meta[k] for k in keys}


def _check_state(state_path: Path, config: TrainConfig, force: bool) -> int:
    """Epochs an interrupted run already finished (0 when there is none to continue).

    A state written by other settings is refused (it would silently mix two trainings) unless
    ``force``, which discards it.
    """
    from dataclasses import asdict

    if not state_path.exists():
        return 0
    try:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is reported the same way
        if force:
            state_path.unlink()
            return 0
        raise UserInputError(f"training state {str(state_path)!r} cannot be read ({type(exc).__name__}); "
                             "remove it or pass --force to start over") from None
    if saved.get("config") != asdict(config):
        if force:
            state_path.unlink()
            return 0
        raise UserInputError(
            f"training state {str(state_path)!r} belongs to an interrupted run with other settings; "
            "repeat that run's command to continue it, or pass --force to start over")
    return int(saved.get("epoch", 0))
