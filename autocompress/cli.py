"""The ``autocompress`` command line: parse, delegate to the library, map errors to exit codes.

Bad user input (``UserInputError``) prints one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from autocompress.errors import CheckFailedError, UserInputError, disk_error_line, is_disk_error
from autocompress.rundir import read_spec_dict
from autocompress.search.base import DEFAULT_STRATEGY, list_searchers

EXIT_USAGE = 2
DEVICE_HELP = ("auto (CUDA when available), cpu, cuda or cuda:N; training runs under bf16 autocast "
               "on CUDA, accuracy figures are fp32")


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library input errors, and a disk that cannot be written, into one line on stderr and
    exit status 2 (a full, read-only or forbidden place is the user's to fix, not a bug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Warnings raised while the command runs are held back: after a failure the error line
        # stands alone (a torch deprecation notice is not the user's problem), after success
        # each distinct one is printed once.
        with warnings.catch_warnings(record=True) as caught:
            try:
                result = fn(*args, **kwargs)
            except UserInputError as exc:
                click.echo(f"error: {_one_line(str(exc))}", err=True)
                sys.exit(EXIT_USAGE)
            except CheckFailedError as exc:
                click.echo(f"error: {_one_line(str(exc))}", err=True)
                sys.exit(1)
            except OSError as exc:
                if not is_disk_error(exc):
                    raise
                click.echo(f"error: {disk_error_line(exc)}", err=True)
                sys.exit(EXIT_USAGE)
            except sqlite3.OperationalError as exc:
                # SQLite reports a full or read-only disk in words, not errno (the evaluation
                # cache, an sqlite study storage).
                text = str(exc)
                if not any(w in text for w in ("disk", "readonly", "read-only", "unable to open")):
                    raise
                click.echo(f"error: an SQLite database cannot be written: {_one_line(text)} "
                           "(a full or read-only disk?)", err=True)
                sys.exit(EXIT_USAGE)
            except KeyboardInterrupt:
                click.echo("interrupted: state saved; re-run the same command to resume", err=True)
                sys.exit(130)
        seen: set[str] = set()
        for w in caught:
            line = f"warning: {w.category.__name__}: {_one_line(str(w.message))}"
            if line not in seen:
                seen.add(line)
                click.echo(line, err=True)
        return result

    return wrapper


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _OneLineErrors(click.Group):
    """A group whose usage errors (bad option values, unknown options) are one ``error:`` line
    and exit status 2, like the library's own input errors, instead of click's usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; in standalone mode, exit with the command's status."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            click.echo(f"error: {where}{_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--force", is_flag=True, help="overwrite an existing checkpoint at --out (and discard an interrupted run's OUT.partial of other settings)")
@click.option("--augment/--no-augment", default=None, help="random crops (and flips where classes allow) on training batches [default: on for photos, off for digits]")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--slimming-l1", "slimming_l1", default=0.0, show_default=True, type=click.FloatRange(min=0), metavar="LAMBDA", help="network slimming: add LAMBDA * sum|gamma| of the BatchNorm scales to the loss (Liu et al. use 1e-4 to 1e-5), for `search --importance bn`; 0 = off")
@_friendly
def train(model: str, data: str, data_root: str | None, epochs: int, lr: float, batch_size: int,
          seed: int, out: str | None, force: bool, augment: bool | None, device: str,
          slimming_l1: float) -> None:
    """Train a base model (a model must be trained before it is compressed).

    After every epoch the training state is kept in OUT.partial: the same command run again after
    an interruption continues from the last finished epoch, with the same result.
    """
    from autocompress.train_cli import run_train

    result = run_train(model=model, data=data, data_root=data_root, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, out=out, force=force, augment=augment,
                       device=device, slimming_l1=slimming_l1)
    click.echo(json.dumps(result, indent=2))


