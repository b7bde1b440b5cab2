"""The fine-tune records of a run (``RUN/finetune/point-<id>[-n].json`` next to their weights):
the latest of a point, and those of a front that belong to its points' policies."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autocompress.rundir._files import FINETUNE_DIR, Candidate
from autocompress.rundir._record import PolicyReader, _finite_or_none


def safe_point_name(point_id: str | int) -> str:
    """A point id as it appears in file names (``point-<id>.json``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(point_id))


def finetune_record_files(directory: Path, point_id: str | int) -> list[tuple[int, Path]]:
    """``(n, path)`` of ``point-<id>.json`` (n = 1) and ``point-<id>-<n>.json``, oldest first."""
    safe = safe_point_name(point_id)
    out = []
    for f in directory.glob(f"point-{safe}*.json"):
        suffix = f.stem[len(f"point-{safe}"):]
        if suffix == "":
            out.append((1, f))
        elif suffix.startswith("-") and suffix[1:].isdigit():
            out.append((int(suffix[1:]), f))
    return sorted(out)


def latest_finetune(run_dir: str | Path, point_id: str | int) -> dict[str, Any] | None:
    """The most recent fine-tune record of a point (``RUN/finetune/point-<id>[-n].json``), or None.

    Only a record whose weights file (same stem, ``.pt``) exists counts; ``weights_path`` and
    ``record_path`` are set to where they are now.
    """
    directory = Path(run_dir) / FINETUNE_DIR
    for _, path in reversed(finetune_record_files(directory, point_id)):
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


def _finetuned(path: Path, front: Sequence[Candidate], read_policy: PolicyReader
               ) -> dict[str, dict[str, Any]]:
    """The latest fine-tune record of each front point that has one for the same policy."""
    if not (path / FINETUNE_DIR).is_dir():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for p in front:
        rec = latest_finetune(path, p.id)
        if rec is None:
            continue
        try:
            policy = rec["policy"]  # written by to_dict(): anything else is not this point's
            same = isinstance(policy, Mapping) and "_type" in policy and read_policy(policy) == p.policy
        except Exception:  # noqa: BLE001 - a record we cannot read as a policy is not this point's
            same = False
        if same and _finite_or_none(rec.get("acc_after")) is not None:
            out[p.id] = rec
    return out
