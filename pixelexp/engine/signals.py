"""SIGINT and SIGTERM end a run cleanly: the training loop finishes its batch, writes
a checkpoint, marks the run KILLED and the command exits with 130 or 143.

    with graceful_stop():        # the CLI, around a command
        ...                      # train.run checks `requested()` after every batch

A second signal of the same kind stops at once (KeyboardInterrupt), for the impatient.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested: int | None = None
_raising = False  # inside `at_once()`: a signal raises KeyboardInterrupt where the code stands


def requested() -> int | None:
    """The signal number received, or None."""
    return _requested


def check(where: str) -> None:
    """Stop here (Interrupted) if a signal arrived: at the points before something is written,
    so that a signal in the first seconds leaves nothing behind."""
    if _requested is not None:
        raise interrupted(where)


def interrupted(where: str):
    """The Interrupted that ends a command stopped by a signal `where`."""
    from pixelexp.errors import Interrupted
    signum = _requested or signal.SIGINT
    return Interrupted(signum, f"{name(signum)} {where}")


@contextlib.contextmanager
def at_once():
    """Within this block a signal interrupts at once (KeyboardInterrupt) instead of waiting
    for the next check: for work with no check inside, such as drawing samples."""
    global _raising
    if _requested is not None:
        raise KeyboardInterrupt(name(_requested))
    _raising = True
    try:
        yield
    finally:
        _raising = False


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt(f"second {name(signum)}")
    _requested = signum
    if _raising:
        raise KeyboardInterrupt(name(signum))


@contextlib.contextmanager
def graceful_stop():
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested = None


__all__ = ["graceful_stop", "requested", "name", "check", "at_once", "interrupted"]