def _stdout_console() -> Any:
    """Tables go to stdout; when it is not a terminal, use a wide page instead of 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _search_progress(console: Any) -> tuple[Any, Callable[[Any], None]]:
    """A rich progress bar fed by the runner's ``SearchProgress`` callbacks."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("[bold]search[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("feasible {task.fields[feasible]}  best acc {task.fields[best]}"),
        TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[msg]}"),
        console=console, transient=False,
    )
    task = bar.add_task("search", total=None, feasible=0, best="-", eta="-", msg="")

    def update(p: Any) -> None:
        fields: dict[str, Any] = {"feasible": p.feasible, "msg": p.message[:60] if p.message else ""}
        if p.best_acc is not None:
            fields["best"] = f"{p.best_acc:.4f}"
        if p.eta_s is not None:
            fields["eta"] = f"{int(p.eta_s) // 60}:{int(p.eta_s) % 60:02d}"
        if p.total:
            bar.update(task, total=p.total, completed=min(p.done, p.total), **fields)
        else:
            bar.update(task, **fields)

    return bar, update


@main.command()
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False), help="YAML preset (see configs/)")
@click.option("--model", default=None, help="built-in name, tv:NAME, or package.module:factory [default: resnet20]")
@click.option("--checkpoint", default=None, help="trained weights of --model (state_dict or TorchScript); default: train and cache a base model")
@click.option("--data", default=None, help="digits (default), mnist, fashion-mnist, cifar10, cifar100, imagefolder:PATH")
@click.option("--data-root", default=None, help="directory holding a local data set")
@click.option("--budget", "budget", multiple=True, help="hard budget METRIC=VALUE: macs/flops/params=50M|50%, size=1.5MB, latency=2ms, acc-drop=1%")
@click.option("--soft-budget", "soft_budget", multiple=True, help="soft budget (penalised, not excluded), same form as --budget")
@click.option("--objective", "objective", multiple=True, help="objective METRIC[:min|max]: acc, acc_top5, macs, flops, params, size, bops, latency")
@click.option("--knob", "knob", multiple=True, help="compression knobs to search: prune, w_bits, a_bits, rank, sparsity, share_bits, proj_rank, pow2_bits [default: prune]")
@click.option("--strategy", default=None, help=f"{DEFAULT_STRATEGY} (default), "
              + ", ".join(n for n in list_searchers() if n != DEFAULT_STRATEGY))
