"""Writing report files so that a failed write (disk full, kill) never leaves a truncated file.

Every file a report command produces is written to a temporary file in the destination's own
directory and moved over the destination with ``os.replace`` once complete and flushed to disk:
readers see the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


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
