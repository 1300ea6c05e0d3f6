"""Tracking: the only part of pixelexp that talks to MLflow.

    settings   where the store is, how long a run waits for it; MLflow's own settings
    keys       keys and values as every MLflow store takes them
    sender     sends a run's journal to the store, in order, on a background thread
    runlog     RunLog: everything one run writes, journaled first
    store      open_client, Tracker (one experiment in a store), RunInfo, reading runs back
    sync       sending what a journal kept while the store was away
    ui         how an experiment opens in MLflow's UI: description, saved chart view, its URL

Everything here hands back pixelexp's own types (RunInfo, RunLog, paths, tables), so
experiments, sweeps, resume and reports never handle an MLflow object. `settings` is
imported first: it sets MLflow's environment before mlflow is imported.

The provenance of a run (git_state, git_diff, pip_freeze) lives in
`pixelexp.runs.provenance` and is named here too, for callers that log it with a run.
"""

from pixelexp.runs.provenance import git_diff, git_state, pip_freeze
from pixelexp.runs.tracking import settings, ui
from pixelexp.runs.tracking.keys import clean_key, clean_metrics, clean_params, clean_tags
from pixelexp.runs.tracking.runlog import RunLog
from pixelexp.runs.tracking.store import (
    RunInfo,
    Tracker,
    download,
    experiments,
    list_artifacts,
    metric_history,
    open_client,
)
from pixelexp.runs.tracking.sync import sync

tracking_uri = settings.tracking_uri
tracking_wait = settings.tracking_wait
ui_address = settings.ui_address

__all__ = ["Tracker", "RunLog", "RunInfo", "sync", "ui", "experiments", "tracking_uri", "tracking_wait",
           "ui_address", "open_client",
           "metric_history", "download", "list_artifacts", "clean_key", "clean_params", "clean_tags",
           "clean_metrics", "git_state", "git_diff", "pip_freeze"]