@click.option("--set", "set_", multiple=True, help="strategy setting KEY=VALUE (repeatable)")
@click.option("--eval-set", "evaluator_setting", multiple=True, help="evaluator setting KEY=VALUE, e.g. finetune_steps=20")
@click.option("--trials", default=None, type=int, help="candidates to evaluate [default: 40]")
@click.option("--seed", default=None, type=int, help="seed of the search, base training and subsets [default: 0]")
@click.option("--multi-fidelity/--no-multi-fidelity", default=None, help="score cheaply first, promote the best to full fidelity")
@click.option("--max-prune", default=None, type=float, help="largest prune ratio per layer [default: 0.8]")
@click.option("--round-to", default=None, help="kept channel counts are multiples of this: auto = the CPU's SIMD width in floats (16 AVX-512, 8 AVX2), 1 = exact ratios [default: auto]")
@click.option("--importance", default=None, help="which channels pruning removes: l1 (filter L1 norm), l2, taylor, bn (smallest BatchNorm |gamma|, network slimming) [default: l1]")
@click.option("--storage", default=None, help="Optuna storage: journal, sqlite, a *.journal path, or a storage URL (default: RUN/ledger.jsonl, RUN/study.journal for nsga2/tpe)")
@click.option("--study-name", default=None, help="Optuna study name (processes sharing storage and name share work)")
@click.option("--out", default=None, help="run directory [default: runs/MODEL-DATA-STRATEGY-sSEED]")
@click.option("--backend", default=None, type=click.Choice(["local", "ray"]), help="run trials here or as Ray Tune trials")
@click.option("--workers", default=None, type=int, help="concurrent Ray trials (--backend ray)")
@click.option("--ray-address", default=None, help="existing Ray cluster, 127.0.0.1:PORT or auto (default: start a local one)")
@click.option("--gpus-per-trial", "gpus_per_trial", default=None, type=float, metavar="F", help="GPUs each Ray trial reserves, fractions share one (--backend ray) [default: 0]")
@click.option("--cpus-per-trial", "cpus_per_trial", default=None, type=float, metavar="F", help="CPUs each Ray trial reserves (--backend ray) [default: --threads]")
@click.option("--device", default=None, help=DEVICE_HELP + " [default: auto]")
@click.option("--latency-backend", "latency_backend", default=None, help="where latency is timed: torch, ort (default), ort-int8 (this CPU), torch-cuda (the GPU, CUDA events)")
@click.option("--resume", is_flag=True, default=None, help="continue the search stored in --out (a new --trials applies; settings that change what is searched are refused)")
@click.option("--force", is_flag=True, default=None, help="start over when --out holds another search (old dir kept as OUT.old-N)")
@click.option("--finetune-top", "finetune_top", default=None, type=int, metavar="K", help="at the end, fine-tune (KD, as `finetune`) the K front points of highest search accuracy (ties: lower cost first); with --resume, those not fine-tuned yet")
@click.option("--finetune-epochs", "finetune_epochs", default=None, type=int, help="epochs of each --finetune-top fine-tune [default: 3]")
@click.option("--no-report", is_flag=True, help="skip writing pareto.png / pareto.html")
@click.option("--target", default=None, help="label column of --data csv:PATH (classic sklearn: models)")
@click.option("--trust-pickle", "trust_pickle", is_flag=True, help="allow --model sklearn:PATH.joblib (unpickling runs code from the file)")
@_friendly
def search(config: str | None, no_report: bool, set_: tuple[str, ...], **options: Any) -> None:
    """Search per-layer compression policies; writes RUN/{trials.jsonl,pareto.json,pareto.png,...}.

    With no arguments, runs the embedded default: resnet20 trained (once, then cached) on the
    bundled digits data, NSGA-II, a 50% MACs budget. With --model sklearn:... a tree ensemble is
    searched instead (trees kept, depth, threshold and leaf bits; see README "Classic ML models").
    """
    from rich.console import Console

    from autocompress.classic.models import is_classic_model

    if is_classic_model(options["model"]):
        return _classic_search(config, set_, options)
    if options["target"] is not None or options["trust_pickle"]:
        raise UserInputError("--target and --trust-pickle apply to --model sklearn:... only")
    del options["target"], options["trust_pickle"]
    from autocompress.search import SearchSpec, run_search

    options["set"] = list(set_)
    for key in ("budget", "soft_budget", "objective", "knob", "evaluator_setting"):
        options[key] = list(options[key])
    backend = options.pop("latency_backend")
    if backend is not None:  # shorthand of --eval-set latency_backend=NAME
        options["evaluator_setting"].append(f"latency_backend={backend}")
    if config is not None and not Path(config).is_file():
        raise UserInputError(f"--config {config!r} does not exist; presets live in configs/*.yaml")
    spec = SearchSpec.from_cli(config, options)
    console = Console(stderr=True)
    bar, update = _search_progress(console)
    if console.is_terminal:
        with bar:
            try:
                result = run_search(spec, progress=update)
            except Exception:
                bar.live.transient = True  # a failed setup leaves its error line alone on stderr
                raise
    else:
        # Not a terminal: no live display (rich would print a stray line even for a transient
        # bar, so an error would not stand alone); the final state is printed once on success.
        result = run_search(spec, progress=update)
        console.print(bar.get_renderable())
    out = _stdout_console()
    out.print(f"run directory: {result.run_dir}  ({result.summary()})")
    if not no_report:
        from autocompress.report import front_table, load_run, write_report

        paths = write_report(result.run_dir)
        out.print(front_table(load_run(result.run_dir)))
        if paths.finetuned is not None:
            out.print(paths.finetuned)
        out.print(f"report: {paths.png}  {paths.html}")
    elif result.finetuned:
        for res in result.finetuned:
            out.print("\n".join(res.lines()))


