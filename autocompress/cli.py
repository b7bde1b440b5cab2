"""The ``autocompress`` command line: parse, delegate to the library, map errors to exit codes.

Bad user input (``UserInputError``) prints one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from autocompress.errors import UserInputError

EXIT_USAGE = 2


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library input errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted: state saved; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autocompress")
def main() -> None:
    """AutoML compression-policy search for PyTorch models."""


@main.command()
@click.option("--model", default="resnet20", show_default=True, help="built-in name, tv:NAME, or package.module:factory")
@click.option("--data", default="digits", show_default=True, help="digits, mnist, fashion-mnist, cifar10, cifar100, imagefolder:PATH")
@click.option("--data-root", default=None, help="directory holding a local data set (never downloaded)")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default=None, help="checkpoint path [default: runs/base-MODEL-DATA-SEED.pt]")
@click.option("--force", is_flag=True, help="overwrite an existing checkpoint at --out")
@_friendly
def train(model: str, data: str, data_root: str | None, epochs: int, lr: float, batch_size: int,
          seed: int, out: str | None, force: bool) -> None:
    """Train a base model (a model must be trained before it is compressed)."""
    from autocompress.train_cli import run_train

    result = run_train(model=model, data=data, data_root=data_root, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, out=out, force=force)
    click.echo(json.dumps(result, indent=2))


@main.command("models")
@click.argument("pattern", default="*")
@click.option("--torchvision", is_flag=True, help="also list tv:* torchvision classifiers")
def models_cmd(pattern: str, torchvision: bool) -> None:
    """List available models."""
    from autocompress.models import list_models, model_entry

    for name in list_models(pattern, torchvision=torchvision):
        if name.startswith("tv:"):
            click.echo(name)
        else:
            e = model_entry(name)
            click.echo(f"{name:18s} input {'x'.join(map(str, e.input_shape)):9s} {e.description}")


@main.command("datasets")
def datasets_cmd() -> None:
    """List available data sets."""
    from autocompress.data import dataset_entry, list_datasets

    for name in list_datasets():
        click.echo(f"{name:15s} {dataset_entry(name).description}")
    click.echo(f"{'imagefolder:PATH':15s} an ImageFolder directory (one sub-directory per class)")


if __name__ == "__main__":  # pragma: no cover
    main()
