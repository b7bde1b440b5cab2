"""The search's side of a run directory: spec.json checks and resume, the run's lock.

The directory's files, their names and their atomic writing are described in
``autocompress.rundir``. Here: ``spec.json`` is compared with the spec of a new search (resume,
``--force``); every process searching in ``RUN`` holds a shared ``flock`` on ``.lock`` (several
may share a run), and ``--force`` needs it exclusively, so it is refused while a search uses the
directory. A candidate promoted under multi-fidelity has a ``low`` and a ``full`` line in
``trials.jsonl``.

The study's storage (``study.journal`` / ``study.db`` in the run, or a database that several
machines share, its URL kept in spec.json and pareto.json with the password masked) is opened in
``_optuna_storage``, and the processes of a run register in ``_workers``; their names are
re-exported here, the one module the session, the loop and resume import for the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from autocompress.errors import UserInputError
from autocompress.rundir import (  # noqa: F401 - the run directory's names, re-exported for callers
    BASE_FILE,
    JOURNAL_FILE,
    LEDGER_FILE,
    LOCK_FILE,
    PARETO_FILE,
    RUN_SCHEMA_VERSION,
    SPEC_FILE,
    SQLITE_FILE,
    TRIAL_RECORD_VERSION,
    TRIALS_FILE,
    TrialLog,
    atomic_write_text,
    jsonable,
)
from autocompress.search._optuna_storage import (  # noqa: F401 - re-exported for callers
    CONNECT_TIMEOUT_S,
    JOURNAL_LOCK_GRACE_S,
    MASK,
    check_database_url,
    check_storage,
    has_masked_password,
    mask_url,
    open_storage,
    repair_journal,
    storage_url_for,
)
from autocompress.search._workers import (  # noqa: F401 - re-exported for callers
    OWNERLESS_AFTER_S,
    STALE_AFTER_S,
    Worker,
    derive_seed,
    heartbeat,
    process_alive,
    register_worker,
    study_workers,
    unregister_worker,
)
from autocompress.search.spec import RUN_LEVEL_FIELDS, SearchSpec


# -- spec.json -----------------------------------------------------------------------------------
def read_spec(run_dir: Path) -> SearchSpec | None:
    """The spec stored in ``run_dir/spec.json`` (None when there is none)."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{str(path)!r} is not valid JSON ({exc}); it is not a search run") from None
    if not isinstance(data, dict) or data.get("_schema_version") != RUN_SCHEMA_VERSION:
        raise UserInputError(
            f"{str(path)!r} is not a search spec this autocompress reads "
            f"(_schema_version {data.get('_schema_version') if isinstance(data, dict) else None!r}, "
            f"expected {RUN_SCHEMA_VERSION})"
        )
    fields = set(SearchSpec.field_names())
    return SearchSpec.from_dict({k: v for k, v in data.items() if k in fields})


