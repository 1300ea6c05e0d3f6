"""A run's tracking journal: every record bound for MLflow is written here first.

    runs/<run id>/journal/events.jsonl   one JSON event per line, in the order logged
    runs/<run id>/journal/sent           how many of them the tracking store has taken
    runs/<run id>/journal/files/         images and texts the events refer to
    runs/<run id>/journal/meta.json      run id and tracking URI (what `sync` needs)

Appending is an fsynced write of one line, so training never waits for the tracking
server, and a record survives a crash of the process or of the server. A sender
(tracking.RunLog) takes events in order and advances `sent`. Events carry their own
timestamps, so sending one twice writes the same row (MLflow's SQL stores drop exact
duplicate metrics); and a (key, step) logged twice, as when a resumed run repeats
an epoch it had already logged before it was killed, keeps its first value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pixelexp.errors import UserError


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    def __init__(self, folder: str | Path, meta: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.files = self.folder / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.events_path = self.folder / "events.jsonl"
        self.sent_path = self.folder / "sent"
        if meta is not None:
            _atomic_write(self.folder / "meta.json", json.dumps(meta))
        self.events: list[dict[str, Any]] = self._read()
        self.sent = self._read_sent()
        self.seen: set[tuple] = {i for e in self.events for i in self._identities(e)}

    @property
    def meta(self) -> dict[str, Any]:
        p = self.folder / "meta.json"
        if not p.exists():
            return {}
        try:
            meta = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict):
            raise self._damaged(p, "is not the journal's JSON header")
        return meta

    def _damaged(self, path: Path, what: str) -> UserError:
        return UserError(f"{path} {what}: the journal is damaged; move {self.folder} aside (its records are then "
                         f"not sent) or repair that file")

    def _read_sent(self) -> int:
        if not self.sent_path.exists():
            return 0
        text = self.sent_path.read_text(errors="replace").strip() or "0"
        if not (text.isascii() and text.isdigit()) or int(text) > len(self.events):
            raise self._damaged(self.sent_path, f"holds {text[:20]!r}, not a count of at most {len(self.events)} "
                                                f"records")
        return int(text)

    def _read(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        events, size = [], 0
        with open(self.events_path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):  # the half-written last line of a killed process
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
                    raise self._damaged(self.events_path, f"line {n} is not a journal record")
                events.append(event)
                size += len(line)
        # Cut any torn tail, so that the next append starts on a fresh line.
        if self.events_path.stat().st_size != size:
            with open(self.events_path, "r+b") as f:
                f.truncate(size)
        return events

    @staticmethod
    def _identities(event: dict[str, Any]) -> list[tuple]:
        """What makes a record a repeat: a metric or an image at the same (key, step)."""
        if event["kind"] == "metrics":
            return [("metric", k, event["step"]) for k in event["values"]]
        if event["kind"] == "image":
            return [("image", event["key"], event["step"])]
        return []

    def mark_seen(self, identities) -> None:
        """(key, step) pairs the store already holds (a run resumed on another machine)."""
        self.seen.update(identities)

    def append(self, event: dict[str, Any]) -> bool:
        """Write one event durably -> False if it only repeats records already logged.
        Metrics at a (key, step) already logged are dropped from the event."""
        if event["kind"] == "metrics":
            values = {k: v for k, v in event["values"].items() if ("metric", k, event["step"]) not in self.seen}
            event = {**event, "values": values}
            if not values:
                return False
        elif any(i in self.seen for i in self._identities(event)):
            return False
        event = {"seq": len(self.events), **event}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.events.append(event)
        self.seen.update(self._identities(event))
        return True

    def pending(self) -> list[dict[str, Any]]:
        return self.events[self.sent:]

    def mark_sent(self, upto: int) -> None:
        """Events [0, upto) are in the store."""
        self.sent = upto
        _atomic_write(self.sent_path, str(upto))

    def file(self, name: str) -> Path:
        return self.files / name


__all__ = ["Journal"]
