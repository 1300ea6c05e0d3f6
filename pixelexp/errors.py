"""User-facing errors: one line that says what is wrong and how to fix it.

The CLI turns any `UserError` into that line on stderr and exit code 2. Everything
else is a bug and keeps its traceback. This module owns the text of that line:
`error_line` and `fail` write it, and `first_line` and `cause` quote another
library's exception inside it (or inside a one-line warning) without its traceback
or the rest of a many-line message.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, command line)."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class TrackingOutage(Exception):
    """The tracking store did not take a run's records in time (they stay in its journal)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the run wrote a checkpoint and stops (exit code 128 + signal).

    A BaseException, like KeyboardInterrupt, so that handlers of ordinary errors (a
    sweep recording a failed trial) let it through."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def error_line(problem: BaseException | str) -> str:
    """The line the user sees for an error: `error: <what is wrong and how to fix it>`."""
    return f"error: {problem}"


def fail(problem: BaseException | str, code: int = 2) -> int:
    """Print `error_line(problem)` on stderr and return `code`, the process's exit code
    (2 for bad input; 1 for a run that failed, such as a diverged one)."""
    print(error_line(problem), file=sys.stderr)
    return code


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to `limit` characters (the
    exception's type name when the message is empty), to quote on one line."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def cause(e: BaseException, limit: int = 160) -> str:
    """`TypeName: first line of the message`: how a one-line error or warning quotes
    the exception behind it, e.g. `... cannot be opened (OperationalError: ...)`."""
    return f"{type(e).__name__}: {first_line(e, limit)}"
