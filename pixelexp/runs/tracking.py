"""The only module that talks to MLflow.

Store: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the current folder
(the repo root when run through make), with artifacts in `mlartifacts/` beside it.
One MLflow experiment per experiment file; one parent run per `make experiment`
call; one child run per variant.

Everything a run logs is first written to its journal (`runs/<run id>/journal/`, see
journal.py) and sent by a background thread, in order. When the store stops answering,
training goes on and the records wait; they are sent when it answers again, at the
latest when the run ends (`PIXELEXP_TRACKING_WAIT` seconds of waiting, default 300),
and otherwise stay in the journal for `python -m pixelexp sync runs/<run id>`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at ..." on every end
# A tracking server that stops answering should cost seconds, not MLflow's default of
# minutes of retries per call: the journal below keeps the records and retries itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# MLflow sets up its own loggers on import, at this level: no "Creating initial MLflow
# database tables" and alembic lines on every new store.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
warnings.filterwarnings("ignore", module="mlflow")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from pixelexp.errors import TrackingOutage, UserError, cause  # noqa: E402
from pixelexp.runs.journal import Journal  # noqa: E402
from pixelexp.runs.rundir import RunDir  # noqa: E402

for _name in ("mlflow", "alembic"):  # in case MLflow was imported before us
    logging.getLogger(_name).setLevel(max(logging.getLogger(_name).level, logging.WARNING))

REPO = Path(__file__).resolve().parents[2]
# Errors that say the store is (for now) unreachable or busy, so sending is retried;
# any other MLflow error rejects that one record (kept in journal/rejected.jsonl).
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                   "DEADLINE_EXCEEDED", "ABORTED", "ENDPOINT_NOT_FOUND"}


# ---------------------------------------------------------------------------- values
# Every key and value bound for MLflow passes through these, whichever store takes it:
# the SQL stores coerce what they are given, the REST client of a tracking server does
# not (an int tag value is a TypeError there), and every store has the same limits.

MAX_KEY = 250  # MLflow's limit on a key's length (params, tags, metrics)
MAX_PARAM = 6000  # ... on a param value's length
MAX_TAG = 8000  # ... on a tag value's length
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")  # MLflow takes letters, digits, _ - . / space :


def clean_key(key: Any) -> str:
    """A key MLflow accepts in every store: its own characters, at most 250 of them."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY] or "_"


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    return {clean_key(k): _text(v, MAX_PARAM) for k, v in params.items()}


def clean_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {clean_key(k): _text(v, MAX_TAG) for k, v in tags.items()}


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers as floats (numpy and torch scalars, bools, ints); NaN and inf stay what they are."""
    return {clean_key(k): float(v) for k, v in metrics.items()}


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


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


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


def git_diff() -> str:
    """Uncommitted changes to tracked files ('' when clean or not a git checkout)."""
    try:
        return subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ""


def pip_freeze() -> str:
    """name==version of every installed distribution (what `pip freeze` lists)."""
    from importlib import metadata
    seen = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={d.version}"
    return "\n".join(sorted(seen.values(), key=str.lower)) + "\n"


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

    def start_run(self, name: str, parent: RunLog | str | None = None, tags: dict | None = None,
                  journal: bool = True) -> RunLog:
        all_tags = {**(tags or {})}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent if isinstance(parent, str) else parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=_text(name, MAX_KEY), tags=clean_tags(all_tags))
        return RunLog(self.client, run.info.run_id, journal=journal, uri=self.uri)

    @classmethod
    def of_run(cls, run_id: str, uri: str | None = None) -> Tracker:
        """The tracker of the experiment a run belongs to."""
        uri = uri or tracking_uri()
        client = open_client(uri)
        try:
            exp_id = client.get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001
            raise UserError(f"run {run_id!r} is not in the MLflow store {uri}; copy its id from `make ui` "
                            f"or from the output of the command that started it") from None
        return cls(client.get_experiment(exp_id).name, uri, create=False)

    def run_info(self, run_id: str):
        """(status, tags, name, experiment name) of a run in this store, or a one-line error."""
        try:
            r = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001
            raise UserError(f"run {run_id!r} is not in the MLflow store {self.uri}; copy its id "
                            f"from `make ui` or from the output of the command that started it") from None
        return r

    def has_run(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # noqa: BLE001
            return False

    def reopen(self, run_id: str, journal: bool = True) -> RunLog:
        """Mark a run as running again (a resumed run or sweep keeps its run id); its journal
        is opened first, so a damaged one stops us before the run is touched."""
        log = RunLog(self.client, run_id, journal=journal, uri=self.uri)
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {"pixelexp.resumed_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        return log

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Tags on any run of this store, sent at once (not journaled)."""
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in clean_tags(tags).items()])

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def find_runs(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string,
                                       order_by=["attributes.start_time DESC"], max_results=1000)

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
    client = open_client(uri)
    rows = [{"key": k, "step": m.step, "value": m.value, "timestamp": m.timestamp}
            for k in keys for m in client.get_metric_history(run_id, k)]
    return pd.DataFrame(rows, columns=["key", "step", "value", "timestamp"])


def download(run_id: str, path: str, dst: str | Path, uri: str | None = None) -> Path:
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
    client = open_client(uri)
    return [a.path for a in client.list_artifacts(run_id, path)]


