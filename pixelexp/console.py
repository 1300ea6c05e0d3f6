"""What pixelexp tells the person running it: one logger, `log` ("pixelexp"), written as
plain lines. Progress (`log.info`) goes to stdout as it is; warnings and errors go to
stderr as "warning: ..." / "error: ...". In a distributed run only rank 0 writes
(torchrun's RANK), so N processes print one run's progress once.

    from pixelexp.console import log
    log.info(f"[{label}] epoch {epoch}/{epochs} ...")
    log.warning("torch.compile failed (...); training continues eager")

The handler looks up sys.stdout / sys.stderr when a line is written, so redirections
(pytest's capture, `contextlib.redirect_stdout`) see it. Programs that embed pixelexp
may replace the handler or raise the level (`log.setLevel(logging.WARNING)`) to
silence progress.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("pixelexp")


def rank() -> int:
    """This process's rank in a torchrun / DDP job; 0 when not distributed."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class RankZero(logging.Filter):
    """Lets through the records of rank 0 only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank() == 0


class Lines(logging.Handler):
    """INFO and below to stdout as the message; WARNING and above to stderr, prefixed
    with the level ("warning: ...")."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                stream, msg = sys.stderr, f"{record.levelname.lower()}: {msg}"
            else:
                stream = sys.stdout
            stream.write(msg + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a broken stream must not end the run
            self.handleError(record)


if not log.handlers:
    _handler = Lines()
    _handler.addFilter(RankZero())
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