def write_spec(run_dir: Path, spec: SearchSpec, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``run_dir/spec.json`` atomically (a storage URL's password masked: see ``mask_url``)."""
    data = {"_schema_version": RUN_SCHEMA_VERSION, "_identity": spec.identity_hash(),
            **spec.to_dict(), **dict(extra or {})}
    if isinstance(data.get("storage"), str):
        data["storage"] = mask_url(data["storage"])
    atomic_write_text(run_dir / SPEC_FILE, json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")


def prepare_run_dir(spec: SearchSpec) -> SearchSpec:
    """Check ``spec.run_dir`` against the spec it holds; returns the spec to run.

    * empty or missing directory: a new run.
    * ``spec.json`` with the same identity (what is searched): resume, with this spec's
      run-level fields (``trials``, ``workers``, ``backend`` ...).
    * a different identity: ``resume`` continues the *stored* search with this spec's run-level
      fields; a setting that changes what is searched (model, data, seed, budgets, knobs,
      strategy ...) given with a value other than the stored one is refused, naming it (a
      setting left at its default is not taken as given); ``force`` moves the old directory
      aside to ``RUN.old-N`` and starts over, refused while a live search holds the run's lock;
      otherwise ``UserInputError`` naming the differing settings.
    * a non-empty directory without ``spec.json``: refused unless ``force``.
    """
    run = spec.run_dir
    if run.exists() and not run.is_dir():
        raise UserInputError(f"--out {str(run)!r} is a file, not a run directory")
    stored = read_spec(run) if run.is_dir() else None
    if (stored is not None and stored.storage is not None and spec.storage is not None
            and stored.storage == mask_url(spec.storage)):
        # spec.json keeps the URL without its password: the one given now completes it.
        stored = stored.replace(storage=spec.storage)
    if stored is None:
        if run.is_dir() and any(p.name != LOCK_FILE for p in run.iterdir()):
            if not spec.force:
                raise UserInputError(
                    f"--out {str(run)!r} is not empty and holds no search run; choose another --out "
                    "or pass --force (the directory is kept as OUT.old-N)"
                )
            _move_aside(run)
        return spec
    if stored.identity_hash() == spec.identity_hash():
        return spec
    if spec.resume:
        changed = given_changes(spec, stored)
        if changed:
            shown = _shown_differences(changed, 4)
            raise UserInputError(
                f"--resume {str(run)!r}: the stored search differs in {shown}; a resumed search "
                "keeps what it searches (drop these settings to continue it, or use another --out "
                "or --force to start a new search)"
            )
        if stored.storage is not None and has_masked_password(stored.storage):
            raise UserInputError(
                f"--resume {str(run)!r}: the search uses storage {stored.storage!r}, whose password "
                "spec.json does not keep; give --storage with the full URL again (or put the "
                "password in PGPASSWORD or ~/.pgpass and leave it out of the URL)"
            )
        return stored.replace(**{k: getattr(spec, k) for k in RUN_LEVEL_FIELDS if k != "resume"},
                              resume=True)
    if spec.force:
        _move_aside(run)
        return spec
    diffs = spec.differences(stored)
    shown = _shown_differences(diffs, 3)
    raise UserInputError(
        f"--out {str(run)!r} holds a different search (differs in {shown}); use another --out, "
        "--resume to continue the stored search, or --force to start over (the old run is kept "
        "as OUT.old-N)"
    )


def given_changes(spec: SearchSpec, stored: SearchSpec) -> list[tuple[str, Any, Any]]:
    """Identity settings of ``spec`` that differ from ``stored`` *and* from their default value
    (``(setting, given, stored)``): what a ``--resume`` command asked to change."""
    defaults = SearchSpec().identity()

    def default(path: str) -> Any:
        v: Any = defaults
        for part in path.split("."):
            if not isinstance(v, Mapping) or part not in v:
                return _MISSING
            v = v[part]
        return v

    return [(k, mine, theirs) for k, mine, theirs in spec.differences(stored) if mine != default(k)]


_MISSING = object()


def applied_changes(before: SearchSpec | None, after: SearchSpec) -> list[str]:
    """Run-level settings (``trials``, ``workers`` ...) a re-run changed, as ``"trials 3 -> 5"``."""
    if before is None:
        return []
    skip = {"resume", "force", "out"}
    return [f"{k} {_short(getattr(before, k))} -> {_short(getattr(after, k))}"
            for k in sorted(RUN_LEVEL_FIELDS - skip) if getattr(before, k) != getattr(after, k)]


class RunLock:
    """A shared ``flock`` on ``RUN/.lock``, held by a search for as long as it uses ``RUN``.

    Several processes may search in one run directory (they share the study), so searches take
    the lock shared; ``--force`` takes it exclusively before moving the directory aside.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, create: bool = True) -> bool:
        """Hold the lock (shared); ``create=False`` only when the lock file exists already (so a
        run directory is never changed before the search is known to start)."""
        import fcntl

        if self.fd is not None:
            return True
        if not create and not self.path.is_file():
            return False
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process (pickled along with a session) holds no lock: never let it
        # close a descriptor number that means something else there.
        return {"path": self.path, "fd": None}

    def __del__(self) -> None:
        self.release()


@contextlib.contextmanager
def _exclusive(run: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` exclusively; ``UserInputError`` when a live search holds it."""
    import fcntl

    path = run / LOCK_FILE
    if not path.is_file():
        yield
        return
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                f"--force {str(run)!r}: a running search is using this run directory; stop it "
                "first or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def _shown_differences(diffs: list[tuple[str, object, object]], limit: int) -> str:
    """``key: STORED stored, GIVEN given`` for the first ``limit`` differences (one error line)."""
    return ", ".join(f"{k}: {_short(theirs)} stored, {_short(mine)} given"
                     for k, mine, theirs in diffs[:limit])


def _short(v: Any) -> str:
    if isinstance(v, list) and v and isinstance(v[0], Mapping) and "name" in v[0]:
        return ",".join(str(x["name"]) for x in v)
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "none"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _move_aside(run: Path) -> Path:
    with _exclusive(run):
        n = 1
        while True:
            target = run.with_name(f"{run.name}.old-{n}")
            if not target.exists():
                os.replace(run, target)
                return target
            n += 1

