"""The run directory's file names, its atomic writes, strict JSON reading, ``Candidate`` and
the trial log (``TrialLog``); ``autocompress.rundir`` describes the files and re-exports these.

Imports only the standard library and ``autocompress.errors`` at run time (the policy type is
named for type checkers only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy

SPEC_FILE = "spec.json"
TRIALS_FILE = "trials.jsonl"
PARETO_FILE = "pareto.json"
BASE_FILE = "base.json"
JOURNAL_FILE = "study.journal"
SQLITE_FILE = "study.db"
LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".lock"
TEST_CACHE_FILE = "test_top1.json"
FINETUNE_DIR = "finetune"
EXPORT_DIR = "export"
EXPORT_LOG = "exports.jsonl"
PARETO_PNG = "pareto.png"
PARETO_HTML = "pareto.html"
#: ``_schema_version`` of ``spec.json``; a run written with another is refused, not misread.
RUN_SCHEMA_VERSION = 1
#: ``v`` of each ``trials.jsonl`` record.
TRIAL_RECORD_VERSION = 1


# -- atomic writes ---------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it becomes ``path``.

    The caller writes the whole file to the yielded path (any writer that takes a file name).
    When the block ends normally the file is fsync'd and renamed onto ``path`` (with
    ``exclusive``, hard-linked instead, so an existing ``path`` is never replaced and
    ``FileExistsError`` is raised); when it raises, the temporary file is removed and ``path``
    is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    # Created here (mode 0o666 less the umask, like a plain open) so that the final file's
    # permissions are the usual ones, not mkstemp's 0o600.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync(tmp)
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """``path`` holds exactly ``data`` afterwards, or (on any error) what it held before."""
    with atomic_path(path, exclusive=exclusive) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, exclusive: bool = False) -> Path:
    """Text version of ``write_bytes_atomic`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode("utf-8"), exclusive=exclusive)


def atomic_write_text(path: Path, text: str) -> None:
    """``write_text_atomic`` under the name the search has always used."""
    write_text_atomic(path, text)


# -- JSON ------------------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    """Non-finite floats -> None, tuples -> lists, recursively (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON; a missing, unreadable, empty or truncated file is a user error.

    ``what`` says what the file is for (it ends the one-line message).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserInputError(f"{str(path)!r} does not exist: {what}") from None
    except UnicodeDecodeError:
        raise UserInputError(f"{str(path)!r} is not valid JSON (not UTF-8 text); {what}") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {str(path)!r} ({exc.strerror or exc}); {what}") from None
    if not text.strip():
        raise UserInputError(f"{str(path)!r} is empty (a search killed while writing it?); {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{str(path)!r} is not valid JSON ({exc}; truncated?); {what}") from None
    except RecursionError:
        raise UserInputError(f"{str(path)!r} is nested too deeply to be a run file; {what}") from None


# -- one candidate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One evaluated candidate: a trial of the search, a line of ``trials.jsonl`` or a point of
    ``pareto.json``.

    ``id`` is the Optuna trial number (also the point id in ``pareto.json``): an ``int`` in what
    the search returns, a ``str`` in what is read back from a run directory, so that
    ``--point 7`` and a JSON id ``7`` name the same point.

    Attributes:
        id: the candidate's id (see above).
        policy: the compression policy.
        metrics: the evaluation's metrics (predicted costs for ``infeasible``).
        status: ``ok``, ``failed`` or ``infeasible`` (see ``search.records.TRIAL_STATUSES``).
        feasible: meets every hard budget (and was evaluated successfully).
        fidelity: ``full``, ``low`` (not promoted) or ``predicted`` (not evaluated).
        violations: hard budget name -> normalised violation (> 0 breaks it).
        error: why a failed candidate failed.
        timings: seconds per evaluation phase.
        worker: the process that evaluated it.
        extra: every other key of a record read from a file (``test_acc``, ``qom``, ...).
    """

    id: int | str
    policy: CompressionPolicy
    metrics: dict[str, float]
    status: str = "ok"
    feasible: bool = True
    fidelity: str = "full"
    violations: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    worker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the candidate was evaluated successfully and has finite metrics."""
        return self.status == "ok" and all(
            v is not None and math.isfinite(v) for v in self.metrics.values()
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``id``, ``policy`` as its dict, ``metrics`` ..., then ``extra``'s keys)."""
        return jsonable({
            **self.extra,
            "id": self.id, "policy": self.policy.to_dict(), "metrics": self.metrics,
            "status": self.status, "fidelity": self.fidelity, "feasible": self.feasible,
            "violations": self.violations, "error": self.error, "timings": self.timings,
            "worker": self.worker,
        })


# -- trials.jsonl ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class TrialLog:
    """``RUN/trials.jsonl``: append-only, one JSON object per line, safe for concurrent writers.

    Each append opens the file with ``O_APPEND``, takes an exclusive ``flock``, writes the whole
    line with one ``write``, and ``fsync``s before releasing the lock, so a kill leaves at most
    one torn last line, which :meth:`repair` removes and :meth:`read` skips.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (strict JSON; NaN becomes null)."""
        line = json.dumps(jsonable(record), sort_keys=True, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _locked(fd):
                os.write(fd, line.encode())
                os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> bool:
        """Drop a torn last line left by a killed writer; True when something was dropped."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            with _locked(fd):
                size = os.fstat(fd).st_size
                if size == 0:
                    return False
                os.lseek(fd, max(0, size - 65536), os.SEEK_SET)
                tail = os.read(fd, 65536)
                if tail.endswith(b"\n"):
                    return False
                cut = tail.rfind(b"\n")
                new_size = size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail))
                os.ftruncate(fd, new_size)
                os.fsync(fd)
                return True
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every complete record in file order (unparseable lines are skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def read_checked(self, warnings: list[str]) -> list[tuple[int, dict[str, Any]]]:
        """``(line number, record)`` of every object in the log, for readers that must trust it.

        The search appends whole lines under a lock and fsyncs each, so a kill leaves at most one
        torn last line (no newline, not JSON): it is skipped with a warning appended to
        ``warnings``. Damage anywhere else is not a kill's signature and is a ``UserInputError``
        naming the line.
        """
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise UserInputError(f"{str(self.path)!r} is not UTF-8 text; not a trial log") from None
        except OSError as exc:
            raise UserInputError(f"cannot read {str(self.path)!r} ({exc.strerror or exc})") from None
        lines = text.split("\n")
        out: list[tuple[int, dict[str, Any]]] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            last = i == len(lines) - 1  # only a line without its newline can be the last element
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                if last:
                    warnings.append(
                        f"{str(self.path)!r}: the last line ({len(line)} bytes, no newline) is an "
                        "incomplete record, left by a search killed while writing it; ignored"
                    )
                    continue
                raise UserInputError(f"{str(self.path)!r} line {i + 1} is not valid JSON; the trial "
                                     "log is damaged") from None
            if isinstance(rec, dict):
                out.append((i + 1, rec))
        return out
