"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer and scheduler states, where training stands
(epoch, batch within the epoch, optimizer step, the epoch's running sums), every
random number generator (Python, NumPy, torch CPU and CUDA, and the generator that
orders and binarizes the epoch's data), the config, the data checksum and the metrics
so far. Files are written to a temporary name, flushed, fsynced and renamed, so a kill
at any moment leaves either the old file or the new one, never half of one.

    runs/<run id>/checkpoints/step-000000120.pt   # the newest `train.keep_checkpoints`
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelexp.errors import CheckpointError

FORMAT = "pixelexp-checkpoint"
VERSION = 2  # 1: weights only (issue 2); 2: adds the training state
READABLE = (1, 2)


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


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint as a dict; one-line errors for files that are truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); it may be "
                              f"truncated: resume from an older one with --checkpoint PATH") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelexp checkpoint (no format tag {FORMAT!r})")
    if ckpt.get("version") not in READABLE:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                              f"(this pixelexp reads versions {', '.join(map(str, READABLE))})")
    return ckpt


def resumable(path: Path, ckpt: dict[str, Any]) -> None:
    if ckpt.get("version") != VERSION or "train_state" not in ckpt:
        raise CheckpointError(f"{path}: a weights-only checkpoint (version {ckpt.get('version')}) "
                              f"cannot resume training; start a new run with `python -m pixelexp rerun`")


class CheckpointDir:
    """The newest `keep` checkpoints of one run, named by optimizer step."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def files(self) -> list[Path]:
        """Oldest first."""
        return sorted(self.folder.glob("step-*.pt"))

    def latest(self) -> Path | None:
        files = self.files()
        return files[-1] if files else None

    def write(self, state: dict[str, Any], step: int, final: bool = False) -> Path:
        """Write step-<step>.pt (replacing one of the same step), then drop the oldest.
        The end of each epoch and a signal both write one; `final` marks the end of training."""
        path = atomic_save({"format": FORMAT, "version": VERSION, "final": final, **state},
                           self.folder / f"step-{step:09d}.pt")
        for old in self.files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path


__all__ = ["FORMAT", "VERSION", "CheckpointDir", "atomic_save", "load", "resumable",
           "rng_state", "set_rng_state", "pack_rng", "unpack_rng"]
