"""One run's log: everything a run writes to MLflow goes through a `RunLog`.

Each record is first appended to the run's journal (`runs/<run id>/journal/`) and sent
by a background `Sender`, in order. When the store stops answering, training goes on
and the records wait; they are sent when it answers again, at the latest when the run
ends (`PIXELEXP_TRACKING_WAIT` seconds of waiting, default 300), and otherwise stay in
the journal for `python -m pixelexp sync runs/<run id>`.

A `RunLog` is made by a `Tracker` (`start_run`, `reopen`, `run_log`), which holds the
connection to the store.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient

from pixelexp.console import log
from pixelexp.errors import TrackingOutage
from pixelexp.runs.journal import Journal
from pixelexp.runs.rundir import RunDir
from pixelexp.runs.tracking.keys import clean_metrics, clean_params, clean_tags
from pixelexp.runs.tracking.sender import Sender, send_many
from pixelexp.runs.tracking.settings import tracking_uri, tracking_wait


class RunLog:
    """Everything one run writes to MLflow goes through here.

    With `journal=True` (the default) each record is appended to the run's journal and
    sent by a background thread, so a tracking server that goes away never stops
    training; `end()` waits for the records to be sent. `journal=False` sends at once
    (for handles on a run that another process journals, such as a sweep's parent)."""

    def __init__(self, client: MlflowClient, run_id: str, journal: bool = True, uri: str | None = None):
        self.client = client
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self.run_dir = RunDir.of(run_id)
        self.journal = Journal(self.run_dir.journal, {"run_id": run_id, "tracking_uri": self.uri}) \
            if journal else None
        self._sender = Sender(client, run_id, self.journal) if journal else None

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("time", int(time.time() * 1000))
        if self._sender is None:
            send_many(self.client, self.run_id, [event], None)
        else:
            self._sender.put(event)

    def seed_from_store(self) -> None:
        """A resumed run with a fresh journal: learn which metrics the store already has."""
        if self.journal is None or self.journal.events:
            return
        run = self.client.get_run(self.run_id)
        ids = [("metric", k, m.step) for k in run.data.metrics
               for m in self.client.get_metric_history(self.run_id, k)]
        self.journal.mark_seen(ids)

    def log_params(self, params: dict[str, Any]) -> None:
        self._emit({"kind": "params", "values": clean_params(params)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._emit({"kind": "tags", "values": clean_tags(tags)})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._emit({"kind": "metrics", "step": int(step), "values": clean_metrics(metrics)})

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        event = {"kind": "image", "key": key, "step": int(step), "time": int(time.time() * 1000)}
        if self.journal is not None:
            name = f"image-{key}-{step}-{event['time']}.npy"
            np.save(self.journal.file(name), image)
            event["file"] = name
        else:
            event["array"] = image
        self._emit(event)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, name: str | None = None,
                     copy: bool = True) -> None:
        """Log a file (as `name` if given). With copy=False the journal refers to the file
        itself: if it is gone by the time it is sent (an old checkpoint dropped), it is skipped."""
        path = Path(path).resolve()
        if self.journal is not None and copy:
            kept = self.journal.file(f"artifact-{len(self.journal.events)}-{path.name}")
            shutil.copyfile(path, kept)
            path = kept
        self._emit({"kind": "artifact", "path": str(path), "dir": artifact_path, "name": name or Path(path).name})

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.journal is not None:
            name = f"text-{len(self.journal.events)}.txt"
            self.journal.file(name).write_text(text)
            self._emit({"kind": "text", "file": name, "artifact_file": artifact_file})
        else:
            self._emit({"kind": "text", "text": text, "artifact_file": artifact_file})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record is in the store -> False if it did not answer in time."""
        return True if self._sender is None else self._sender.flush(timeout)

    def end(self, status: str = "FINISHED", wait: float | None = None) -> None:
        """Mark the run ended, after all its records; raise TrackingOutage if the store
        does not take them within `wait` seconds (they stay in the journal)."""
        self._emit({"kind": "status", "status": status})
        if self._sender is None:
            self.run_dir.release()
            return
        wait = tracking_wait() if wait is None else wait
        try:  # the run stays held until its journal is sent or left: no second process writes it meanwhile
            sent = self._sender.flush(wait)
            self._sender.stop()
            if sent:
                shutil.rmtree(self.journal.folder, ignore_errors=True)  # everything is in the store
                return
        finally:
            self.run_dir.release()
        raise TrackingOutage(
            f"the MLflow store {self.uri} did not answer for {wait:.0f} s "
            f"({self._sender.describe_error()}); {len(self.journal.pending())} records of run "
            f"{self.run_id} are kept in {self.journal.folder}; when it answers again, send them with "
            f"`python -m pixelexp sync {self.run_dir.path}`")

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        from pixelexp.errors import Interrupted
        killed = issubclass(exc_type, (KeyboardInterrupt, Interrupted))
        if killed:
            self.set_tags({"pixelexp.killed_by": str(exc) or exc_type.__name__})
        elif exc is not None:
            self.set_tags({"pixelexp.error": f"{exc_type.__name__}: {exc}"})
        try:  # a signal leaves little time: a short wait, the rest stays in the journal
            self.end("KILLED" if killed else "FAILED", wait=min(tracking_wait(), 10.0) if killed else None)
        except TrackingOutage as e:
            log.warning(str(e))


__all__ = ["RunLog"]
