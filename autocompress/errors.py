"""The one exception type that means "the user gave a bad value" (CLI exit status 2), and the
disk conditions (read-only, full, no permission) that are the user's to fix, not a bug."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


class UserInputError(ValueError):
    """Bad input from the user: the message is one line naming the value and what is allowed."""


class CheckFailedError(RuntimeError):
    """A result failed one of the engine's own checks (an exported file that does not compute
    what the PyTorch model computes): not a bug to show as a traceback, not bad input either.
    The CLI prints the one-line message and exits with status 1; nothing was written."""


#: ``OSError`` numbers that mean "this place cannot be written" (the disk, the mount or the
#: permissions), reported as one line instead of a traceback.
DISK_ERRNOS: frozenset[int] = frozenset(
    e for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", None),
                errno.EFBIG) if e is not None
)


def is_disk_error(exc: BaseException) -> bool:
    """True for an ``OSError`` caused by a full, read-only or forbidden place on disk."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_error_line(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line naming the path and the condition, e.g. ``cannot write '/x': Read-only file
    system (EROFS)``."""
    where = path if path is not None else (exc.filename or "")
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    reason = exc.strerror or os.strerror(exc.errno or 0)
    target = f" {str(where)!r}" if where else ""
    return f"cannot write{target}: {reason} ({name})"


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable(path: str | os.PathLike[str], option: str = "--out", *, directory: bool = False) -> None:
    """Raise ``UserInputError`` unless ``path`` can be created (or rewritten) and written.

    Checked before any work starts, so a read-only, full or forbidden place fails in a second,
    not after a long run. ``os.access`` is not enough (root passes it on a mount it cannot
    write): a small probe file is written and removed in the nearest existing directory.

    Args:
        path: the file or directory that will be written.
        option: how the user named it (for the message).
        directory: ``path`` is a directory to be created or written into.
    """
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            raise UserInputError(f"{option} {str(p)!r} is a file, not a directory")
        if not directory and p.is_dir():
            raise UserInputError(f"{option} {str(p)!r} is a directory, not a file path")
    base = _nearest_existing(p if directory else p.parent)
    if not base.is_dir():
        raise UserInputError(f"{option} {str(p)!r} cannot be created: {str(base)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".autocompress-probe-", dir=base)
    except OSError as exc:
        raise UserInputError(f"{option} {str(p)!r} is not writable: "
                             f"{disk_error_line(exc, base)}") from None
    try:
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserInputError(f"{option} {str(p)!r} is not writable: "
                             f"{disk_error_line(exc, base)}") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def check_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint path must name a readable regular file (a directory is named as such)."""
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"checkpoint {str(path)!r} is a directory; give the weights file inside it "
                             "(a state_dict saved by torch.save, or a TorchScript file)")
    if not p.exists():
        raise UserInputError(f"checkpoint {str(path)!r} does not exist")
    if not p.is_file():
        raise UserInputError(f"checkpoint {str(path)!r} is not a regular file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise UserInputError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror}") from None
    return p
