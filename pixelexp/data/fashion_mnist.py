"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 28x28 gray, 60,000 / 10,000, the
MNIST file names and format.

Looked for, in order, in: `data.root/fashion-mnist/`, `data.root/FashionMNIST/raw/`
(torchvision's layout), `data.root` itself when it was set explicitly, and
`/usr/share/datasets/fashion-mnist/` (Debian's package `dataset-fashion-mnist`);
then torchvision's download is tried.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pixelexp.data.known import check_identity
from pixelexp.data.mnist import FILES, find_idx, read_idx_set
from pixelexp.data.source import RawData
from pixelexp.errors import DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def folders(root: Path, explicit: bool) -> list[Path]:
    out = [root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return out + ([root] if explicit else []) + [DEBIAN]


def load_fashion_mnist(root: Path, explicit: bool = False) -> RawData:
    files = find_idx(*folders(root, explicit))
    if files is None:
        try:
            from torchvision.datasets import FashionMNIST
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                FashionMNIST(str(root), train=True, download=True)
                FashionMNIST(str(root), train=False, download=True)
        except Exception:  # noqa: BLE001 - offline: fall through to the error
            pass
        files = find_idx(*folders(root, explicit))
    if files is None:
        where = ", ".join(f"{f}/" for f in folders(root, explicit))
        raise DataError(f"fashion_mnist: the four IDX files ({', '.join(FILES.values())}, .gz or not) "
                        f"are in none of {where}; put them in {root}/fashion-mnist/ or install "
                        f"Debian's dataset-fashion-mnist")
    check_identity("fashion_mnist", files["train_labels"])  # e.g. MNIST's files: same names
    return read_idx_set(files, source="fashion-mnist")
