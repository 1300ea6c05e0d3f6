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


def requested() -> int | None:
    """The signal number received, or None."""
    return _requested


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt(f"second {name(signum)}")
    _requested = signum


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


__all__ = ["graceful_stop", "requested", "name"]
