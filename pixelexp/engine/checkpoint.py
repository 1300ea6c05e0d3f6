"""Checkpoints: everything needed to continue a run exactly where it stopped.

A `Checkpoint` holds the model, optimizer and scheduler states, where training stands
(epoch, batch within the epoch, optimizer step, the epoch's running sums), every
random number generator (Python, NumPy, torch CPU and CUDA, and the generator that
orders and binarizes the epoch's data), the config, the data checksum and the metrics
so far: what training saves, and what `resume` and `sample` load. Files are written to
a temporary name, flushed, fsynced and renamed, so a kill at any moment leaves either
the old file or the new one, never half of one.

    runs/<run id>/checkpoints/step-000000120.pt   # the newest `train.keep_checkpoints`
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelexp.errors import CheckpointError

FORMAT = "pixelexp-checkpoint"
VERSION = 2  # the version of the fields below; a file of another version is refused


def rng_state() -> dict[str, Any]:
    """The state of every global random number generator."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples_to_lists(obj: Any) -> Any:
    """weights_only loading takes lists, not tuples, of plain values (Python's RNG state)."""
    if isinstance(obj, tuple):
        return [_tuples_to_lists(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _tuples_to_lists(v) for k, v in obj.items()}
    return obj


def _lists_to_tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def pack_rng(state: dict[str, Any]) -> dict[str, Any]:
    np_state = state["numpy"]
    return {"python": _tuples_to_lists(state["python"]),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": state["torch"], "cuda": list(state["cuda"])}


def unpack_rng(packed: dict[str, Any]) -> dict[str, Any]:
    n = packed["numpy"]
    return {"python": _lists_to_tuples(packed["python"]),
            "numpy": (n[0], n[1].numpy().astype(np.uint32), *n[2:]),
            "torch": packed["torch"], "cuda": packed["cuda"]}


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@dataclass
class Checkpoint:
    """One saved moment of a run. A file holds these fields (tensors, lists and plain
    values, so it loads with weights_only) beside the format tag and version."""

    config: dict[str, Any]  # the resolved config (Config.to_dict)
    image_shape: list[int]
    levels: int
    num_classes: int | None
    data_checksum: str | None
    run_id: str | None  # the MLflow run it belongs to; None for a run tracked nowhere
    epoch: int  # epochs finished
    metrics: dict[str, float]  # the last finished epoch's
    model: dict[str, Any]  # state dicts
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    train_state: dict[str, Any]  # train.Position's fields: where training stands
    data_rng: torch.Tensor | None  # the epoch's data generator, when it stopped within an epoch
    rng: dict[str, Any]  # pack_rng(rng_state())
    torch_version: str
    final: bool = False  # written at the end of training
    path: Path | None = field(default=None, compare=False)  # the file it was read from or written to

    @property
    def where(self) -> str:
        """Its file, for messages."""
        return str(self.path) if self.path is not None else "checkpoint"

    def to_dict(self) -> dict[str, Any]:
        """What its file holds."""
        return {"format": FORMAT, "version": VERSION,
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], path: Path | None = None) -> Checkpoint:
        names = [f.name for f in fields(cls) if f.name != "path"]
        missing = [n for n in names if n not in saved and n != "final"]
        if missing:
            raise CheckpointError(f"{path or 'checkpoint'}: an incomplete pixelexp checkpoint "
                                  f"(no {', '.join(missing)}); resume from an older one with --checkpoint PATH")
        return cls(**{n: saved[n] for n in names if n in saved}, path=path)

    def save(self, path: str | Path) -> Path:
        """Write it to `path` atomically -> path (also its `path` from now on)."""
        self.path = atomic_save(self.to_dict(), Path(path))
        return self.path


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint in a file; one-line errors for files that are truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); it may be "
                              f"truncated: resume from an older one with --checkpoint PATH") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelexp checkpoint (no format tag {FORMAT!r})")
    if saved.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {saved.get('version')} is not supported "
                              f"(this pixelexp reads version {VERSION})")
    return Checkpoint.from_dict(saved, path)


class CheckpointDir:
    """The newest `keep` checkpoints of one run, named by optimizer step, and `best`
    (where the checkpoint of the epoch chosen on validation goes; None: not kept)."""

    def __init__(self, folder: str | Path, keep: int = 2, best: str | Path | None = None):
        self.folder = Path(folder)
        self.keep = keep
        self.best = None if best is None else Path(best)

    def files(self) -> list[Path]:
        """Oldest first."""
        return sorted(self.folder.glob("step-*.pt"))

    def latest(self) -> Path | None:
        files = self.files()
        return files[-1] if files else None

    def path(self, step: int) -> Path:
        """The file of the checkpoint at optimizer step `step`."""
        return self.folder / f"step-{step:09d}.pt"

    def write(self, ckpt: Checkpoint, step: int, final: bool = False) -> Path:
        """Write step-<step>.pt (replacing one of the same step), then drop the oldest.
        The end of each epoch and a signal both write one; `final` marks the end of training."""
        ckpt.final = final
        path = ckpt.save(self.path(step))
        for old in self.files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path


__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointDir", "atomic_save", "load",
           "rng_state", "set_rng_state", "pack_rng", "unpack_rng"]
