"""The MLflow store and one experiment in it: opening the store (`open_client`), the
`Tracker` that starts, reopens and finds runs, and reading runs back (`RunInfo`,
`metric_history`, `download`, `list_artifacts`).

Store: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the current folder
(the repo root when run through make), with artifacts in `mlartifacts/` beside it.
One MLflow experiment per experiment file; one parent run per `make experiment`
call; one child run per variant.

What this module hands back is pixelexp's own: a `RunInfo` for a run, a `RunLog` to
write to one, plain paths, names and tables; callers never see an MLflow object.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunTag

from pixelexp.errors import UserError, cause
from pixelexp.runs.tracking import ui
from pixelexp.runs.tracking.keys import MAX_KEY, clean_tags, clip
from pixelexp.runs.tracking.runlog import RunLog
from pixelexp.runs.tracking.settings import tracking_uri, tracking_wait


@dataclass(frozen=True)
class RunInfo:
    """What pixelexp reads back of one run: its state, and its params, tags and latest metrics."""
    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED or SCHEDULED
    experiment_id: str
    start_time: int | None  # ms since the epoch
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, run) -> RunInfo:
        """From an MLflow run."""
        return cls(run.info.run_id, run.info.run_name or "", run.info.status, run.info.experiment_id,
                   run.info.start_time, dict(run.data.params), dict(run.data.tags), dict(run.data.metrics))


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _local_artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts go to mlartifacts/ beside the database."""
    db = _sqlite_file(uri)
    return None if db is None else (db.parent / "mlartifacts").resolve().as_uri()


_opened: set[str] = set()  # stores this process has checked


@contextmanager
def _creating(db: Path | None):
    """Hold a lock on the folder of a SQLite store while it is opened (and maybe created):
    two processes that create one store at once would both create its tables."""
    if db is None or not db.parent.is_dir():
        yield
        return
    import fcntl
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some NFS): open it unguarded, as MLflow would
            pass
        yield
    finally:
        os.close(fd)


def open_client(uri: str | None = None, create: bool = False) -> MlflowClient:
    """A client of the store at `uri` (default: tracking_uri()) that answers, or a one-line
    error. A SQLite store that does not exist yet is created only with `create` (a run is
    about to go there): reading commands do not leave empty stores behind."""
    uri = uri or tracking_uri()
    if uri in _opened:
        return MlflowClient(tracking_uri=uri)
    db = _sqlite_file(uri)
    if db is not None and not db.is_file() and not create:
        raise UserError(f"no MLflow store at {db} (MLFLOW_TRACKING_URI={uri}); run the command from the folder "
                        f"that holds mlflow.db, or point MLFLOW_TRACKING_URI at the store")
    with _creating(db):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure to reach or read the store
            hint = f"move the damaged {db} aside" if db is not None and db.is_file() else \
                "check that the server runs"
            raise UserError(f"MLflow store {uri} cannot be opened ({cause(e)}); "
                            f"check MLFLOW_TRACKING_URI, or {hint}") from None
    _opened.add(uri)
    return client


def _not_in_store(run_id: str, uri: str) -> UserError:
    return UserError(f"run {run_id!r} is not in the MLflow store {uri}; copy its id from `make ui` "
                     f"or from the output of the command that started it")


