"""Ctrl-C held back while the study and the trial log are written (the search loop's guard)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupts:
    """Defers Ctrl-C while the study and the trial log are being written.

    A ``KeyboardInterrupt`` raised inside an Optuna journal write (even inside its lock release)
    can escape as another exception and leave a half-recorded candidate. While installed (main
    thread, default SIGINT handler only), SIGINT raises at once outside critical sections
    (during an evaluation or a searcher's thinking) and is held until the end of a critical one.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.depth > 0:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Hold Ctrl-C until the block ends."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """Let Ctrl-C through at once inside a critical block (long evaluations)."""
        saved, self.depth = self.depth, 0
        try:
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt
            yield
        finally:
            self.depth = saved


__all__ = ["Interrupts"]
