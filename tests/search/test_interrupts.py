"""The search loop's Ctrl-C guard: held while the study is written, let through elsewhere."""

from __future__ import annotations

import signal

import pytest

from autocompress.search._interrupts import Interrupts

pytestmark = pytest.mark.timeout(60)


def test_ctrl_c_outside_a_critical_block_raises_at_once() -> None:
    guard = Interrupts()
    with pytest.raises(KeyboardInterrupt):
        guard._handler(signal.SIGINT, None)


def test_ctrl_c_in_a_critical_block_is_raised_when_the_block_ends() -> None:
    guard = Interrupts()
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with guard.critical():
            with guard.critical():  # nested: held until the outermost block ends
                guard._handler(signal.SIGINT, None)
            finished = True
    assert finished and not guard.pending and guard.depth == 0


def test_an_allowed_block_lets_a_held_ctrl_c_through_at_once() -> None:
    guard = Interrupts()
    entered = False
    with pytest.raises(KeyboardInterrupt):
        with guard.critical():
            guard._handler(signal.SIGINT, None)
            with guard.allowed():  # a long evaluation: the held Ctrl-C is not kept waiting
                entered = True
    assert not entered and guard.depth == 0


def test_installing_restores_the_previous_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as guard:
        installed = signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    # Only the default handler is replaced (a test runner's or a user's own handler is kept).
    assert (installed == guard._handler) == (before is signal.default_int_handler)
