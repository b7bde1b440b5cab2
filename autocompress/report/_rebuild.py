"""Rebuilding a run's problem and one point's compressed model exactly as the search scored it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError
from autocompress.point_finetune import scored_model  # noqa: F401 - re-exported for report callers
from autocompress.rundir import recorded_checkpoint

if TYPE_CHECKING:
    from autocompress.problem import Problem
    from autocompress.rundir import RunRecord


#: Problems rebuilt in this process, keyed by run directory and spec: ``report``, ``export`` and
#: ``finetune`` of one run in one process discover the space and load the data once.
_PROBLEMS: dict[tuple[str, str, str], Problem] = {}
_MAX_CACHED = 2


def rebuild_problem(run: RunRecord, *, progress: bool = False, device: str | None = None) -> Problem:
    """The run's ``Problem``: the same model, checkpoint (or cached base model), data split and seed.

    Settings come from ``RUN/spec.json``; those ``Problem.build`` does not take are ignored. The
    result is memoised per process (compression never modifies ``problem.model``).
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``): where the evaluator recalibrates,
    fine-tunes and scores; None: the run's own ``device`` setting.
    """
    import os

    key = (str(run.path.resolve()), json.dumps(run.spec, sort_keys=True, default=str),
           os.environ.get("AUTOCOMPRESS_CACHE", ""))
    if key not in _PROBLEMS:
        while len(_PROBLEMS) >= _MAX_CACHED:
            _PROBLEMS.pop(next(iter(_PROBLEMS)))
        _PROBLEMS[key] = _build(run, progress)
    problem = _PROBLEMS[key]
    if device is not None:
        from autocompress.devices import resolve_device

        problem.evaluator.device = resolve_device(device)
    return problem


def _build(run: RunRecord, progress: bool) -> Problem:
    if "_schema_version" in run.spec:
        # A spec written by the search engine: rebuild exactly as the search built it.
        from autocompress.search.runner import build_problem
        from autocompress.search.storage import read_spec

        stored = read_spec(run.path)
        if stored is not None:
            # The base model the search used: its checkpoint (a cached one when the spec named
            # none) while that file exists, so a moved or cleared cache does not change weights.
            checkpoint = None
            if stored.checkpoint is None:
                recorded = recorded_checkpoint(run.path)
                if recorded is not None and Path(recorded).is_file():
                    checkpoint = recorded
            used = run.spec.get("round_to_used")
            if stored.round_to == "auto" and isinstance(used, int) and not isinstance(used, bool):
                # The channel multiple the search resolved, not this machine's: the same models.
                import dataclasses

                stored = dataclasses.replace(stored, round_to=used)
            return build_problem(stored, checkpoint=checkpoint, progress=progress)
    return _build_from_settings(run, progress)


def _build_from_settings(run: RunRecord, progress: bool) -> Problem:
    """Fallback for a spec without the engine's schema marker: map its keys onto ``Problem.build``."""
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.problem import Problem

    spec = dict(run.spec)
    if not isinstance(spec.get("model"), str):
        raise UserInputError(f"{str(run.path / 'spec.json')!r} names no model; cannot rebuild the run")
    kwargs: dict[str, Any] = {k: spec[k] for k in (
        "checkpoint", "data", "data_root", "seed", "max_prune", "round_to", "importance",
        "num_classes", "input_shape", "val_size", "calib_size",
    ) if spec.get(k) is not None}
    if spec.get("knobs"):
        kwargs["knobs"] = tuple(spec["knobs"])
    if spec.get("train_epochs") is not None:
        kwargs["train_epochs"] = int(spec["train_epochs"])
    if isinstance(spec.get("evaluator"), dict):
        kwargs["evaluator"] = EvaluatorConfig.from_dict(spec["evaluator"])
    accepted = set(inspect.signature(Problem.build).parameters)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return Problem.build(spec["model"], progress=progress, **kwargs)