class Tracker:
    """A connection to one MLflow store and one experiment in it."""

    def __init__(self, experiment: str, uri: str | None = None, create: bool = True):
        tracking_wait()  # a bad PIXELEXP_TRACKING_WAIT stops us before any run exists
        self.uri = uri or tracking_uri()
        self.client = open_client(self.uri, create=create)
        mlflow.set_tracking_uri(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None and not create:
            raise UserError(f"no experiment {experiment!r} in the MLflow store {self.uri}; "
                            f"run `make experiment EXP={experiment}` first")
        if found is None:
            from mlflow.exceptions import MlflowException
            try:
                found = self.client.get_experiment(self.client.create_experiment(
                    experiment, artifact_location=_local_artifact_root(self.uri)))
            except MlflowException:  # another process created it a moment ago
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        self.experiment_id = found.experiment_id
        self.experiment = experiment

    @classmethod
    def of_run(cls, run_id: str, uri: str | None = None) -> Tracker:
        """The tracker of the experiment a run belongs to."""
        uri = uri or tracking_uri()
        client = open_client(uri)
        try:
            exp_id = client.get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001
            raise _not_in_store(run_id, uri) from None
        return cls(client.get_experiment(exp_id).name, uri, create=False)

    # ---------------------------------------------------------------- writing

    def describe(self, description: str = "", epochs: int = 1) -> None:
        """Make the experiment open in MLflow's UI on its runs, with this description and
        pixelexp's saved chart view (see `ui`; its sample grids open on epoch `epochs`);
        `view_url` is its address."""
        for key, value in ui.experiment_tags(clip(description, 5000), epochs).items():
            self.client.set_experiment_tag(self.experiment_id, key, value)

    def view_url(self, base: str) -> str:
        return ui.view_url(base, self.experiment_id)

    def start_run(self, name: str, parent: RunLog | str | None = None, tags: dict | None = None,
                  journal: bool = True, study: bool = False) -> RunLog:
        """A new run of this experiment (a child of `parent`, a RunLog or run id, if given).
        A run that trains is labelled with its name (the UI view's groups); a `study` run
        (the parent of an experiment's or sweep's runs) is not."""
        all_tags = {**(tags or {})}
        if not study:
            all_tags[ui.GROUP_TAG] = name
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent if isinstance(parent, str) else parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=clip(name, MAX_KEY), tags=clean_tags(all_tags))
        return RunLog(self.client, run.info.run_id, journal=journal, uri=self.uri)

    def run_log(self, run_id: str, journal: bool = False) -> RunLog:
        """A log of a run that exists, left in its state. journal=False (the default): records
        are sent at once, for a run that other processes write too (a sweep's parent)."""
        return RunLog(self.client, run_id, journal=journal, uri=self.uri)

    def reopen(self, run_id: str, journal: bool = True) -> RunLog:
        """Mark a run as running again (a resumed run or sweep keeps its run id); its journal
        is opened first, so a damaged one stops us before the run is touched."""
        log = self.run_log(run_id, journal=journal)
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {"pixelexp.resumed_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        return log

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Tags on any run of this store, sent at once (not journaled)."""
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in clean_tags(tags).items()])

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    # ---------------------------------------------------------------- reading back

    def run_info(self, run_id: str) -> RunInfo:
        """A run of this store, or a one-line error."""
        try:
            return RunInfo.of(self.client.get_run(run_id))
        except Exception:  # noqa: BLE001
            raise _not_in_store(run_id, self.uri) from None

    def status(self, run_id: str) -> str | None:
        """A run's status (RUNNING, FINISHED, FAILED, KILLED); None if the store has no such run."""
        try:
            return self.client.get_run(run_id).info.status
        except Exception:  # noqa: BLE001
            return None

    def has_run(self, run_id: str) -> bool:
        return self.status(run_id) is not None

    def find_runs(self, filter_string: str, ascending: bool = False) -> list[RunInfo]:
        """Runs of this experiment that match an MLflow filter, newest first (oldest with `ascending`)."""
        order = "ASC" if ascending else "DESC"
        runs = self.client.search_runs([self.experiment_id], filter_string,
                                       order_by=[f"attributes.start_time {order}"], max_results=1000)
        return [RunInfo.of(r) for r in runs]

    def parent_runs(self) -> list[RunInfo]:
        """Runs of this experiment that have children (experiment calls), newest first."""
        return self.find_runs("tags.`pixelexp.kind` = 'experiment'")

    def child_runs(self, parent_id: str) -> list[RunInfo]:
        """The children of a run, oldest first."""
        return self.find_runs(f"tags.`mlflow.parentRunId` = '{parent_id}'", ascending=True)


def experiments(uri: str | None = None) -> list[tuple[str, str]]:
    """(id, name) of each active experiment of the store, oldest first. One without
    pixelexp's saved chart view (made before it existed) gets it here."""
    client = open_client(uri)
    found = client.search_experiments(order_by=["creation_time ASC"])
    for e in found:
        if ui.VIEW_TAG not in e.tags:
            client.set_experiment_tag(e.experiment_id, ui.VIEW_TAG, ui.view_tag_value())
    return [(e.experiment_id, e.name) for e in found]


def metric_history(run_id: str, keys: Iterable[str], uri: str | None = None) -> pd.DataFrame:
    """Long table (key, step, value, timestamp) of the given metrics of one run."""
    client = open_client(uri)
    rows = [{"key": k, "step": m.step, "value": m.value, "timestamp": m.timestamp}
            for k in keys for m in client.get_metric_history(run_id, k)]
    return pd.DataFrame(rows, columns=["key", "step", "value", "timestamp"])


def download(run_id: str, path: str, dst: str | Path, uri: str | None = None) -> Path:
    """A run's artifact `path`, copied under `dst` -> its local path; a one-line error if absent."""
    client = open_client(uri)
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise UserError(f"run {run_id!r} is not in the MLflow store {uri or tracking_uri()}; "
                        f"copy its id from `make ui` or the end of `make experiment`") from None
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"run {run_id} has no artifact {path!r} ({type(e).__name__}); "
                        f"was it a pixelexp run that finished?") from None


def list_artifacts(run_id: str, path: str | None = None, uri: str | None = None) -> list[str]:
    """Paths of a run's artifacts directly under `path`."""
    client = open_client(uri)
    return [a.path for a in client.list_artifacts(run_id, path)]


__all__ = ["RunInfo", "Tracker", "open_client", "metric_history", "download", "list_artifacts"]
