"""The only module that talks to MLflow.

Store: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the current folder
(the repo root when run through make), with artifacts in `mlartifacts/` beside it.
One MLflow experiment per experiment file; one parent run per `make experiment`
call; one child run per variant.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
warnings.filterwarnings("ignore", module="mlflow")
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.WARNING)

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from pixelexp.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_PARAM = 6000  # MLflow's limit on a param value's length


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def _local_artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts go to mlartifacts/ beside the database."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def git_state() -> dict[str, str]:
    """Commit of the code that runs, and whether its tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.SubprocessError, OSError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


class Tracker:
    """A connection to one MLflow store and one experiment in it."""

    def __init__(self, experiment: str, uri: str | None = None, create: bool = True):
        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        mlflow.set_tracking_uri(self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as e:  # noqa: BLE001 - any failure to reach the store
            raise UserError(f"MLflow store {self.uri} cannot be opened ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); check MLFLOW_TRACKING_URI") from None
        if found is None and not create:
            raise UserError(f"no experiment {experiment!r} in the MLflow store {self.uri}; "
                            f"run `make experiment EXP={experiment}` first")
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_local_artifact_root(self.uri))
        else:
            self.experiment_id = found.experiment_id
        self.experiment = experiment

    def start_run(self, name: str, parent: "RunLog | None" = None, tags: dict | None = None) -> "RunLog":
        all_tags = {**(tags or {})}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return RunLog(self.client, run.info.run_id)

    def has_run(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # noqa: BLE001
            return False

    def reopen(self, run_id: str) -> "RunLog":
        """Mark a finished run as running again (a resumed sweep keeps its parent run)."""
        self.client.update_run(run_id, status="RUNNING")
        return RunLog(self.client, run_id)

    # ---------------------------------------------------------------- reading back

    def parent_runs(self) -> pd.DataFrame:
        """Runs of this experiment that have children (experiment calls), newest first."""
        runs = self.client.search_runs([self.experiment_id], "tags.`pixelexp.kind` = 'experiment'",
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        return pd.DataFrame([{"run_id": r.info.run_id, "name": r.info.run_name,
                              "status": r.info.status, "start_time": r.info.start_time} for r in runs])

    def child_runs(self, parent_id: str) -> list[dict[str, Any]]:
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                       order_by=["attributes.start_time ASC"], max_results=1000)
        return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                 "params": dict(r.data.params), "tags": dict(r.data.tags),
                 "metrics": dict(r.data.metrics)} for r in runs]


def metric_history(run_id: str, keys: Iterable[str], uri: str | None = None) -> pd.DataFrame:
    """Long table (key, step, value, timestamp) of the given metrics of one run."""
    client = MlflowClient(tracking_uri=uri or tracking_uri())
    rows = [{"key": k, "step": m.step, "value": m.value, "timestamp": m.timestamp}
            for k in keys for m in client.get_metric_history(run_id, k)]
    return pd.DataFrame(rows, columns=["key", "step", "value", "timestamp"])


def download(run_id: str, path: str, dst: str | Path, uri: str | None = None) -> Path:
    client = MlflowClient(tracking_uri=uri or tracking_uri())
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
    client = MlflowClient(tracking_uri=uri or tracking_uri())
    return [a.path for a in client.list_artifacts(run_id, path)]


class RunLog:
    """Everything one run writes to MLflow goes through here."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            if exc is not None and not isinstance(exc, KeyboardInterrupt):
                self.set_tags({"pixelexp.error": f"{exc_type.__name__}: {exc}"[:5000]})


__all__ = ["Tracker", "RunLog", "tracking_uri", "git_state", "metric_history",
           "download", "list_artifacts"]