class RunLog:
    """Everything one run writes to MLflow goes through here.

    With `journal=True` (the default) each record is appended to the run's journal and
    sent by a background thread, so a tracking server that goes away never stops
    training; `end()` waits for the records to be sent. `journal=False` sends at once
    (for handles on a run that another process journals, such as a sweep's parent)."""

    def __init__(self, client: MlflowClient, run_id: str, journal: bool = True, uri: str | None = None,
                 warn=None):
        self.client = client
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self.run_dir = RunDir.of(run_id)
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.journal = Journal(self.run_dir.journal, {"run_id": run_id, "tracking_uri": self.uri}) \
            if journal else None
        self._sender = _Sender(client, run_id, self.journal, self.warn) if journal else None

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("time", int(time.time() * 1000))
        if self._sender is None:
            _send_many(self.client, self.run_id, [event], None)
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
            self.warn(f"warning: {e}")


class _Sender:
    """Sends a journal's records to the store in order, on its own thread."""

    def __init__(self, client: MlflowClient, run_id: str, journal: Journal, warn, thread: bool = True):
        self.client, self.run_id, self.journal, self.warn = client, run_id, journal, warn
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
                self._send(batch)
            except Exception as e:  # noqa: BLE001 - the store is away: wait and try again
                self.error = e
                if self.down_since is None:
                    self.down_since = time.time()
                    self.warn(f"warning: the MLflow store does not answer ({self.describe_error()}); "
                              f"training goes on, records of run {self.run_id} wait in {self.journal.folder}")
                with self.cv:
                    self.cv.wait(timeout=backoff)
                    if self.stopping:
                        return
                backoff = min(backoff * 2, 8.0)
                continue
            if self.down_since is not None:
                self.warn(f"the MLflow store answers again after {time.time() - self.down_since:.0f} s; "
                          f"records of run {self.run_id} sent")
                self.down_since = None
            backoff = 0.5

    def _send(self, batch: list[dict[str, Any]]) -> None:
        i = 0
        while i < len(batch):
            j = i + 1
            if batch[i]["kind"] == "metrics":  # consecutive metrics go in one request
                n = len(batch[i]["values"])
                while j < len(batch) and batch[j]["kind"] == "metrics" and n + len(batch[j]["values"]) <= 1000:
                    n += len(batch[j]["values"])
                    j += 1
            try:
                _send_many(self.client, self.run_id, batch[i:j], self.journal)
            except Exception as e:
                if _transient(e):
                    raise
                self._reject(batch[i:j], e)
            with self.cv:
                self.journal.mark_sent(batch[j - 1]["seq"] + 1)
                self.cv.notify_all()
            i = j

    def _reject(self, events: list[dict[str, Any]], e: Exception) -> None:
        import json
        with open(self.journal.folder / "rejected.jsonl", "a") as f:
            for ev in events:
                f.write(json.dumps({**ev, "error": f"{type(e).__name__}: {e}"[:500]}) + "\n")
        self.warn(f"warning: the MLflow store rejected a {events[0]['kind']} record of run {self.run_id} "
                  f"({cause(e)}); kept in "
                  f"{self.journal.folder / 'rejected.jsonl'}")


def _transient(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException
    return not isinstance(e, MlflowException) or e.error_code in TRANSIENT_CODES


def _send_many(client: MlflowClient, run_id: str, events: list[dict[str, Any]], journal: Journal | None) -> None:
    if events[0]["kind"] == "metrics":
        metrics = [Metric(k, v, e["time"], e["step"]) for e in events for k, v in e["values"].items()]
        client.log_batch(run_id, metrics=metrics)
    else:
        for e in events:
            _send_one(client, run_id, e, journal)


def _send_one(client: MlflowClient, run_id: str, e: dict[str, Any], journal: Journal | None) -> None:
    kind = e["kind"]  # (metrics go through _send_many, in batches)
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


def sync(folder: str | Path, uri: str | None = None, echo=print) -> int:
    """Send the records a run's journal still holds -> how many were sent."""
    folder = Path(folder)
    jdir = RunDir.at(folder).journal  # given the run's folder; else the journal's own folder
    jdir = jdir if jdir.is_dir() else folder
    if not (jdir / "events.jsonl").exists():
        raise UserError(f"{folder}: no journal here (expected {RunDir.at(folder).journal}/events.jsonl); give the "
                        f"run folder named in the message, e.g. runs/<run id>")
    journal = Journal(jdir)
    meta = journal.meta
    uri = uri or meta.get("tracking_uri") or tracking_uri()
    run_id = meta.get("run_id") or folder.name
    client = open_client(uri)
    pending = journal.pending()
    if not pending:
        echo(f"{jdir}: nothing left to send for run {run_id}")
        return 0
    try:
        _Sender(client, run_id, journal, echo, thread=False)._send(pending)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"the MLflow store {uri} does not answer ({cause(e)}); "
                        f"{len(journal.pending())} records of run {run_id} "
                        f"still wait in {jdir}; try again later") from None
    echo(f"sent {len(pending)} records of run {run_id} to {uri}")
    shutil.rmtree(jdir, ignore_errors=True)
    return len(pending)


__all__ = ["Tracker", "RunLog", "clean_key", "clean_params", "clean_tags", "clean_metrics", "tracking_uri",
           "git_state", "git_diff", "pip_freeze", "metric_history", "download", "list_artifacts", "sync"]
