"""The search's side of a run directory: spec checks and resume, Optuna storage, worker bookkeeping.

The directory's files, their names and their atomic writing are described in
``autocompress.rundir``. Here: ``spec.json`` is compared with the spec of a new search (resume,
``--force``); the study lives in ``study.journal`` / ``study.db`` in the run or in a database that
several machines share (``postgresql://...``; spec.json and pareto.json keep its URL with the
password masked); every process searching in ``RUN`` holds a shared ``flock`` on ``.lock``
(several may share a run), and ``--force`` needs it exclusively, so it is refused while a search
uses the directory. A candidate promoted under multi-fidelity has a ``low`` and a ``full`` line
in ``trials.jsonl``.

Trials record their owner (``worker`` user attribute); a ``RUNNING`` trial whose owner process is
gone (same host: the pid is dead or reused; other hosts: no heartbeat for ``STALE_AFTER_S``) is
*stale* and is finished at the next start from its final ``trials.jsonl`` line, or marked
``interrupted`` (and, for Optuna strategies, its parameters re-queued) when it has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError, check_writable
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

if TYPE_CHECKING:
    import optuna

    from autocompress.search.ledger import Ledger
    from autocompress.search.spec import SearchSpec

    #: Where workers register: the run's ledger, or an Optuna study (the attribute names agree).
    _Registry = Ledger | optuna.Study

#: A worker on another host with no heartbeat for this long is taken to be gone.
STALE_AFTER_S = 1800.0
#: A RUNNING trial without an owner (killed between ask and tagging) is stale after this long.
OWNERLESS_AFTER_S = 60.0

_WORKER_PREFIX = "worker:"


# -- spec.json -----------------------------------------------------------------------------------
def read_spec(run_dir: Path) -> SearchSpec | None:
    """The spec stored in ``run_dir/spec.json`` (None when there is none)."""
    from autocompress.search.spec import SearchSpec

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
    from autocompress.search.spec import RUN_LEVEL_FIELDS

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
    from autocompress.search.spec import SearchSpec

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
    from autocompress.search.spec import RUN_LEVEL_FIELDS

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


# -- Optuna storage ------------------------------------------------------------------------------
#: Shown instead of a storage URL's password in spec.json, pareto.json and every message.
MASK = "***"
#: Seconds to wait for a database server to answer a connection (an unreachable host fails then).
CONNECT_TIMEOUT_S = 10
#: Tries at creating Optuna's tables: workers starting together on an empty PostgreSQL database
#: race on ``CREATE TABLE`` (one gets a duplicate-key error on the catalog); a retry sees the tables.
_RDB_TRIES = 5

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


#: ``scheme://user:`` + password + ``@host...``; the password runs to the *last* ``@``, so one
#: holding an unescaped ``@`` is masked whole (SQLAlchemy would stop at the first, then fail).
_USERINFO = re.compile(r"^([A-Za-z][\w+.\-]*://[^:/@?#]*:)(.*)(@[^@]*)$", re.S)


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """``(up to the password, password, from "@" on)``; None when the URL names no password."""
    m = _USERINFO.match(url)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def mask_url(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@`` or ``?password=``) replaced by ``***``.

    What is written to spec.json, pareto.json and shown in messages: the URL stays recognisable
    (scheme, user, host, database) and a run directory can be shared without the credential.
    """
    parts = _split_userinfo(url)
    if parts is not None:
        url = parts[0] + MASK + parts[2]
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, url)


def has_masked_password(url: str) -> bool:
    """Whether ``url`` is a masked URL (its password replaced by ``***``): it cannot connect."""
    parts = _split_userinfo(url)
    return (parts is not None and parts[1] == MASK) or any(
        m.group(0).endswith("=" + MASK) for m in _QUERY_PASSWORD.finditer(url))


def _secrets(url: str) -> list[str]:
    """The password of ``url`` as written and percent-decoded (to scrub from error text)."""
    from urllib.parse import unquote

    found: list[str] = []
    parts = _split_userinfo(url)
    if parts is not None:
        found.append(parts[1])
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(url)]
    return [x for p in found if p and p != MASK for x in {p, unquote(p)}]


def _error_line(exc: BaseException, url: str) -> str:
    """One line describing a driver error (the driver's own message, no SQLAlchemy footer, no
    password)."""
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = text.replace(url, mask_url(url))
    return text if len(text) <= 200 else text[:197] + "..."


def storage_url_for(spec: SearchSpec) -> str:
    """A description of the storage a spec uses (for messages and ``pareto.json``; a URL's
    password masked)."""
    s = spec.storage
    run = spec.run_dir
    if s is None or s == "journal":
        return f"journal:{run / JOURNAL_FILE}"
    if s == "sqlite":
        return f"sqlite:///{run / SQLITE_FILE}"
    return mask_url(s)


