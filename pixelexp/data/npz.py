"""Image sets in .npz files or folders of PNGs: downsampled ImageNet and any folder of uint8 images.

`imagenet32` / `imagenet64` read either of the two downsampled ImageNets, looking in
`data.root/imagenet32/` (or 64) and, when data.root is set, in `data.root` itself:

- the original of van den Oord, Kalchbrenner & Kavukcuoglu (2016), the data of the
  PixelRNN and PixelCNN papers: folders of PNG files `train_32x32/` and `valid_32x32/`
  (64: `train_64x64/`, `valid_64x64/`), read in sorted file-name order as RGB uint8,
  without labels (class 0 throughout). Source name `imagenet32-oord2016` (or 64).
- the .npz batches of Chrabaszcz, Loshchilov & Hutter (2017, "A Downsampled Variant of
  ImageNet", box resize): `train_data_batch_1.npz` .. `train_data_batch_10.npz` and
  `val_data.npz` in that folder or any folder below it, each with "data" (N, 3*S*S)
  uint8 (R, G, B planes) and "labels" (1..1000). Source name `imagenet32` (or 64): every run
  tagged so, by any pixelexp version, trained on this variant.

When both are there the PNG folders win, being the papers' own data; point data.root at
a folder with only the .npz batches to train on those. Either way the validation set
(valid_ / val_data) serves as the test set, as in the papers. The two are the same
photos resized differently, so their likelihoods are not interchangeable.

`folder`: `data.root` holds a train and a test set, either as IDX files
(`train-images*`, `train-labels*`, `test-images*` or `t10k-images*`, and labels) or as
`train.npz` and `test.npz` with an image array ("images", "x" or "data") of shape
(N, H, W), (N, H, W, C) with C in {1, 3}, (N, C, H, W), or (N, C*H*W) square RGB,
and optionally labels ("labels" or "y"). Images are 8-bit: uint8, or integers within
0..255; labels are class ids 0, 1, 2, ... (fewer than source.MAX_CLASSES).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pixelexp.data.idx import read_idx
from pixelexp.data.source import RawData, check_images, check_labels
from pixelexp.errors import DataError


def read_npz(path: Path, classes: int | None = None, first: int = 0,
             fix: str = "renumber them") -> tuple[np.ndarray, np.ndarray]:
    """One .npz -> (N, C, H, W) uint8 images and (N,) int labels (zeros if it has none),
    the labels class ids from `first` (below first + classes when `classes` is known)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in ("images", "x", "data") if k in z.files), None)
            if key is None:
                raise DataError(f"{path}: no image array; name it 'images', 'x' or 'data' "
                                f"(it has: {', '.join(z.files)})")
            images = np.asarray(z[key])
            lab_key = next((k for k in ("labels", "y") if k in z.files), None)
            labels = np.asarray(z[lab_key]).ravel() if lab_key else np.full(len(images), first, np.int64)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip, not an npz
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}); replace it") from None
    images = check_images(images, path)
    return to_nchw(images, path), check_labels(labels, path, classes, first, fix)


