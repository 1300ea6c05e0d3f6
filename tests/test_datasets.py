"""Every dataset loads from tiny files written in its documented layout."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelexp.config import load_config
from pixelexp.data import fashion_mnist, load_data, mnist
from pixelexp.data.idx import write_idx
from pixelexp.errors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_data.cache_clear()
    yield
    load_data.cache_clear()


def data_cfg(name, root, *extra):
    return load_config(None, [f"data.name={name}", f"data.root={root}", "data.val_size=2",
                              "data.levels=256", "data.binarize=none", *extra]).data


def rng_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_fashion_mnist_from_its_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN", tmp_path / "nowhere")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    x, tx = rng_images((6, 28, 28)), rng_images((3, 28, 28), 1)
    for key, a in (("train_images", x), ("train_labels", np.arange(6, dtype=np.uint8)),
                   ("test_images", tx), ("test_labels", np.arange(3, dtype=np.uint8))):
        write_idx(folder / (mnist.FILES[key] + ".gz"), a)
    data = load_data(data_cfg("fashion_mnist", tmp_path))
    assert data.source == "fashion-mnist" and data.image_shape == (1, 28, 28)
    assert np.array_equal(data.test[:, 0].numpy(), tx) and len(data.train) == 4


def test_fashion_mnist_missing_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN", tmp_path / "nowhere")
    monkeypatch.setattr("torchvision.datasets.FashionMNIST", None)  # no download attempt
    with pytest.raises(DataError, match="dataset-fashion-mnist") as e:
        load_data(data_cfg("fashion_mnist", tmp_path))
    assert "\n" not in str(e.value) and str(tmp_path / "fashion-mnist") in str(e.value)


def test_real_fashion_mnist_from_debian():
    if not (fashion_mnist.DEBIAN / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    raw = fashion_mnist.load_fashion_mnist(Path("/nonexistent"))
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.test_labels).tolist() == [1000] * 10


def write_cifar(folder: Path, n=4):
    folder.mkdir(parents=True)
    planes = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng_images((n, 3072), k)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [k % 10] * n}, f)
        planes[name] = data
    return planes


def test_cifar10_python_batches(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.CIFAR10", None)
    planes = write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_data(data_cfg("cifar10", tmp_path))
    assert data.source == "cifar10" and data.image_shape == (3, 32, 32)
    assert len(data.train) + len(data.val) == 20 and len(data.test) == 4
    # The R, G, B planes of each row become channels 0, 1, 2.
    first = planes["test_batch"][0]
    assert np.array_equal(data.test[0, 1].numpy().ravel(), first[1024:2048])
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    load_data.cache_clear()
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_data(data_cfg("cifar10", tmp_path))


def test_cifar10_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.CIFAR10", None)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_data(data_cfg("cifar10", tmp_path))


@pytest.mark.parametrize("size", [32, 64])
def test_downsampled_imagenet_npz_batches(tmp_path, size):
    folder = tmp_path / f"imagenet{size}" / f"Imagenet{size}_train_npz"
    folder.mkdir(parents=True)
    for k in (1, 2, 10):
        np.savez(folder / f"train_data_batch_{k}.npz", data=rng_images((3, 3 * size * size), k),
                 labels=np.array([1, 2, 1000]))
    np.savez(tmp_path / f"imagenet{size}" / "val_data.npz", data=rng_images((2, 3 * size * size), 9),
             labels=np.array([5, 6]))
    data = load_data(data_cfg(f"imagenet{size}", tmp_path, "data.val_size=1"))
    assert data.source == f"imagenet{size}" and data.image_shape == (3, size, size)
    assert len(data.train) + len(data.val) == 9 and len(data.test) == 2
    assert data.test_labels.tolist() == [4, 5]  # 1-based in the files
    assert sorted(torch.cat([data.train_labels, data.val_labels]).tolist()) == [0, 0, 0, 1, 1, 1, 999, 999, 999]


def test_imagenet_missing(tmp_path):
    with pytest.raises(DataError, match="imagenet32/"):
        load_data(data_cfg("imagenet32", tmp_path))


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_folder_of_npz(tmp_path, layout):
    shape = {"nhw": (5, 6, 7), "nhwc": (5, 6, 7, 3), "nchw": (5, 3, 6, 7)}[layout]
    x = rng_images(shape)
    np.savez(tmp_path / "train.npz", images=x, labels=np.arange(5))
    np.savez(tmp_path / "test.npz", x=rng_images((2,) + shape[1:], 1))
    data = load_data(data_cfg("folder", tmp_path))
    C = 1 if layout == "nhw" else 3
    assert data.image_shape == (C, 6, 7) and len(data.test) == 2
    assert data.test_labels.tolist() == [0, 0]  # no labels: zeros
    train_all = torch.cat([data.train, data.val])
    expected = {"nhw": lambda: x[:, None], "nhwc": lambda: x.transpose(0, 3, 1, 2), "nchw": lambda: x}[layout]()
    assert sorted(map(bytes, train_all.numpy())) == sorted(map(bytes, expected))


def test_folder_of_idx(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", rng_images((4, 5, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng_images((2, 5, 5)))
    data = load_data(data_cfg("folder", tmp_path))
    assert data.image_shape == (1, 5, 5) and data.source == f"folder:{tmp_path.name}"


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="train.npz"):
        load_data(data_cfg("folder", tmp_path))
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 4, 4), np.float32))
    np.savez(tmp_path / "test.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="expected uint8"):
        load_data(data_cfg("folder", tmp_path))


def test_rgb_data_trains_an_rgb_model(tmp_path):
    """CIFAR-shaped data flows through training with a 256-way softmax per channel."""
    np.savez(tmp_path / "train.npz", images=rng_images((12, 8, 8, 3)))
    np.savez(tmp_path / "test.npz", images=rng_images((4, 8, 8, 3), 1))
    from pixelexp.runs.train import run
    cfg = load_config(None, ["data.name=folder", f"data.root={tmp_path}", "data.val_size=4",
                             "data.levels=256", "data.binarize=none", "model.name=row_lstm",
                             "model.hidden_dims=6", "model.recurrent_length=1", "model.out_hidden_dims=12",
                             "train.epochs=1", "train.batch_size=4", "track.sample_count=2"])
    res = run(cfg, progress=False)
    assert 6.0 < res.metrics["test_bpd"] < 9.0 and "test_nats" not in res.metrics  # ~8 bits: untrained
    assert res.samples.shape == (2, 3, 8, 8) and res.samples.max() < 256
