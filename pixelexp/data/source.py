"""What a dataset source hands over: 8-bit images and labels, and where they came from."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RawData(NamedTuple):
    train_images: np.ndarray  # (N, C, H, W) uint8
    train_labels: np.ndarray  # (N,)
    test_images: np.ndarray  # (M, C, H, W) uint8
    test_labels: np.ndarray  # (M,)
    source: str  # e.g. "mnist", "mnist-10k": logged and tagged with every run
    location: str  # folder or URL it was read from
