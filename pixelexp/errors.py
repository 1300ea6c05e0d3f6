"""User-facing errors: one line that says what is wrong and how to fix it.

The CLI turns any `UserError` into that line on stderr and exit code 2. Everything
else is a bug and keeps its traceback.
"""


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
