"""The Optuna storage of a run: opening it, checking a database URL, masking its password.

``SearchSpec.storage`` names where the study lives: ``journal`` (``RUN/study.journal``, the
default), ``sqlite`` (``RUN/study.db``), a journal file path, or a database URL that processes on
several machines share (``postgresql://...``). Its password never reaches spec.json, pareto.json
or a message (``mask_url``); a journal torn by a killed writer is repaired before it is opened.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import UserInputError, check_writable
from autocompress.rundir import JOURNAL_FILE, SQLITE_FILE

if TYPE_CHECKING:
    import optuna

    from autocompress.search.spec import SearchSpec

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


_STORAGE_WORDS = ("journal", "sqlite")


def check_storage(storage: str | None, run_dir: Path) -> None:
    """Refuse a storage that cannot work before the run directory is created.

    ``journal``/``sqlite`` live in the run directory (checked with it); a ``*.journal`` /
    ``*.log`` path needs a writable place; a ``sqlite:///`` URL an existing, writable directory
    (or the run directory); any other URL is connected to once (an unreachable database is
    named now, not after the base model has been trained).
    """
    if storage is None or storage in _STORAGE_WORDS:
        return
    if "://" not in storage:
        if storage.endswith((".journal", ".log")):
            check_writable(storage, "--storage")
            return
        raise UserInputError(
            f"storage {storage!r} is not allowed; allowed: journal (default), sqlite, a *.journal file "
            "path, or an Optuna storage URL such as sqlite:///x.db or postgresql://user@host/db"
        )
    check_database_url(storage, run_dir)


__all__ = [
    "CONNECT_TIMEOUT_S",
    "JOURNAL_LOCK_GRACE_S",
    "MASK",
    "check_database_url",
    "check_storage",
    "has_masked_password",
    "mask_url",
    "open_storage",
    "repair_journal",
    "storage_url_for",
]
