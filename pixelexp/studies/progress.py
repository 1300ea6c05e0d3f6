"""Where a study stands: which variant of how many is running, and the time left.

Before the first variant trains, each variant's epoch is timed from a few training steps
of a throwaway copy of its model (`runs.train.time_epoch`), which gives the first
estimate of the whole study. After every epoch the estimate is corrected: a variant that
has run epochs is expected to go on at its own measured pace (wall-clock between its
epochs: training, evaluation, samples, checkpoints); one that has not, at its first
estimate times the ratio of measured to estimated pace of the variants seen so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.3 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Variant:
    name: str
    epochs: int  # epochs still to train (all of them, unless it resumes)
    of: int  # its train.epochs
    estimate: float | None  # seconds per epoch from the timed steps (None: not timed)
    done: int = 0  # epochs finished in this process
    seconds: float = 0.0  # their wall-clock seconds


@dataclass
class StudyClock:
    """The variants still to run, in order; `started(name)` when one begins, and
    `epoch_done(name)` after each of its epochs -> the study's progress line."""
    variants: list[Variant]
    begun: float = field(default_factory=lambda: time.monotonic())
    current: str | None = None
    mark: float = 0.0  # when the current variant's previous epoch ended (or it began)

    def ratio(self) -> float:
        """Measured / estimated pace over the variants with both (1 when none)."""
        pairs = [(v.seconds / v.done, v.estimate) for v in self.variants if v.done and v.estimate]
        return sum(m for m, _ in pairs) / sum(e for _, e in pairs) if pairs else 1.0

    def left(self) -> float | None:
        """Seconds still to go, or None when a variant has neither a timing nor a measurement."""
        total, ratio = 0.0, self.ratio()
        for v in self.variants:
            pace = v.seconds / v.done if v.done else v.estimate * ratio if v.estimate else None
            if pace is None:
                return None
            total += pace * (v.epochs - v.done)
        if self.current is not None:  # the epoch in progress has been going on for a while
            total -= min(time.monotonic() - self.mark, self._pace(self.current) or 0.0)
        return max(total, 0.0)

    def _pace(self, name: str) -> float | None:
        v = self._get(name)
        return v.seconds / v.done if v.done else v.estimate * self.ratio() if v.estimate else None

    def _get(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def estimate_line(self) -> str:
        """At the start: the first estimate of the whole study."""
        timed = [v for v in self.variants if v.estimate]
        if not timed:
            return ""
        per = ", ".join(f"{v.name} {duration(v.estimate)}" for v in timed)
        total = sum(v.estimate * v.epochs for v in timed)
        n = len(self.variants)
        return (f"study: {n} variant{'s' if n != 1 else ''}, roughly {duration(total)} on this machine "
                f"(an epoch, from its first timed steps: {per}; samples and checkpoints add a little)")

    def resumed(self, name: str, epochs_done: int) -> None:
        """A variant that continues from a checkpoint has fewer epochs to go."""
        v = self._get(name)
        v.epochs = max(v.of - epochs_done, 0)

    def started(self, name: str) -> None:
        self.current, self.mark = name, time.monotonic()

    def epoch_done(self, name: str, epoch: int) -> str:
        v = self._get(name)
        now = time.monotonic()
        v.done += 1
        v.seconds += now - self.mark
        self.mark = now
        index = [x.name for x in self.variants].index(name) + 1
        finished = sum(x.done for x in self.variants)
        planned = sum(x.epochs for x in self.variants)
        left = self.left()
        eta = f"about {duration(left)} left" if left is not None else "time left not known yet"
        return (f"study: variant {index}/{len(self.variants)} ({name}) epoch {epoch}/{v.of}; "
                f"{finished}/{planned} epochs in {duration(now - self.begun)}; {eta}")
