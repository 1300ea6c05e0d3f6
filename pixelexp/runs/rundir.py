"""Where a run lives on disk, and whether the process that holds it is alive: the one
place that names a run's files.

    runs/<run id>/                   $PIXELEXP_RUNS, else runs/ in the current folder
        config.yaml                  the resolved config the run started with
        checkpoints/step-<N>.pt      the newest `train.keep_checkpoints` (checkpoint.CheckpointDir)
        checkpoints/best.pt          the epoch chosen on validation: the model a run reports
        journal/                     records bound for MLflow, kept until it has them (journal.py)
        lock                         locked by the process that runs it, while it runs
        owner                        "host:pid" of that process

The run's MLflow artifacts mirror part of it: config.yaml, checkpoints/last.pt (the newest
step file) and checkpoints/best.pt. A process holds a run (`RunDir.claim`) while it
trains, resumes or continues it, so that two processes never write one run at once.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pixelexp.engine.checkpoint import CheckpointDir
from pixelexp.errors import UserError

CONFIG = "config.yaml"  # the run's resolved config: in its folder, and its MLflow artifact
SAMPLES = "samples"  # sample grids, samples/epoch-005.png: in its folder, and its MLflow artifact folder
CHECKPOINTS = "checkpoints"  # the folder of its checkpoints, and their MLflow artifact folder
LAST = "last.pt"  # MLflow: the newest checkpoint
BEST = "best.pt"  # folder and MLflow: the checkpoint of the epoch chosen on validation
LAST_ARTIFACT = f"{CHECKPOINTS}/{LAST}"
BEST_ARTIFACT = f"{CHECKPOINTS}/{BEST}"


def runs_root() -> Path:
    """The folder of run folders: $PIXELEXP_RUNS, else runs/ (in the current folder)."""
    return Path(os.environ.get("PIXELEXP_RUNS") or "runs")


def this_process() -> str:
    """'host:pid' of this process, as an owner file and a sweep trial name their process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(owner: str) -> bool | None:
    """Whether the process an owner string 'host:pid' names is alive: True or False for a
    process on this host; None where this process cannot tell (another host, or a process
    it may not signal). A zombie, killed and not yet reaped by its parent, is not alive."""
    host, _, pid = owner.rpartition(":")
    try:
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except PermissionError:
        return None
    except (OSError, OverflowError):
        return False
    try:
        return not Path(f"/proc/{pid_n}/stat").read_text().rpartition(") ")[2].startswith("Z")
    except OSError:  # ended since the signal found it; where there is no /proc, the signal decides
        return not Path("/proc").is_dir()


_held: dict[str, int] = {}  # run id -> open lock file of a run this process holds


@dataclass(frozen=True)
class RunDir:
    """The folder of one run, root/<run id>, and the names of everything in it."""

    root: Path
    run_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, run_id: str) -> RunDir:
        """The run's folder under runs_root()."""
        return cls(runs_root(), run_id)

    @classmethod
    def at(cls, folder: str | Path) -> RunDir:
        """The run whose folder is `folder` (as `sync runs/<run id>` names it)."""
        folder = Path(folder)
        return cls(folder.parent, folder.name)

    @property
    def path(self) -> Path:
        return self.root / self.run_id

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    def sample_file(self, epoch: int) -> Path:
        """samples/epoch-005.png: the grid drawn after that epoch (also the artifact's name)."""
        return self.samples / f"epoch-{epoch:03d}.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    def checkpoint_dir(self, keep: int = 2) -> CheckpointDir:
        """Its checkpoints: the newest `keep` step files, and best.pt."""
        return CheckpointDir(self.checkpoints, keep, best=self.best)

    @property
    def journal(self) -> Path:
        return self.path / "journal"

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    @property
    def owner_file(self) -> Path:
        return self.path / "owner"

    # ------------------------------------------------------------------ who holds it

    def claim(self) -> None:
        """Hold the run for this process: an exclusive lock on its `lock`, kept until
        `release` or the process ends (the kernel drops it then, even on SIGKILL). Taking it is
        atomic, so of two processes that resume one run at once exactly one gets it; the
        other gets a one-line error. `owner` beside it says which process holds it."""
        import fcntl
        if self.run_id in _held:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # no flock here (some NFS):
                self.owner_file.write_text(this_process())  # the owner file tells
                return
            owner = self.owner() or "another process"
            pid = owner.rpartition(":")[2]
            raise UserError(f"run {self.run_id} is running in process {owner}; wait for it to end, or stop it "
                            f"first (kill -TERM {pid} writes a checkpoint)") from None
        _held[self.run_id] = fd
        self.owner_file.write_text(this_process())

    def release(self) -> None:
        """Let go of a run this process held (its end)."""
        fd = _held.pop(self.run_id, None)
        if fd is not None:
            os.close(fd)

    def owner(self) -> str | None:
        """'host:pid' of the process that last held the run, as its owner file says."""
        try:
            return self.owner_file.read_text().strip() or None
        except OSError:
            return None

    def holder(self) -> str | None:
        """'host:pid' of another live process on this host that holds the run, else None."""
        import fcntl
        if self.run_id in _held:
            return None
        if self.lock.exists():
            try:
                fd = os.open(self.lock, os.O_RDWR)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None  # nobody holds it
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return self.owner() or "another process"
            finally:
                os.close(fd)
        owner = self.owner()  # no lock to ask: judge by the owner's process id
        if owner is None or owner == this_process():
            return None
        return owner if process_alive(owner) is True else None


__all__ = ["RunDir", "runs_root", "process_alive", "this_process", "CONFIG", "CHECKPOINTS", "LAST", "BEST",
           "LAST_ARTIFACT", "BEST_ARTIFACT"]
