"""`python -m pixelexp sync runs/<run id>`: send what a run's journal still holds.

A run whose tracking store did not answer before it ended leaves its records in its
journal; once the store answers again, this sends them, in order, to the store the run
used (or the one given), and removes the journal when all of them are in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pixelexp.console import log
from pixelexp.errors import UserError, cause
from pixelexp.runs.journal import Journal
from pixelexp.runs.rundir import RunDir
from pixelexp.runs.tracking.sender import Sender
from pixelexp.runs.tracking.settings import tracking_uri
from pixelexp.runs.tracking.store import open_client


def sync(folder: str | Path, uri: str | None = None) -> int:
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
        log.info(f"{jdir}: nothing left to send for run {run_id}")
        return 0
    try:
        Sender(client, run_id, journal, thread=False).send(pending)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"the MLflow store {uri} does not answer ({cause(e)}); "
                        f"{len(journal.pending())} records of run {run_id} "
                        f"still wait in {jdir}; try again later") from None
    log.info(f"sent {len(pending)} records of run {run_id} to {uri}")
    shutil.rmtree(jdir, ignore_errors=True)
    return len(pending)


__all__ = ["sync"]
