"""``Problem``: a trained base model, its data, its compression space and its evaluator, from settings.

The env, the searchers and the CLI all start from a ``Problem``; building one trains the base
model once (or loads a checkpoint) and reuses the trained model from the cache afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from autocompress.compression import prune
from autocompress.compression.space import DEFAULT_KNOBS  # the knob registry's defaults
from autocompress.data import DataSplits, load_data
from autocompress.devices import resolve_device
from autocompress.errors import UserInputError
from autocompress.evaluators import CompressionEvaluator, EvalCache, EvalResult, EvaluatorConfig
from autocompress.models import create_model, default_input_shape, load_checkpoint
from autocompress.training import (
    TrainConfig,
    base_model_key,
    save_checkpoint,
    train_model,
)
from autocompress.training import cache_dir as default_cache_dir

if TYPE_CHECKING:
    from autocompress.compression import CompressionSpace


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent builders train a base model only once.

    The lock file is removed when the holder is done, whether the build succeeded or failed, so
    the cache keeps no empty lock files. Unlinking a file others may be waiting on is made safe the
    usual way: a waiter that gets the lock checks that the path still names the file it locked, and
    starts over on a fresh file when the holder removed (or replaced) it meanwhile. The removal
    happens while the lock is still held, so at most one process ever works under ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no lock, atomic writes still hold
        yield
        return
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - closed below, after the unlink
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            current = os.stat(path).st_ino
        except FileNotFoundError:
            fh.close()  # removed by the previous holder: lock the new file instead
            continue
        except BaseException:
            fh.close()
            raise
        if current == os.fstat(fh.fileno()).st_ino:
            break
        fh.close()  # the path now names another file: lock that one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fh.close()


@dataclass
class Problem:
    """Everything a compression search needs, built once from settings.

    Attributes:
        model: the trained base model (eval mode; never modified by compression).
        model_name: registry name (or class name of a module passed in).
        data: deterministic train / calib / val splits.
        space: the model's ``CompressionSpace``.
        evaluator: a ``CompressionEvaluator`` over model, space and data (with an on-disk cache).
        example_input: one input sample, shape ``(1, C, H, W)``.
        checkpoint_path: where the base model's weights live (given or cached), if anywhere.
        seed: the seed used for splits, initialisation and training.
        settings: the build arguments, for reports and for rebuilding the same problem.
    """

    model: nn.Module
    model_name: str
    data: DataSplits
    space: CompressionSpace
    evaluator: CompressionEvaluator
    example_input: Tensor
    checkpoint_path: Path | None = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    _base: EvalResult | None = field(default=None, repr=False)

    @property
    def base(self) -> EvalResult:
        """The uncompressed model's result (identity policy, full fidelity), computed lazily."""
        if self._base is None:
            self._base = self.evaluator.base_result()
        return self._base

    @property
    def num_classes(self) -> int:
        """Number of classes of the task."""
        return int(self.data.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Input shape (C, H, W) the model is fed."""
        return tuple(self.example_input.shape[1:])

    @classmethod
    def build(
        cls,
        model: str | nn.Module = "resnet20",
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        data: str = "digits",
        data_root: str | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        knobs: Sequence[str] = DEFAULT_KNOBS,
        max_prune: float = 0.8,
        round_to: int | str = 1,
        importance: str = "l1",
        train_epochs: int = 10,
        evaluator: EvaluatorConfig | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        val_size: int | float = 0.2,
        calib_size: int = 256,
        progress: bool | None = None,
        device: str | torch.device = "cpu",
    ) -> Problem:
        """Build a problem: data, trained base model, compression space and evaluator.

        Args:
            model: a registry name (``resnet20``, ``tv:resnet18``, ``pkg.mod:factory``) or a
                module; a module passed in is used as it is (taken to be trained) unless a
                checkpoint is given.
            checkpoint: a ``state_dict`` (or TorchScript) file to load into the model; without
                one a registry model is trained on ``data`` for ``train_epochs`` epochs, once,
                and cached under ``cache_dir/base/``.
            data: data set name (``digits`` is bundled); ``data_root`` points at local files.
            seed: seed of the data split, the initialisation and the training run.
            num_classes: classifier size (default: the data set's class count; must match it).
            input_shape: (C, H, W) fed to the model (default: the model's own).
            knobs, max_prune, round_to, importance: passed to ``CompressionSpace.from_model``
                (``round_to="auto"``: ``compression.hardware.auto_round_to`` of the model).
            train_epochs: epochs of base-model training when no checkpoint is given.
            evaluator: evaluator settings (default ``EvaluatorConfig()``).
            cache_dir: cache root for base models, lookup tables and results
                (default ``$AUTOCOMPRESS_CACHE`` or ``~/.cache/autocompress``).
            val_size, calib_size: validation size (fraction or count) and calibration samples.
            progress: show progress bars (default: when stderr is a terminal).
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``autocompress.devices``): where
                the base model is trained and candidates are recalibrated, fine-tuned and
                scored; checked before anything is loaded or trained. A base model trained on
                CUDA is cached apart from a CPU-trained one.

        Example:
            >>> problem = Problem.build("resnet20", data="digits", seed=0)  # doctest: +SKIP
            >>> problem.evaluator.evaluate(problem.space.uniform(prune=0.5)).metrics  # doctest: +SKIP
        """
        from autocompress.compression import CompressionSpace

        if isinstance(train_epochs, bool) or not isinstance(train_epochs, int) or train_epochs < 0:
            raise UserInputError(f"train_epochs={train_epochs!r}; expected an integer >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserInputError(f"seed={seed!r} is not an integer")
        dev = resolve_device(device, "device")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # cuda-events latency and any bare "cuda" mean this GPU
        show = sys.stderr.isatty() if progress is None else bool(progress)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        config = EvaluatorConfig() if evaluator is None else evaluator

        if isinstance(model, nn.Module):
            net: nn.Module | None = model
            name = type(model).__name__
            prune.check_importance(importance, net)
        elif isinstance(model, str) and model:
            net, name = None, model
        else:
            raise UserInputError(f"model={model!r}; expected a model name or an nn.Module")

        if input_shape is None:
            probe = net if net is not None else create_model(name, num_classes=num_classes or 10)
            shape = tuple(default_input_shape(name, probe))
        else:
            shape = tuple(int(s) for s in input_shape)
        splits = load_data(data, root=data_root, input_shape=shape, val_size=val_size,  # type: ignore[arg-type]
                           calib_size=calib_size, seed=seed)
        if num_classes is not None and num_classes != splits.num_classes:
            raise UserInputError(
                f"num_classes={num_classes} does not match data set {data!r}, which has "
                f"{splits.num_classes} classes"
            )
        n_cls = splits.num_classes

        ckpt_path: Path | None = Path(checkpoint) if checkpoint is not None else None
        if net is None:
            torch.manual_seed(seed)
            net = create_model(name, num_classes=n_cls)
            prune.check_importance(importance, net)  # before training: bn needs a BatchNorm
            if ckpt_path is None and train_epochs > 0:
                ckpt_path = _trained_base(net, name, splits, data=data, data_root=data_root,
                                          seed=seed, epochs=train_epochs, val_size=val_size,
                                          calib_size=calib_size, shape=shape, root=root,
                                          progress=show, device=dev)
            elif ckpt_path is not None:
                load_checkpoint(net, ckpt_path)
        elif ckpt_path is not None:
            load_checkpoint(net, ckpt_path)
        net.eval()

        example_input = splits.calib[0][0].unsqueeze(0).clone()
        with torch.no_grad():
            try:
                out = net(example_input)
            except Exception as exc:  # noqa: BLE001 - report which shape did not fit
                raise UserInputError(
                    f"model {name!r} does not run on input shape {shape}: {type(exc).__name__}: {exc}"
                ) from None
        if out.dim() != 2 or out.shape[1] != n_cls:
            raise UserInputError(
                f"model {name!r} outputs shape {tuple(out.shape)}; expected (1, {n_cls}) for "
                f"data set {data!r}"
            )

        if round_to == "auto":  # the CPU's SIMD width, as far as the narrowest layer allows
            from autocompress.compression.hardware import auto_round_to

            round_to = auto_round_to(net, n_cls)
        space = CompressionSpace.from_model(net, example_input, knobs=tuple(knobs),
                                            max_prune=max_prune, round_to=round_to,
                                            importance=importance)
        cache = EvalCache(root / "evals" / "evals.sqlite")
        ev = CompressionEvaluator(net, space, splits, config, example_input=example_input,
                                  cache=cache, lut_dir=root / "lut", progress=show,
                                  data_source=_data_source(data, data_root), device=dev)
        settings = {
            "model": name, "checkpoint": str(ckpt_path) if ckpt_path else None, "data": data,
            "data_root": data_root, "seed": seed, "num_classes": n_cls, "input_shape": list(shape),
            "knobs": list(knobs), "max_prune": max_prune, "round_to": round_to,
            "importance": importance, "train_epochs": train_epochs, "evaluator": config.to_dict(),
            "val_size": val_size, "calib_size": calib_size, "cache_dir": str(root),
            "module": isinstance(model, nn.Module), "device": str(device),
        }
        return cls(model=net, model_name=name, data=splits, space=space, evaluator=ev,
                   example_input=example_input, checkpoint_path=ckpt_path, seed=seed,
                   settings=settings)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **overrides: Any) -> Problem:
        """Rebuild a problem from ``problem.settings`` (e.g. in a worker process).

        The base model comes back from its checkpoint (the cached one when it was trained), so
        nothing is trained again; ``overrides`` replace individual build arguments.
        """
        kw = {k: v for k, v in settings.items() if k != "module"}
        if settings.get("module"):
            raise UserInputError(
                f"problem was built from a module object ({settings['model']!r}); "
                "it cannot be rebuilt from settings, pass the module to Problem.build"
            )
        if isinstance(kw.get("evaluator"), dict):
            kw["evaluator"] = EvaluatorConfig.from_dict(kw["evaluator"])
        kw.update(overrides)
        return cls.build(**kw)

    @classmethod
    def default(cls, **overrides: Any) -> Problem:
        """A tiny problem that builds in seconds: ``test_resnet`` (ResNet-8, width 8) on digits.

        Used by ``gymnasium.make("autocompress/Compression-v0")`` without arguments and by
        quick demos; any ``build`` argument can be overridden. Latency is off by default here
        (a model this small is bound by call overhead, and its lookup table would cost more than
        the problem itself); pass ``evaluator=EvaluatorConfig()`` to predict it.
        """
        kwargs: dict[str, Any] = {"model": "test_resnet", "data": "digits", "train_epochs": 8,
                                  "evaluator": EvaluatorConfig(latency="none")}
        kwargs.update(overrides)
        return cls.build(**kwargs)

    def __repr__(self) -> str:
        return (f"Problem(model={self.model_name!r}, data={self.data.name!r}, "
                f"points={len(self.space.decision_points)}, seed={self.seed})")


def _data_source(data: str, data_root: str | None) -> str:
    """The data's name with any path resolved: part of the evaluation cache key."""
    if data.startswith("imagefolder:"):
        data = "imagefolder:" + str(Path(data.split(":", 1)[1]).expanduser().resolve())
    if data_root:
        data = f"{data}@{Path(data_root).expanduser().resolve()}"
    return data


def _trained_base(
    net: nn.Module, name: str, splits: DataSplits, *, data: str, data_root: str | None, seed: int,
    epochs: int, val_size: int | float, calib_size: int, shape: tuple[int, ...], root: Path,
    progress: bool, device: torch.device = torch.device("cpu"),
) -> Path:
    """Train ``net`` in place, or load the cached result of an identical earlier run."""
    config = TrainConfig(epochs=epochs, seed=seed)
    extra = {"data_root": data_root, "num_classes": splits.num_classes, "input_shape": list(shape),
             "val_size": val_size, "calib_size": calib_size}
    if splits.norm_stats is not None:  # standardised with training-split statistics, own recipe
        extra["recipe"] = {"schedule": splits.schedule, "augment": splits.augment, "norm": "train-split"}
    if device.type != "cpu":  # bf16 autocast on a GPU trains another model; CPU keys unchanged
        extra["device"] = device.type
    key = base_model_key(name, data, config, extra)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    path = root / "base" / f"{safe}-{key}.pt"
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                load_checkpoint(net, path)
                return path
            except UserInputError:
                pass  # unreadable or stale file: train again and overwrite it
        result = _train_with_progress(net, splits, config, name, progress, device)
        meta = {"model": name, "data": data, "seed": seed, "val_acc": result.val_acc,
                "train": config.__dict__, **extra, "seconds": round(result.seconds, 2)}
        save_checkpoint(net, path, meta)
    return path


def _train_with_progress(net: nn.Module, splits: DataSplits, config: TrainConfig, name: str,
                         progress: bool, device: torch.device) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]train base[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} epochs"), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(name, total=config.epochs)

        def on_epoch(epoch: int, loss: float, val: float) -> None:
            bar.update(task, completed=epoch, description=f"{name} loss {loss:.3f} val acc {val:.3f}")

        return train_model(net, splits, config, on_epoch=on_epoch, device=device)
