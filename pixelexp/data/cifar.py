"""CIFAR-10 (Krizhevsky, 2009): 32x32 RGB, 50,000 / 10,000, from its python batches.

Looked for in `data.root/cifar-10-batches-py/` (what torchvision's download and the
official tarball unpack to) or `data.root` itself: `data_batch_1` .. `data_batch_5`
and `test_batch`, each a pickled dict with b"data" (N, 3072) uint8 (the R, G, B
planes of each image) and b"labels". Else torchvision's download is tried.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np

from pixelexp.data.source import RawData, check_images, check_labels
from pixelexp.errors import DataError

TRAIN = [f"data_batch_{k}" for k in range(1, 6)]
TEST = ["test_batch"]


def _folder(root: Path) -> Path | None:
    for folder in (root / "cifar-10-batches-py", root):
        if all((folder / name).is_file() for name in TRAIN + TEST):
            return folder
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"])  # (no dtype here: a cast would wrap values > 255)
        labels = np.asarray(batch[b"labels"])
    except Exception as e:  # noqa: BLE001 - truncated, not a pickle, wrong keys
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}); "
                        f"replace it with the file from cifar-10-python.tar.gz") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: expected N x 3072 images and N labels, got {data.shape} and {labels.shape}")
    data = check_images(data, path)
    labels = check_labels(labels, path, classes=10, fix="replace it with the file from cifar-10-python.tar.gz")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: Path, explicit: bool = False) -> RawData:
    folder = _folder(root)
    if folder is None:
        try:
            from torchvision.datasets import CIFAR10
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                CIFAR10(str(root), train=True, download=True)
        except Exception:  # noqa: BLE001 - offline: fall through to the error
            pass
        folder = _folder(root)
    if folder is None:
        raise DataError(f"cifar10: no python batches ({', '.join(TRAIN + TEST)}) in {root}/cifar-10-batches-py/ "
                        f"or {root}/; unpack cifar-10-python.tar.gz into {root}/")
    train = [read_batch(folder / n) for n in TRAIN]
    test_x, test_y = read_batch(folder / TEST[0])
    return RawData(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   test_x, test_y, source="cifar10", location=str(folder.resolve()))