def check_database_url(storage: str, run_dir: Path) -> None:
    """Refuse a database URL that cannot work, before the run directory is created.

    A ``sqlite:///`` URL needs an existing, writable directory (or the run directory); any other
    URL is parsed and connected to once, so a malformed URL, a missing driver, an unreachable
    server, a refused login or a missing database is one ``UserInputError`` line now, not a
    traceback after the base model has been trained. The password never appears in the message.
    """
    shown = mask_url(storage)
    try:
        from sqlalchemy.engine import make_url

        url = make_url(storage)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError, ValueError ...
        raise UserInputError(
            f"storage {shown!r} is not a valid database URL ({_error_line(exc, storage)}); "
            "expected e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:"):
            raise UserInputError(f"storage {shown!r} is an in-memory database; give a file, e.g. "
                                 "sqlite:///runs/study.db (or --storage sqlite)")
        db_path = Path(db)
        if db_path.parent.absolute() == run_dir.absolute():
            return  # created with the run directory, which is checked already
        if not db_path.parent.is_dir():
            raise UserInputError(f"storage {shown!r}: directory {str(db_path.parent)!r} does not exist")
        check_writable(db_path, "--storage")
        return
    if backend == "postgres":
        raise UserInputError(f"storage {shown!r}: the scheme is postgresql://, not postgres://")
    if backend == "postgresql" and not url.host and "host" not in url.query:
        raise UserInputError(f"storage {shown!r} names no host; expected "
                             "postgresql://USER:PASSWORD@HOST:5432/DATABASE")
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, **_engine_kwargs(storage))
    except ModuleNotFoundError as exc:
        raise UserInputError(
            f"storage {shown!r} needs the database driver {exc.name!r}, which is not installed"
            + (" (pip install 'psycopg[binary]' and use postgresql://)" if backend == "postgresql" else "")) from None
    except Exception as exc:  # noqa: BLE001 - an unknown dialect or a bad option
        raise UserInputError(f"storage {shown!r} cannot be opened: {_error_line(exc, storage)}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - unreachable, refused login, no such database ...
        raise UserInputError(f"storage {shown!r} cannot be opened: {_error_line(exc, storage)}") from None
    finally:
        engine.dispose()


def _engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine settings per database: SQLite waits for its file lock; a server is
    connected to with a timeout and each pooled connection is checked before use (a search on
    many machines keeps connections for hours; a server restart or an idle cut must not fail a
    trial)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def open_storage(spec: SearchSpec) -> optuna.storages.BaseStorage:
    """The Optuna storage of ``spec`` (created on demand).

    ``None``/``"journal"``: ``JournalStorage(JournalFileBackend(RUN/study.journal))`` (fast, safe
    for several processes on one machine); ``"sqlite"``: ``RUN/study.db``; a path ending in
    ``.journal``/``.log``: a journal file there; any other ``scheme://`` URL: Optuna's RDB storage
    (``sqlite:///...``, ``postgresql://...``, ``mysql://...``), the one to use when processes on
    several machines share a study.
    """
    from optuna.storages import RDBStorage

    s = spec.storage
    run = spec.run_dir
    run.mkdir(parents=True, exist_ok=True)
    if s is None or s == "journal":
        return _journal(run / JOURNAL_FILE)
    if s == "sqlite":
        return RDBStorage(f"sqlite:///{run / SQLITE_FILE}", engine_kwargs=_engine_kwargs("sqlite"))
    if "://" in s:
        if has_masked_password(s):
            raise UserInputError(f"storage {s!r} has its password masked (as spec.json keeps it); "
                                 "give the full URL")
        for attempt in range(_RDB_TRIES):
            try:
                return RDBStorage(s, engine_kwargs=_engine_kwargs(s))
            except Exception as exc:  # noqa: BLE001 - a bad URL or unreachable database is user input
                from sqlalchemy.exc import IntegrityError, ProgrammingError

                if isinstance(exc, IntegrityError | ProgrammingError) and attempt + 1 < _RDB_TRIES:
                    time.sleep(0.2 * (attempt + 1))  # another worker is creating the tables
                    continue
                raise UserInputError(f"storage {mask_url(s)!r} cannot be opened: "
                                     f"{type(exc).__name__}: {_error_line(exc, s)}") from None
    if s.endswith((".journal", ".log")):
        Path(s).parent.mkdir(parents=True, exist_ok=True)
        return _journal(Path(s))
    raise UserInputError(
        f"storage {s!r} is not allowed; allowed: journal (default), sqlite, a *.journal file path, "
        "or an Optuna storage URL such as sqlite:///x.db or postgresql://user@host/db"
    )


#: Seconds after which a journal lock left by a killed process is broken (Optuna's default is 30;
#: appends are single ``O_APPEND`` writes of one short line, held for milliseconds).
JOURNAL_LOCK_GRACE_S = 10


def _journal(path: Path) -> optuna.storages.BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    repair_journal(path)
    lock = JournalFileSymlinkLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def repair_journal(path: Path) -> bool:
    """Drop a torn last line of an Optuna journal file (a writer killed mid-append).

    Optuna skips an unterminated last line while reading, but the next append would glue a new
    record onto it and make the whole journal unreadable. Runs under Optuna's own journal lock, so
    no writer is mid-append; returns True when something was dropped.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return False
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    lock.acquire()
    try:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 65536))
            tail = fh.read()
            if tail.endswith(b"\n"):
                return False
            cut = tail.rfind(b"\n")
            fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
            fh.flush()
            os.fsync(fh.fileno())
            return True
    finally:
        lock.release()


# -- workers -------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a local process from /proc, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return (rest[0], rest[19]) if len(rest) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """True when local process ``pid`` runs (not a zombie) and, if given, started at ``start``."""
    stat = _proc_stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start is None or started == start


@dataclass(frozen=True)
class Worker:
    """One search process registered on a ledger (a ledger attribute ``worker:<uuid>``)."""

    uuid: str
    host: str
    pid: int
    start: str | None
    rank: int
    registered: float
    beat: float
    stopped: bool = False

    @property
    def key(self) -> str:
        """The ledger attribute key."""
        return _WORKER_PREFIX + self.uuid

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"uuid": self.uuid, "host": self.host, "pid": self.pid, "start": self.start,
                "rank": self.rank, "registered": self.registered, "beat": self.beat,
                "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Worker:
        """Inverse of ``to_dict``."""
        return cls(uuid=str(d["uuid"]), host=str(d["host"]), pid=int(d["pid"]),
                   start=d.get("start"), rank=int(d.get("rank", 0)),
                   registered=float(d.get("registered", 0.0)), beat=float(d.get("beat", 0.0)),
                   stopped=bool(d.get("stopped", False)))

    def alive(self, now: float | None = None) -> bool:
        """Whether the worker still runs (pid check on this host, heartbeat elsewhere)."""
        if self.stopped:
            return False
        if self.host == socket.gethostname():
            return process_alive(self.pid, self.start)
        return (now or time.time()) - self.beat < STALE_AFTER_S


def study_workers(study: _Registry) -> dict[str, Worker]:
    """Every worker ever registered on ``study`` (a ledger or an Optuna study), by uuid."""
    out = {}
    for k, v in study.user_attrs.items():
        if k.startswith(_WORKER_PREFIX) and isinstance(v, Mapping):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                w = Worker.from_dict(v)
                out[w.uuid] = w
    return out


def register_worker(study: _Registry) -> Worker:
    """Register this process on ``study`` with the smallest rank no live worker holds.

    The rank makes seeds distinct between concurrent processes (rank 0 keeps the spec's seed, so
    a resumed single-process search replays its original random stream). Registration is two
    steps, so that processes starting at the same moment agree: each first registers without a
    rank, then reads the live workers; ranks already chosen are taken, and workers still choosing
    that registered earlier (by time, then uuid) pick first, in that order.
    """
    stat = _proc_stat(os.getpid())
    now = time.time()
    me = Worker(uuid=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                start=stat[1] if stat else None, rank=-1, registered=now, beat=now)
    study.set_user_attr(me.key, me.to_dict())
    others = [w for w in study_workers(study).values() if w.uuid != me.uuid and w.alive()]
    taken = {w.rank for w in others if w.rank >= 0}
    choosing_first = sum(1 for w in others if w.rank < 0 and (w.registered, w.uuid) < (now, me.uuid))
    for _ in range(choosing_first):
        taken.add(next(r for r in range(len(taken) + 1) if r not in taken))
    rank = next(r for r in range(len(taken) + 1) if r not in taken)
    worker = Worker(**{**me.__dict__, "rank": rank})
    study.set_user_attr(worker.key, worker.to_dict())
    return worker


def heartbeat(study: _Registry, worker: Worker) -> Worker:
    """Refresh this worker's heartbeat on the study."""
    beat = Worker(**{**worker.__dict__, "beat": time.time()})
    study.set_user_attr(beat.key, beat.to_dict())
    return beat


def unregister_worker(study: _Registry, worker: Worker) -> None:
    """Mark this worker as stopped (its rank is free again; its trials are final)."""
    study.set_user_attr(worker.key, {**worker.to_dict(), "stopped": True, "beat": time.time()})


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed derived from ``seed`` and ``parts`` (stable across runs and platforms)."""
    blob = json.dumps([int(seed), *[str(p) for p in parts]])
    return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16) % (2**31 - 1)
