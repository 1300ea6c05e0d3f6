"""Where the tracking store is and how long a run waits for it, from the environment;
and MLflow's own settings, made here before mlflow is first imported.

Importing `pixelexp.runs.tracking` imports this module first (the package's first
import), because MLflow reads several of these variables once, when it is imported:

- no progress bars for artifact uploads and no "View run at ..." line on every run's end;
- a tracking server that stops answering costs seconds, not MLflow's default of minutes
  of retries per call: the run's journal keeps the records and retries itself;
- MLflow's and alembic's loggers at WARNING: no "Creating initial MLflow database tables"
  and migration lines on every new store.

A variable already set in the environment wins over these defaults.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from pixelexp.errors import UserError

MLFLOW_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}

for _key, _value in MLFLOW_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
warnings.filterwarnings("ignore", module="mlflow")
for _name in ("mlflow", "alembic"):  # MLflow may have been imported before us, with its own levels
    logging.getLogger(_name).setLevel(max(logging.getLogger(_name).level, logging.WARNING))


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the current folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def ui_address() -> str:
    """Where the MLflow UI of the store is: the tracking server itself, or what `make ui`
    serves (http://127.0.0.1:5000, or the port in PIXELEXP_UI_PORT)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{os.environ.get('PIXELEXP_UI_PORT') or 5000}"


def tracking_wait() -> float:
    """Seconds a finished run waits for the tracking store to take its records."""
    text = os.environ.get("PIXELEXP_TRACKING_WAIT", "300")
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not wait >= 0:
        raise UserError(f"PIXELEXP_TRACKING_WAIT={text!r} is not a number of seconds >= 0; "
                        f"unset it (default 300) or give e.g. 60")
    return wait


__all__ = ["MLFLOW_DEFAULTS", "tracking_uri", "tracking_wait", "ui_address"]
