"""Sends a run's journal to the MLflow store, in order, on a background thread.

Everything a run logs is first written to its journal (`runs/<run id>/journal/`, see
`pixelexp.runs.journal`); a `Sender` takes the records that wait there and sends them,
consecutive metrics in one request. While the store does not answer, it waits and
tries again (training goes on); a record the store refuses for good is kept in
`journal/rejected.jsonl` and the next one is sent. `sync` uses the same sending,
without the thread, for a journal a run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pixelexp.console import log
from pixelexp.errors import cause
from pixelexp.runs.journal import Journal

# Errors that say the store is (for now) unreachable or busy, so sending is retried;
# any other MLflow error rejects that one record (kept in journal/rejected.jsonl).
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "ABORTED", "ENDPOINT_NOT_FOUND"}


class Sender:
    """Sends a journal's records to the store in order, on its own thread (or, with
    thread=False, when `send` is called)."""

    def __init__(self, client: MlflowClient, run_id: str, journal: Journal, thread: bool = True):
        self.client, self.run_id, self.journal = client, run_id, journal
        self.cv = threading.Condition()
        self.error: BaseException | None = None
        self.down_since: float | None = None
        self.stopping = False
        if thread:
            self.thread = threading.Thread(target=self._loop, name=f"mlflow-sender-{run_id[:8]}", daemon=True)
            self.thread.start()

    def put(self, event: dict[str, Any]) -> None:
        with self.cv:
            self.journal.append(event)
            self.cv.notify_all()

    def describe_error(self) -> str:
        e = self.error
        return "no error" if e is None else cause(e)

    def flush(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            self.cv.notify_all()
            while self.journal.pending():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cv.wait(timeout=left if left is None else min(left, 1.0))
            return True

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        backoff = 0.5
        while True:
            with self.cv:
                while not self.journal.pending() and not self.stopping:
                    self.cv.wait()
                if self.stopping:
                    return
                batch = list(self.journal.pending())
            try:
                self.send(batch)
            except Exception as e:  # noqa: BLE001 - the store is away: wait and try again
                self.error = e
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning(f"the MLflow store does not answer ({self.describe_error()}); "
                                f"training goes on, records of run {self.run_id} wait in {self.journal.folder}")
                with self.cv:
                    self.cv.wait(timeout=backoff)
                    if self.stopping:
                        return
                backoff = min(backoff * 2, 8.0)
                continue
            if self.down_since is not None:
                log.info(f"the MLflow store answers again after {time.time() - self.down_since:.0f} s; "
                         f"records of run {self.run_id} sent")
                self.down_since = None
            backoff = 0.5

    def send(self, batch: list[dict[str, Any]]) -> None:
        """Send these records in order, marking each sent; raises when the store is away."""
        i = 0
        while i < len(batch):
            j = i + 1
            if batch[i]["kind"] == "metrics":  # consecutive metrics go in one request
                n = len(batch[i]["values"])
                while j < len(batch) and batch[j]["kind"] == "metrics" and n + len(batch[j]["values"]) <= 1000:
                    n += len(batch[j]["values"])
                    j += 1
            try:
                send_many(self.client, self.run_id, batch[i:j], self.journal)
            except Exception as e:
                if transient(e):
                    raise
                self._reject(batch[i:j], e)
            with self.cv:
                self.journal.mark_sent(batch[j - 1]["seq"] + 1)
                self.cv.notify_all()
            i = j

    def _reject(self, events: list[dict[str, Any]], e: Exception) -> None:
        with open(self.journal.folder / "rejected.jsonl", "a") as f:
            for ev in events:
                f.write(json.dumps({**ev, "error": f"{type(e).__name__}: {e}"[:500]}) + "\n")
        log.warning(f"the MLflow store rejected a {events[0]['kind']} record of run {self.run_id} "
                    f"({cause(e)}); kept in {self.journal.folder / 'rejected.jsonl'}")


def transient(e: Exception) -> bool:
    """Whether an error says the store is away for now (send again later), not that it refuses the record."""
    from mlflow.exceptions import MlflowException
    return not isinstance(e, MlflowException) or e.error_code in TRANSIENT_CODES


def send_many(client: MlflowClient, run_id: str, events: list[dict[str, Any]], journal: Journal | None) -> None:
    """Send records of one run: a run of metrics in one batch, anything else one by one."""
    if events[0]["kind"] == "metrics":
        metrics = [Metric(k, v, e["time"], e["step"]) for e in events for k, v in e["values"].items()]
        client.log_batch(run_id, metrics=metrics)
    else:
        for e in events:
            send_one(client, run_id, e, journal)


def send_one(client: MlflowClient, run_id: str, e: dict[str, Any], journal: Journal | None) -> None:
    kind = e["kind"]  # (metrics go through send_many, in batches)
    if kind == "params":
        items = [Param(k, v) for k, v in e["values"].items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(run_id, params=items[i:i + 100])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in e["values"].items()])
    elif kind == "image":
        sent = client.list_artifacts(run_id, "images")  # sent before a crash or an outage?
        if any(Path(a.path).name.startswith(f"{e['key']}+step+{e['step']}+") for a in sent):
            return
        image = e["array"] if "array" in e else np.load(journal.file(e["file"]))
        client.log_image(run_id, image, key=e["key"], step=e["step"], timestamp=e["time"], synchronous=True)
    elif kind == "text":
        text = e["text"] if "text" in e else journal.file(e["file"]).read_text()
        client.log_text(run_id, text, e["artifact_file"])
    elif kind == "artifact":
        path = Path(e["path"])
        if not path.exists():  # a checkpoint dropped since: a newer one follows
            return
        with tempfile.TemporaryDirectory() as tmp:
            named = Path(tmp) / e["name"]
            try:
                os.link(path, named)
            except OSError:
                shutil.copyfile(path, named)
            client.log_artifact(run_id, str(named), e["dir"])
    elif kind == "status":
        client.set_terminated(run_id, status=e["status"], end_time=e["time"])
    else:
        raise ValueError(f"unknown journal record {kind!r}")


__all__ = ["Sender", "TRANSIENT_CODES", "send_many", "send_one", "transient"]