def _classic_search(config: str | None, set_: tuple[str, ...], options: dict[str, Any]) -> None:
    """``search --model sklearn:...``: the classic engine (autocompress.classic)."""
    from autocompress.classic.report import classic_front_table
    from autocompress.classic.search import make_spec, run_classic_search

    used = [f"--{k.replace('_', '-')}" for k, v in options.items()
            if v not in (None, (), [], False) and k not in (
                "model", "data", "target", "budget", "strategy", "trials", "seed", "out",
                "trust_pickle", "force", "resume")]
    if config is not None or set_ or used:
        raise UserInputError(f"{', '.join(used + (['--config'] if config else []) + (['--set'] if set_ else []))} "
                             "not available with --model sklearn:...; allowed: --data, --target, "
                             "--budget, --strategy, --trials, --seed, --out, --force, --resume, "
                             "--trust-pickle")
    spec = make_spec(model=options["model"], data=options["data"], target=options["target"],
                     budgets=list(options["budget"]), strategy=options["strategy"],
                     trials=options["trials"], seed=options["seed"], out=options["out"],
                     trust_pickle=options["trust_pickle"], force=bool(options["force"]),
                     resume=bool(options["resume"]))
    result = run_classic_search(spec)
    out = _stdout_console()
    out.print(f"run directory: {result.run_dir}  ({result.summary()})")
    out.print(classic_front_table(read_spec_dict(result.run_dir), result.pareto))


def _classic_run(run_dir: str) -> Any:
    """``(spec, pareto)`` of a classic run directory, else None."""
    from autocompress.rundir import read_classic_run

    return read_classic_run(run_dir)


def _resolve_point(run_dir: str, point: str) -> str:
    """``knee`` / ``best`` (highest accuracy on the front) name a point without looking its id up."""
    from autocompress.rundir import resolve_point

    return resolve_point(run_dir, point)


@main.command()
@click.argument("run_dir", type=click.Path())
@_friendly
def report(run_dir: str) -> None:
    """Write RUN/pareto.png and RUN/pareto.html and print the Pareto front as a table."""
    classic = _classic_run(run_dir)
    if classic is not None:  # classic runs: the table only (no plots yet)
        from autocompress.classic.report import classic_front_table

        _stdout_console().print(classic_front_table(*classic))
        return

    from autocompress.report import front_table, load_run, write_report

    paths = write_report(run_dir)
    for warning in paths.warnings:
        click.echo(f"warning: {warning}", err=True)
    console = _stdout_console()
    console.print(front_table(load_run(run_dir)))
    if paths.finetuned is not None:
        console.print(paths.finetuned)
    console.print(f"report: {paths.png}  {paths.html}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--point", "point", required=True, help="id of a Pareto point (see `autocompress report RUN`), or knee / best")
@_friendly
def show(run_dir: str, point: str) -> None:
    """Show a Pareto point's per-layer policy (table and bar chart) and its metrics."""
    classic = _classic_run(run_dir)
    if classic is not None:
        from autocompress.classic.report import classic_point_lines
        from autocompress.rundir import resolve_classic_point

        click.echo("\n".join(classic_point_lines(classic[0], resolve_classic_point(classic[1], point))))
        return

    from autocompress.report import show_point

    table, png = show_point(run_dir, _resolve_point(run_dir, point))
    console = _stdout_console()
    console.print(table)
    console.print(f"per-layer chart: {png}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--point", "point", required=True, help="id of a Pareto point, or knee / best")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx", "torchscript", "pt"]))
