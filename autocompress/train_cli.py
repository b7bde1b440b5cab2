"""``autocompress train``: build, train and save a base model with a progress bar and a metrics file."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from autocompress.data import load_data
from autocompress.errors import UserInputError, check_writable
from autocompress.models import create_model, default_input_shape
from autocompress.training import TrainConfig, save_checkpoint, train_model


def run_train(*, model: str, data: str, data_root: str | None = None, epochs: int = 10, lr: float = 0.05,
              batch_size: int = 64, seed: int = 0, out: str | None = None, force: bool = False,
              show_progress: bool = True, augment: bool | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data`` and write ``out`` plus ``out.json``; returns the metrics record.

    ``augment`` None takes the data set's default (see ``DataSplits.augmentation``). The record
    holds ``test_acc`` (top-1 on the held-out split) next to ``val_acc`` when the data has one.
    """
    out_path = Path(out or f"runs/base-{model.replace(':', '_').replace('/', '_')}-{data.replace(':', '_').replace('/', '_')}-{seed}.pt")
    if out_path.exists() and not force:
        raise UserInputError(f"--out {str(out_path)!r} already exists; pass --force to overwrite it or choose another path")
    # Everything that can be checked is checked before the first epoch: the output place (a
    # read-only or full disk must not be found out after training), the model, the data.
    check_writable(out_path, "--out")
    check_writable(out_path.with_name(out_path.name + ".json"), "--out")
    probe = create_model(model, num_classes=10)
    shape = default_input_shape(model, probe)
    splits = load_data(data, root=data_root, input_shape=shape, seed=seed)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    net = create_model(model, num_classes=splits.num_classes)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, augment=augment)

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

        def on_epoch(epoch: int, loss: float, val: float) -> None:
            bar.update(task, completed=epoch, description=f"{model} loss {loss:.3f} val acc {val:.4f}")
            if epoch < epochs:
                bar.reset(steps, total=None, description=f"epoch {epoch + 1}")

        def on_step(step: int, total: int) -> None:
            bar.update(steps, completed=step, total=total)

        try:
            result = train_model(net, splits, config, on_epoch=on_epoch, on_step=on_step)
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
        "machine": platform.machine(), "checkpoint": str(out_path),
    }
    save_checkpoint(net, out_path, meta)
    if show_progress and not live:
        console.print(bar.get_renderable())
    keys = ["model", "data", "seed", "val_acc", *(["test_acc"] if result.test_acc is not None else []),
            "seconds", "checkpoint"]
    return {k: meta[k] for k in keys}