def to_nchw(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 2:  # (N, C*S*S) flattened planes, as in downsampled ImageNet
        side = int(round((a.shape[1] / 3) ** 0.5))
        if 3 * side * side != a.shape[1]:
            raise DataError(f"{path}: flat images of {a.shape[1]} values are not 3 square planes")
        return a.reshape(len(a), 3, side, side)
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    raise DataError(f"{path}: cannot tell the layout of images of shape {a.shape}; "
                    f"use (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3")


def _batches(folder: Path) -> tuple[list[Path], Path | None]:
    train = sorted(folder.rglob("train_data_batch_*.npz"),
                   key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    val = next(iter(sorted(folder.rglob("val_data.npz"))), None)
    return train, val


OORD_SOURCE = "imagenet{size}-oord2016"  # the PNG folders; the .npz batches keep "imagenet{size}"
PNG_MODES = ("RGB", "L", "P")  # 8-bit colour, grey or palette: all become RGB uint8


def png_folders(folder: Path, size: int) -> tuple[Path, Path] | None:
    """(train_SxS/, valid_SxS/) in `folder` when both are there, else None."""
    train, valid = folder / f"train_{size}x{size}", folder / f"valid_{size}x{size}"
    return (train, valid) if train.is_dir() and valid.is_dir() else None


def read_png_folder(folder: Path, size: int) -> np.ndarray:
    """Every *.png in `folder` (sorted by name) -> (N, 3, size, size) uint8, R, G, B channels."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DataError(f"{folder}/: no .png files; put the {folder.name} images of van den Oord et al.'s "
                        f"downsampled ImageNet there")
    out = np.empty((len(files), 3, size, size), np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                if im.size != (size, size):
                    raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, imagenet{size} needs "
                                    f"{size}x{size}; replace it")
                if im.mode not in PNG_MODES:
                    raise DataError(f"{path}: image mode {im.mode}, expected 8-bit RGB; replace it")
                out[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: not a readable PNG ({type(e).__name__}); replace it") from None
    return out


def load_imagenet(size: int):
    def load(root: Path, explicit: bool = False) -> RawData:
        candidates = [root / f"imagenet{size}"] + ([root] if explicit else [])
        for folder in candidates:  # the papers' own PNG folders first
            found = png_folders(folder, size)
            if found:
                x, tx = (read_png_folder(f, size) for f in found)
                return RawData(x, np.zeros(len(x), np.int64), tx, np.zeros(len(tx), np.int64),
                               source=OORD_SOURCE.format(size=size), location=str(folder.resolve()))
        for folder in candidates:
            if not folder.is_dir():
                continue
            train, val = _batches(folder)
            if train and val is not None:
                fix = f"replace it with the published imagenet{size} file"
                xs, ys = zip(*(read_npz(p, classes=1000, first=1, fix=fix) for p in train))
                tx, ty = read_npz(val, classes=1000, first=1, fix=fix)
                x = np.concatenate(xs)
                if x.shape[2:] != (size, size) or tx.shape[2:] != (size, size):
                    raise DataError(f"{folder}: images are {x.shape[2]}x{x.shape[3]}, "
                                    f"imagenet{size} needs {size}x{size}")
                # Labels run 1..1000 in the published files.
                return RawData(x, np.concatenate(ys) - 1, tx, ty - 1, source=f"imagenet{size}",
                               location=str(folder.resolve()))
        s = f"{size}x{size}"
        raise DataError(f"imagenet{size}: neither the PNG folders train_{s}/ + valid_{s}/ (van den Oord et al. "
                        f"2016) nor the .npz batches train_data_batch_*.npz + val_data.npz (Chrabaszcz et al. "
                        f"2017) under {' or '.join(f'{c}/' for c in candidates)}; put either downsampled ImageNet "
                        f"{s} in {root}/imagenet{size}/")
    return load


def _find(root: Path, *patterns: str) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def load_folder(root: Path, explicit: bool = False) -> RawData:
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        (x, y), (tx, ty) = read_npz(root / "train.npz"), read_npz(root / "test.npz")
    else:
        files = {"x": _find(root, "train-images*"), "y": _find(root, "train-labels*"),
                 "tx": _find(root, "test-images*", "t10k-images*"), "ty": _find(root, "test-labels*", "t10k-labels*")}
        if files["x"] is None or files["tx"] is None:
            raise DataError(f"folder: {root}/ has neither train.npz + test.npz nor IDX files "
                            f"train-images* + test-images* (or t10k-images*); put one of them there")
        x, tx = (to_nchw(check_images(read_idx(files[k]), files[k]), files[k]) for k in ("x", "tx"))
        y = check_labels(read_idx(files["y"]), files["y"], fix="renumber them") if files["y"] \
            else np.zeros(len(x), np.int64)
        ty = check_labels(read_idx(files["ty"]), files["ty"], fix="renumber them") if files["ty"] \
            else np.zeros(len(tx), np.int64)
    if x.shape[1:] != tx.shape[1:]:
        raise DataError(f"folder: train images are {x.shape[1:]} but test images {tx.shape[1:]} in {root}/")
    if len(y) != len(x) or len(ty) != len(tx):
        raise DataError(f"folder: {root}/ has {len(x)} train / {len(tx)} test images but "
                        f"{len(y)} / {len(ty)} labels")
    return RawData(x, y, tx, ty, source=f"folder:{root.name}", location=str(root.resolve()))