@click.option("--out", default=None, help="output file [default: RUN/export/point-ID.EXT]")
@click.option("--int8/--no-int8", default=None, help="also write an int8 ONNX model (default: for 8-bit points)")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="latency batch size")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="latency threads")
@click.option("--finetuned", is_flag=True, help="export the point's fine-tuned weights (from `autocompress finetune`)")
@click.option("--force", is_flag=True, help="overwrite an existing --out")
@click.option("--device", default="auto", show_default=True, help="where the point is rebuilt (recalibration, its short fine-tune): auto, cpu, cuda, cuda:N; the file is written and checked on the CPU")
@_friendly
def export(run_dir: str, point: str, fmt: str, out: str | None, int8: bool | None, batch: int,
           threads: int, finetuned: bool, force: bool, device: str) -> None:
    """Export a Pareto point as a really compressed model file (ONNX, TorchScript or pt)."""
    from autocompress.devices import resolve_device

    resolve_device(device)
    if _classic_run(run_dir) is not None:
        from autocompress.classic.export import export_classic_point

        if int8 or finetuned:
            raise UserInputError("--int8 and --finetuned do not apply to a classic (sklearn:) run")

        click.echo("\n".join(export_classic_point(run_dir, point, out, fmt=fmt, force=force).lines()))
        return
    from autocompress.report.export import export_point

    info = export_point(run_dir, _resolve_point(run_dir, point), fmt, out, force=force, int8=int8,
                        batch=batch, threads=threads, finetuned=finetuned, progress=True,
                        device=device)
    click.echo("\n".join(info.lines()))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--point", "point", default=None, help="id of a Pareto point, or knee / best")
@click.option("--front", is_flag=True, help="fine-tune every feasible front point")
@click.option("--top", default=None, type=int, metavar="K", help="fine-tune the K front points of highest search accuracy (ties: lower cost first)")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--kd/--no-kd", default=True, show_default=True, help="distil from the original model")
@click.option("--temperature", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--alpha", default=0.9, show_default=True, type=click.FloatRange(0, 1))
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@_friendly
def finetune(run_dir: str, point: str | None, front: bool, top: int | None, epochs: int, kd: bool,
             temperature: float, alpha: float, lr: float, seed: int, device: str) -> None:
    """Fine-tune a Pareto point's compressed model, or the front's (--front, --top K), with KD;
    records top-1 before/after (val, and test where the data has a test split)."""
    from autocompress.devices import resolve_device

    resolve_device(device)
    chosen = [name for name, given in (("--point", point is not None), ("--front", front),
                                       ("--top", top is not None)) if given]
    if len(chosen) != 1:
        raise UserInputError(f"give exactly one of --point, --front, --top K (got {', '.join(chosen) or 'none'})")
    if _classic_run(run_dir) is not None:
        raise UserInputError(f"{run_dir!r} is a classic (sklearn:) run: its points are not trained "
                             "further; finetune applies to PyTorch runs")
    if top is not None and top < 1:
        raise UserInputError(f"--top {top}; allowed: an integer >= 1")
    from autocompress.report.finetune import finetune_front, finetune_point

    if point is not None:
        results = [finetune_point(run_dir, _resolve_point(run_dir, point), epochs, kd=kd,
                                  temperature=temperature, alpha=alpha, lr=lr, seed=seed, progress=True,
                                  device=device)]
    else:
        results = finetune_front(run_dir, top=top, epochs=epochs, kd=kd, temperature=temperature,
                                 alpha=alpha, lr=lr, seed=seed, progress=True, device=device,
                                 on_point=lambda i, n, pid: click.echo(f"[{i + 1}/{n}] point {pid}", err=True))
    click.echo("\n".join(line for res in results for line in res.lines()))
    if point is None:
        from autocompress.report import load_run
        from autocompress.report.tables import finetune_table

        table = finetune_table(load_run(run_dir))
        if table is not None:
            _stdout_console().print(table)


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
