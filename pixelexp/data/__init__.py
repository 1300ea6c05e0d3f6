"""Datasets: a source gives 8-bit images; this module turns them into the splits a
run trains on (validation carved from train, limits, binarization or quantization)
and fingerprints them.

    from pixelexp.data import load_data
    data = load_data(cfg.data)   # DataSplits
    data.train_batch(idx, gen)   # LongTensor (B, C, H, W) in [0, levels)
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pixelexp.data.cifar import load_cifar10
from pixelexp.data.fashion_mnist import load_fashion_mnist
from pixelexp.data.mnist import load_mnist
from pixelexp.data.npz import load_folder, load_imagenet
from pixelexp.data.source import RawData
from pixelexp.errors import DataError

if TYPE_CHECKING:  # settings are read here, owned by pixelexp.config (which lists the datasets)
    from pixelexp.config import DataConfig

# name -> loader(root, explicit): `explicit` says data.root was set in the config, so the
# loader may look in root itself rather than only in its own subfolder.
DATASETS: dict[str, Callable[[Path, bool], RawData]] = {
    "mnist": lambda root, explicit: load_mnist(root),
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imagenet32": load_imagenet(32),
    "imagenet64": load_imagenet(64),
    "folder": load_folder,
}


@dataclass(frozen=True)
class DataSplits:
    train: torch.Tensor  # (N, C, H, W) uint8: values in [0, levels), or 8-bit if dynamic
    val: torch.Tensor  # (V, C, H, W) uint8 in [0, levels)
    test: torch.Tensor  # (T, C, H, W) uint8 in [0, levels)
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    levels: int
    dynamic: bool  # binarize each training batch afresh
    source: str
    location: str
    checksum: str  # sha256 of the arrays trained and evaluated on

    @property
    def num_classes(self) -> int:
        labels = torch.cat([self.train_labels, self.val_labels, self.test_labels])
        return int(labels.max()) + 1 if len(labels) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.train[idx]
        if self.dynamic:  # a fresh binarization of these images every time they are drawn
            return torch.bernoulli(x.float() / 255.0, generator=generator).long()
        return x.long()

    def summary(self) -> dict[str, object]:
        return {"data_source": self.source, "data_location": self.location,
                "data_checksum": self.checksum, "train_size": len(self.train),
                "val_size": len(self.val), "test_size": len(self.test),
                "image_shape": "x".join(map(str, self.image_shape))}


def binarize_fixed(images: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Each pixel drawn once from Bernoulli(intensity / 255), with a fixed seed."""
    rng = np.random.default_rng([seed, stream])
    return (rng.random(images.shape) < images / 255.0).astype(np.uint8)


def quantize(images: np.ndarray, cfg: DataConfig, stream: int) -> np.ndarray:
    """8-bit images -> values in [0, levels) as the config asks."""
    if cfg.levels == 2:
        if cfg.binarize == "threshold":
            return (images >= 128).astype(np.uint8)  # intensity >= 0.5
        return binarize_fixed(images, cfg.seed, stream)  # fixed (and dynamic's eval sets)
    if cfg.levels == 256:
        return images
    return (images.astype(np.int64) * cfg.levels // 256).astype(np.uint8)


def _checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def check_root(root: Path, setting: str) -> None:
    """A DataError when root, or the nearest part of it that exists, is not a folder (a
    file given as data.root): no loader could look in it or download into it."""
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == root else f"is under {p}, which is"
                raise DataError(f"{setting}={root} {what} a file, not a folder; point {setting} at the folder "
                                f"that holds the dataset's files (or where it may be downloaded)")
            return


@functools.lru_cache(maxsize=4)
def load_data(cfg: DataConfig) -> DataSplits:
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r} is not a known dataset; choose one of: {', '.join(DATASETS)}")
    root = cfg.resolved_root()
    check_root(root, "PIXELEXP_DATA" if cfg.root is None and os.environ.get("PIXELEXP_DATA") else "data.root")
    raw = DATASETS[cfg.name](root, cfg.root is not None)
    n = len(raw.train_images)
    val_size = cfg.resolved_val_size(n)
    if val_size >= n:
        raise DataError(f"data.val_size={val_size} leaves no training images: the train split of "
                        f"{raw.source} has {n}; choose a smaller data.val_size")
    # The whole train split is binarized before the split, so an image's binary
    # version does not depend on val_size or train_limit.
    train_all = raw.train_images if cfg.binarize == "dynamic" else quantize(raw.train_images, cfg, 0)
    order = np.random.default_rng(cfg.seed).permutation(n)
    val_idx, train_idx = order[:val_size], np.sort(order[val_size:])
    if cfg.train_limit is not None:
        train_idx = train_idx[: cfg.train_limit]
    val_idx = np.sort(val_idx)
    if cfg.binarize == "dynamic":  # evaluation needs one fixed binarization
        val = binarize_fixed(raw.train_images, cfg.seed, 0)[val_idx]
    else:
        val = train_all[val_idx]
    test_n = len(raw.test_images) if cfg.test_limit is None else min(cfg.test_limit, len(raw.test_images))
    test = quantize(raw.test_images, cfg, 1)[:test_n]  # binarized whole: independent of test_limit
    train = train_all[train_idx]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return DataSplits(
        train=t(train), val=t(val), test=t(test),
        train_labels=t(raw.train_labels[train_idx].astype(np.int64)),
        val_labels=t(raw.train_labels[val_idx].astype(np.int64)),
        test_labels=t(raw.test_labels[:test_n].astype(np.int64)),
        levels=cfg.levels, dynamic=cfg.binarize == "dynamic",
        source=raw.source, location=raw.location, checksum=_checksum(train, val, test))


__all__ = ["DATASETS", "DataSplits", "RawData", "load_data", "quantize", "binarize_fixed"]
