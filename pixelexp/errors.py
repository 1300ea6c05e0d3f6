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
