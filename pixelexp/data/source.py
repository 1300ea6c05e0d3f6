"""What a dataset source hands over: 8-bit images and labels, and where they came from;
and the checks every source runs on what it read, so that bad files stop with one line
naming the file rather than training on wrapped pixels or building a giant embedding."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from pixelexp.errors import DataError

# Labels of a set whose number of classes is not known (data.name=folder) are class ids
# 0, 1, 2, ...: a label this large is a stray value, not a class.
MAX_CLASSES = 100_000


class RawData(NamedTuple):
    train_images: np.ndarray  # (N, C, H, W) uint8
    train_labels: np.ndarray  # (N,)
    test_images: np.ndarray  # (M, C, H, W) uint8
    test_labels: np.ndarray  # (M,)
    source: str  # e.g. "mnist", "mnist-10k": logged and tagged with every run
    location: str  # folder or URL it was read from


def _span(a: np.ndarray) -> str:
    """'lo..hi' of an array's values, NaN noted apart (it has no place in a range)."""
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if not finite.size:
        out = "none finite"
    elif a.dtype.kind == "f":
        out = f"{finite.min():g}..{finite.max():g}"
    else:
        out = f"{finite.min()}..{finite.max()}"
    return out + (" and NaN" if a.dtype.kind == "f" and np.isnan(a).any() else "")


def check_images(images: np.ndarray, path: Path | str) -> np.ndarray:
    """8-bit images as uint8. Other integer types pass when every value fits in 0..255;
    anything else (floats, values out of range) is a DataError naming the file and the
    values found, because casting would wrap or truncate them silently."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu" and (images.size == 0 or (images.min() >= 0 and images.max() <= 255)):
        return images.astype(np.uint8)
    found = f"values {_span(images)}" if images.dtype.kind in "iuf" and images.size else "no numbers"
    raise DataError(f"{path}: images are {images.dtype} with {found}, expected uint8 (8-bit images: integers "
                    f"0..255); convert them to 0..255 and store them as uint8 (IDX type 0x08)")


def check_labels(labels: np.ndarray, path: Path | str, classes: int | None = None, first: int = 0,
                 fix: str = "replace it with a good copy") -> np.ndarray:
    """Labels as int64 class ids. They must be whole numbers from `first` up: with
    `classes` known (10 for MNIST, 1000 for ImageNet) below first + classes, otherwise
    below MAX_CLASSES. A NaN, a fraction, a negative or a too large label is a DataError
    naming the file and the value (a conditional model would crash on it, or build an
    embedding of that many rows). `fix` says what to do about it."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iuf":
        raise DataError(f"{path}: labels are {labels.dtype}, not numbers; {fix}")
    if labels.size == 0:
        return labels.astype(np.int64)
    allowed = (f"class ids {first}..{first + classes - 1}" if classes
               else f"class ids {first}, {first + 1}, ... (fewer than {MAX_CLASSES:,} classes)")
    if labels.dtype.kind == "f":
        bad = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        if bad.size:
            raise DataError(f"{path}: label {bad[0]} is not a class id; labels must be {allowed}; {fix}")
    lo, hi = labels.min(), labels.max()
    limit = first + (classes or MAX_CLASSES)
    if lo < first or hi >= limit:
        value = lo if lo < first else hi
        raise DataError(f"{path}: label {int(value)} is out of range; labels must be {allowed}; {fix}")
    return labels.astype(np.int64)
