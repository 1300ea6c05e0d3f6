"""Hostile data and sizes: each stops with one line (DataError / ConfigError, exit code 2)
that names what is wrong and how to fix it, before anything is trained or written.

Corrupt gzip, data.root a file, labels out of range or NaN, pixels that are not 8-bit,
files of another known dataset under a dataset's name, and models too big for memory."""

import gzip
import hashlib
import pickle
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelexp import memory, models
from pixelexp.cli import main
from pixelexp.config import load_config, load_experiment
from pixelexp.data import fashion_mnist, load_data, mnist
from pixelexp.data.idx import write_idx
from pixelexp.engine import build
from pixelexp.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "data.train_limit=20", "data.val_size=5", "data.test_limit=10", "model.name=pixel_cnn",
        "model.hidden_dims=4", "model.recurrent_length=1", "model.out_hidden_dims=4", "track.sample_count=0"]
GB = 10**9


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_data.cache_clear()
    yield
    load_data.cache_clear()


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Nothing here may fetch a dataset: a missing file must be the error under test."""
    monkeypatch.setattr(mnist, "SOURCES", [mnist.from_idx_folder])
    monkeypatch.setattr(fashion_mnist, "DEBIAN", Path("/nonexistent/fashion-mnist"))
    monkeypatch.setattr("torchvision.datasets.FashionMNIST", None)
    monkeypatch.setattr("torchvision.datasets.CIFAR10", None)


def data_cfg(root, *overrides, name="mnist"):
    return load_config(None, [f"data.name={name}", f"data.root={root}", "data.val_size=2", *overrides]).data


def digits(n, seed=0) -> np.ndarray:
    """n 28x28 images, a patch of ink on a blank background, like digits (0..255, with 0 and 255)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        r, c = rng.integers(4, 16, 2)
        x[k, r:r + 10, c:c + 8] = rng.integers(0, 256, (10, 8))
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    return x


IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
             np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def write_typed_idx(path: Path, array: np.ndarray, dtype) -> None:
    """An IDX file of any of its types (write_idx writes unsigned bytes only), gzipped for .gz."""
    a = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder(">"))
    raw = bytes([0, 0, IDX_TYPES[np.dtype(dtype)], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def write_set(root: Path, n_train=20, n_test=10, **replace) -> Path:
    """The four MNIST IDX files (.gz) of a tiny set in root; `replace` gives other arrays
    and IDX types for some: key=(array, dtype)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {"train_images": (digits(n_train), np.uint8), "train_labels": (rng.integers(0, 10, n_train), np.uint8),
              "test_images": (digits(n_test, 1), np.uint8), "test_labels": (rng.integers(0, 10, n_test), np.uint8)}
    arrays.update(replace)
    for key, (a, dtype) in arrays.items():
        write_typed_idx(root / (mnist.FILES[key] + ".gz"), a, dtype)
    return root


def one_line_error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with exactly one line, `error: ...`, on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def nothing_written(tmp_path: Path) -> None:
    """No MLflow store, run folder or artifacts in the working folder (the tracking fixture's)."""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name in ("mlflow.db", "runs", "mlartifacts")) == []


def experiment_file(tmp_path: Path) -> Path:
    """A one-variant experiment: `experiment` checks data and model before it writes anything."""
    path = tmp_path / "hostile.yaml"
    path.write_text("base:\n  train: {epochs: 1}\nvariants:\n  - name: tiny\n    model: {name: pixel_cnn}\n")
    return path


# 1. Corrupt gzip --------------------------------------------------------------------------

def corrupt_middle(path: Path) -> None:
    """Flip a run of bytes in the middle of a .gz, at a place where zlib itself fails (zlib.error, not an
    OSError: most flipped runs only break the CRC check)."""
    raw = path.read_bytes()
    for start in range(len(raw) // 4, len(raw) - 64, 7):
        bad = bytearray(raw)
        bad[start:start + 32] = bytes(b ^ 0xFF for b in bad[start:start + 32])
        try:
            gzip.decompress(bytes(bad))
        except zlib.error:
            path.write_bytes(bytes(bad))
            return
        except (OSError, EOFError):
            continue
    raise AssertionError(f"no corruption of {path} made zlib fail")


def test_corrupt_gzip_names_the_file(tmp_path):
    """zlib.error (not an OSError) from a damaged deflate stream is one line saying to replace the file."""
    write_set(tmp_path, n_train=400)
    corrupt_middle(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="replace it with a good copy") as e:
        load_data(data_cfg(tmp_path))
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value) and "\n" not in str(e.value)


def test_corrupt_gzip_from_the_cli(tmp_path, tracking, capsys):
    """The same through `train`: exit code 2 and one line, no traceback."""
    write_set(tmp_path / "data", n_train=400)
    corrupt_middle(tmp_path / "data" / "train-images-idx3-ubyte.gz")
    err = one_line_error(capsys, ["train", f"data.root={tmp_path / 'data'}", *TINY, "--quiet"])
    assert "train-images-idx3-ubyte.gz: cannot be read" in err


# 2. data.root a file ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "imagenet32", "folder"])
def test_root_that_is_a_file(tmp_path, name):
    """data.root a regular file (or a path below one) is one line for every dataset, before any loader
    tries to read, create or download into it."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    for root in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "below"):
        load_data.cache_clear()
        with pytest.raises(DataError, match="a file, not a folder; point data.root at the folder") as e:
            load_data(data_cfg(root, name=name))
        assert f"data.root={root}" in str(e.value)


def test_root_that_is_a_file_from_the_cli(tmp_path, tracking, capsys):
    """`train data.root=<a file>`: exit code 2 and one line."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    err = one_line_error(capsys, ["train", f"data.root={tmp_path / 'notes.txt'}", *TINY, "--quiet"])
    assert "is a file, not a folder" in err


# 3. Labels --------------------------------------------------------------------------------

def labels_with(value, dtype, n=20):
    """n labels in 0..9 of this dtype, one of them `value`."""
    y = np.random.default_rng(2).integers(0, 10, n).astype(dtype)
    y[3] = value
    return y


@pytest.mark.parametrize("value, dtype, shown", [(np.nan, np.float32, "label nan"), (-1, np.int8, "label -1"),
                                                 (10, np.uint8, "label 10"), (2.5, np.float64, "label 2.5"),
                                                 (70000, np.int32, "label 70000")])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_labels_out_of_range(tmp_path, name, value, dtype, shown):
    """MNIST and Fashion-MNIST have 10 classes: a label outside 0..9 (or NaN) is an error naming file and value."""
    folder = tmp_path / ("fashion-mnist" if name == "fashion_mnist" else "")
    write_set(folder, train_labels=(labels_with(value, dtype), dtype))
    with pytest.raises(DataError, match="labels must be class ids 0..9") as e:
        load_data(data_cfg(tmp_path, name=name))
    assert f"{folder / 'train-labels-idx1-ubyte.gz'}: {shown} " in str(e.value)


def test_conditional_model_with_label_10_from_the_cli(tmp_path, tracking, capsys):
    """A conditional model would build an 11-class embedding for MNIST: one line naming the label instead."""
    write_set(tmp_path / "data", train_labels=(labels_with(10, np.uint8), np.uint8))
    err = one_line_error(capsys, ["train", f"data.root={tmp_path / 'data'}", *TINY, "model.name=gated_pixel_cnn",
                                  "model.conditional=true", "--quiet"])
    assert "train-labels-idx1-ubyte.gz: label 10 is out of range" in err


def write_cifar(folder: Path, data_dtype=np.uint8, bad_pixel=None, bad_label=None):
    """CIFAR-10's six python batches, 4 images each; data_batch_2 may hold one bad pixel or label."""
    folder.mkdir(parents=True)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.random.default_rng(k).integers(0, 256, (4, 3072)).astype(data_dtype)
        labels = [k % 10] * 4
        if name == "data_batch_2" and bad_pixel is not None:
            data[1, 4], data[1, 5] = 0, bad_pixel
        if name == "data_batch_2" and bad_label is not None:
            labels[2] = bad_label
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)


def test_cifar10_label_out_of_range(tmp_path):
    """CIFAR-10 has 10 classes: label 10 in a batch is an error naming the batch file."""
    write_cifar(tmp_path / "cifar-10-batches-py", bad_label=10)
    with pytest.raises(DataError, match=r"data_batch_2: label 10 is out of range; labels must be class ids 0..9"):
        load_data(data_cfg(tmp_path, name="cifar10"))


@pytest.mark.parametrize("bad", [0, 1001])
def test_imagenet_labels_run_1_to_1000(tmp_path, bad):
    """Downsampled ImageNet's labels are 1..1000 in its files: 0 or 1001 is an error, not class -1 or 1000."""
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
    np.savez(folder / "train_data_batch_1.npz", data=rgb, labels=np.array([1, bad, 1000]))
    np.savez(folder / "val_data.npz", data=rgb, labels=np.array([5, 6, 7]))
    with pytest.raises(DataError, match=f"train_data_batch_1.npz: label {bad} is out of range; labels must be "
                                        f"class ids 1..1000"):
        load_data(data_cfg(tmp_path, "data.val_size=1", name="imagenet32"))


@pytest.mark.parametrize("labels, shown", [(np.array([0, 1, -3, 2]), "label -3"),
                                           (np.array([0, 1, 2_000_000_000, 2]), "label 2000000000"),
                                           (np.array([0.0, 1.0, np.nan, 2.0]), "label nan")])
def test_folder_labels_must_be_class_ids(tmp_path, labels, shown):
    """A folder's number of classes is not known: labels must still be 0, 1, 2, ... and not absurdly many."""
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    np.savez(tmp_path / "test.npz", images=images)
    with pytest.raises(DataError, match="labels must be class ids 0, 1, ...") as e:
        load_data(data_cfg(tmp_path, "data.val_size=1", name="folder"))
    assert f"{tmp_path / 'train.npz'}: {shown} " in str(e.value)


def test_folder_idx_labels_int32_huge(tmp_path):
    """An int32 IDX label of 2e9 would build a 2-billion-row class embedding: an error instead."""
    write_idx(tmp_path / "train-images-idx3-ubyte", digits(6))
    write_typed_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 2_000_000_000, 1, 0]), np.int32)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", digits(3, 1))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: label 2000000000 is out of range"):
        load_data(data_cfg(tmp_path, "data.val_size=1", name="folder"))


# 4. Pixels --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, low, high, shown", [(np.int32, -5, 300, "int32 with values -5..300"),
                                                     (np.int16, 0, 256, "int16 with values 0..256"),
                                                     (np.float32, 0, 1, "float32 with values 0..1")])
def test_idx_images_that_are_not_8_bit(tmp_path, dtype, low, high, shown):
    """Images in wider types with values outside 0..255, or floats (here 0..1), would be wrapped or
    truncated by a cast: an error naming the file and the values."""
    x = (digits(20) / (255 if dtype == np.float32 else 1)).astype(dtype)
    x[0, 0, 0], x[1, 1, 1] = low, high
    write_set(tmp_path, train_images=(x, dtype))
    with pytest.raises(DataError, match="expected uint8 \\(8-bit images: integers 0..255\\)") as e:
        load_data(data_cfg(tmp_path))
    assert f"{tmp_path / 'train-images-idx3-ubyte.gz'}: images are {shown}" in str(e.value)


def test_wider_integers_that_fit_load_as_8_bit(tmp_path):
    """int32 / int16 IDX images whose values all fit in 0..255 are 8-bit images, and float labels that
    are whole numbers are class ids: they load, unchanged, as uint8 and int64."""
    x, y = digits(20), np.arange(20) % 10
    write_set(tmp_path, train_images=(x.astype(np.int32), np.int32), train_labels=(y, np.float32))
    data = load_data(data_cfg(tmp_path, "data.levels=256", "data.binarize=none"))
    together = torch.cat([data.train, data.val])[:, 0]
    assert together.dtype == torch.uint8 and sorted(map(bytes, together.numpy())) == sorted(map(bytes, x))
    assert sorted(torch.cat([data.train_labels, data.val_labels]).tolist()) == sorted(y.tolist())
    load_data.cache_clear()
    (tmp_path / "folder").mkdir()
    write_typed_idx(tmp_path / "folder" / "train-images-idx3-ubyte", x, np.int16)
    write_typed_idx(tmp_path / "folder" / "t10k-images-idx3-ubyte", x[:3], np.int16)
    assert load_data(data_cfg(tmp_path / "folder", name="folder")).train.dtype == torch.uint8


def test_int32_pixels_from_the_cli(tmp_path, tracking, capsys):
    """`train` on int32 images with a 1000 in them: one line with the range found, not 2-level training."""
    x = digits(20).astype(np.int32)
    x[4, 4, 4] = 1000
    write_set(tmp_path / "data", train_images=(x, np.int32))
    err = one_line_error(capsys, ["train", f"data.root={tmp_path / 'data'}", *TINY, "--quiet"])
    assert "images are int32 with values 0..1000, expected uint8" in err


def test_npz_and_cifar_pixels_out_of_range(tmp_path):
    """The .npz and CIFAR loaders check pixels the same way (CIFAR's cast to uint8 would wrap 300 to 44)."""
    x = np.random.default_rng(0).integers(0, 256, (4, 6, 6)).astype(np.int64)
    x[1, 1, 1], x[2, 2, 2] = 0, 256
    np.savez(tmp_path / "train.npz", images=x)
    np.savez(tmp_path / "test.npz", images=x.astype(np.uint8))
    with pytest.raises(DataError, match="train.npz: images are int64 with values 0..256, expected uint8"):
        load_data(data_cfg(tmp_path, "data.val_size=1", name="folder"))
    load_data.cache_clear()
    write_cifar(tmp_path / "c" / "cifar-10-batches-py", data_dtype=np.int64, bad_pixel=300)
    with pytest.raises(DataError, match="data_batch_2: images are int64 with values 0..300, expected uint8"):
        load_data(data_cfg(tmp_path / "c", name="cifar10"))


# 5. Dataset identity ----------------------------------------------------------------------

def test_fashion_mnist_name_on_mnist_10k(mnist10k, tmp_path):
    """The shared MNIST subset asked for as Fashion-MNIST: says whose files they are and what to do."""
    with pytest.raises(DataError) as e:
        load_data(data_cfg(mnist10k, name="fashion_mnist"))
    assert str(e.value) == (
        f"data.name=fashion_mnist but the files in {mnist10k} are MNIST's (the mnist-10k subset) (train-labels "
        f"checksum md5 b75c4dac589e79866a0d93eb91b0fe2d); set data.name=mnist or point data.root at Fashion-MNIST")


def test_identity_survives_gunzip(mnist10k, tmp_path):
    """Decompressed copies (as torchvision's MNIST/raw/ keeps them) are known by their content's checksum."""
    for key, stem in mnist.FILES.items():
        if key.endswith("labels"):
            (tmp_path / stem).write_bytes(gzip.decompress((mnist10k / (stem + ".gz")).read_bytes()))
        else:
            write_idx(tmp_path / stem, digits(3))
    with pytest.raises(DataError, match="are MNIST's \\(the mnist-10k subset\\) .*md5 c0d215365bc925c55e78322b0f"):
        load_data(data_cfg(tmp_path, name="fashion_mnist"))


def test_fashion_mnist_from_the_cli_on_mnist_10k(mnist10k, tmp_path, tracking, capsys):
    """`train data.name=fashion_mnist data.root=<MNIST digits>`: exit code 2 and one line."""
    err = one_line_error(capsys, ["train", "data.name=fashion_mnist", f"data.root={mnist10k}", *TINY, "--quiet"])
    assert "are MNIST's" in err and "set data.name=mnist" in err


def test_mnist_name_on_fashion_mnist(tmp_path, monkeypatch):
    """Debian's Fashion-MNIST (a repacked .gz) asked for as MNIST: known by its decompressed checksum."""
    debian = Path("/usr/share/datasets/fashion-mnist")
    if not (debian / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    with pytest.raises(DataError, match=f"data.name=mnist but the files in {debian} are Fashion-MNIST's "
                                        f"\\(train-labels checksum md5 9018921c3c673c538a1fc5bad174d6f9\\); set "
                                        f"data.name=fashion_mnist or point data.root at MNIST"):
        load_data(data_cfg(debian))
    monkeypatch.setattr(fashion_mnist, "DEBIAN", debian)  # and under its own name it loads
    assert load_data(data_cfg(tmp_path, "data.val_size=10000", name="fashion_mnist")).source == "fashion-mnist"


def test_known_gz_checksum_and_gz_twin(tmp_path, monkeypatch):
    """A set known only by its official .gz (MNIST, KMNIST) is found from the .gz, or from the .gz beside
    a decompressed copy; custom files that match nothing load as custom data."""
    from pixelexp.data import known
    write_set(tmp_path / "fashion-mnist")
    labels_gz = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    official = hashlib.md5(labels_gz.read_bytes()).hexdigest()
    assert load_data(data_cfg(tmp_path, name="fashion_mnist")).source == "fashion-mnist"  # custom: accepted
    # These tiny files stand in for an official .gz known by its MD5 alone.
    monkeypatch.setattr(known, "KNOWN", (*known.KNOWN, known.KnownSet("KMNIST's", None, frozenset({official}))))
    load_data.cache_clear()
    with pytest.raises(DataError, match=f"are KMNIST's \\(train-labels checksum md5 {official}\\); set "
                                        f"data.name=folder or point data.root at Fashion-MNIST"):
        load_data(data_cfg(tmp_path, name="fashion_mnist"))
    (labels_gz.with_suffix("")).write_bytes(gzip.decompress(labels_gz.read_bytes()))  # plain file, .gz twin beside
    load_data.cache_clear()
    with pytest.raises(DataError, match="are KMNIST's"):
        load_data(data_cfg(tmp_path, name="fashion_mnist"))


# 6. Models too big for memory -------------------------------------------------------------

SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet32": (3, 32, 32),
          "imagenet64": (3, 64, 64)}


@pytest.fixture
def machine_24gb(monkeypatch):
    """This project's machines: 24 GB, of which about 20 GB is free for a run."""
    monkeypatch.setattr(memory, "available_memory", lambda device: 20 * GB)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_is_counted_on_the_meta_device(name):
    """check_fits builds each model on the meta device (no memory) and counts what the real one holds:
    4 copies of its parameters and its buffers (masks), 4 bytes each."""
    cfg = load_config(None, [f"model.name={name}", "model.hidden_dims=8", "model.recurrent_length=2",
                             *(["model.conditional=true"] if name == "gated_pixel_cnn" else [])])
    est = build.check_fits(cfg, (3, 8, 8), 256, 10, "cpu")
    real = build.make_model(cfg, (3, 8, 8), 256, 10)
    n_params, n_buffers = (sum(t.numel() for t in ts) for ts in (real.parameters(), real.buffers()))
    assert est["weights"] == 16 * n_params + 4 * n_buffers
    assert 0 < est["train"] and est["total"] == est["weights"] + max(est["train"], est["eval"])


def test_shipped_experiments_fit_this_machine(machine_24gb):
    """Every variant of experiments/*.yaml, at its own batch sizes, on a CPU: the estimate lets it run."""
    checked = 0
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        for v in load_experiment(path).variants:
            c = v.config
            classes = 1000 if c.data.name.startswith("imagenet") else 10
            est = build.check_fits(c, SHAPES[c.data.name], c.data.levels, classes, "cpu")
            assert est["total"] < 17 * GB, (path.name, v.name, est)
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("hidden", [15000, 100000])
def test_huge_hidden_dims_stop_before_allocating(machine_24gb, hidden):
    """hidden_dims of 15000 or 100000: one line with the settings, the size and the free memory, at once."""
    cfg = load_config(None, [f"model.hidden_dims={hidden}"])
    with pytest.raises(ConfigError) as e:
        build.check_fits(cfg, (1, 28, 28), 2, 10, "cpu")
    msg = str(e.value)
    assert msg.startswith(f"model.name=pixel_rnn model.hidden_dims={hidden} model.recurrent_length=7 ")
    assert " GB to train (" in msg and " G parameters), 20.0 GB is available on cpu; lower model.hidden_dims, " \
        "model.recurrent_length or train." in msg and "\n" not in msg


def test_batch_size_too_big_names_the_batch(machine_24gb):
    """A model that fits but whose training batch does not: the line names train.batch_size."""
    cfg = load_config(None, ["model.hidden_dims=64", "train.batch_size=5000", "train.eval_batch_size=100"])
    with pytest.raises(ConfigError, match="train.batch_size=5000 needs about .* lower model.hidden_dims, "
                                          "model.recurrent_length or train.batch_size$"):
        build.check_fits(cfg, (1, 28, 28), 2, 10, "cpu")


def test_gpu_memory_is_asked_of_cuda(monkeypatch):
    """On a GPU the free memory is what torch.cuda.mem_get_info reports (here a stand-in: 2 GB free)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * GB, 80 * GB))
    cfg = load_config(None, ["model.hidden_dims=64", "train.batch_size=1000", "train.eval_batch_size=100"])
    with pytest.raises(ConfigError, match="2.0 GB is available on cuda"):
        build.check_fits(cfg, (1, 28, 28), 2, 10, "cuda")


@pytest.fixture
def address_space_limit():
    """Let this process allocate only a few GB more (ulimit -v), whatever the machine's overcommit policy,
    so that a model too big to build fails at once instead of filling memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + 4 * GB, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_make_model_refuses_weights_that_cannot_fit(machine_24gb, address_space_limit):
    """Whatever calls it, make_model counts the model on the meta device first: weights beyond the free
    memory are a ConfigError before anything is allocated."""
    cfg = load_config(None, ["model.hidden_dims=15000", "model.recurrent_length=1"])
    with pytest.raises(ConfigError) as e:
        build.make_model(cfg, (1, 28, 28), 2, 10)
    assert str(e.value) == ("model.name=pixel_rnn with model.hidden_dims=15000, model.recurrent_length=1 does not "
                            "fit in memory: its 7.7 G parameters need 30.6 GB just to be built (20.0 GB is "
                            "available on cpu); lower model.hidden_dims or model.recurrent_length")


def test_make_model_turns_the_allocators_refusal_into_one_line(monkeypatch, address_space_limit):
    """Where the free memory cannot be told, the allocator's refusal while building is the same one line."""
    monkeypatch.setattr(memory, "available_memory", lambda device: None)
    cfg = load_config(None, ["model.hidden_dims=15000", "model.recurrent_length=1"])
    with pytest.raises(ConfigError) as e:
        build.make_model(cfg, (1, 28, 28), 2, 10)
    assert str(e.value) == ("model.name=pixel_rnn with model.hidden_dims=15000, model.recurrent_length=1 does not "
                            "fit in memory: its 7.7 G parameters need 30.6 GB just to be built; lower "
                            "model.hidden_dims or model.recurrent_length")


@pytest.mark.parametrize("hidden", [15000, 100000])
def test_model_too_big_from_the_cli(tmp_path, tracking, capsys, address_space_limit, hidden):
    """`train` with a model too big for memory: one line naming the setting, exit code 2."""
    write_set(tmp_path / "data")
    err = one_line_error(capsys, ["train", f"data.root={tmp_path / 'data'}", *TINY, "model.name=pixel_rnn",
                                  f"model.hidden_dims={hidden}", "--quiet"])
    assert f"model.hidden_dims={hidden}" in err and "lower model.hidden_dims" in err


# Nothing written: `experiment` checks everything before it opens a run --------------------

@pytest.mark.parametrize("case, says", [("corrupt", "cannot be read"), ("file", "is a file, not a folder"),
                                       ("label", "label nan is not a class id"), ("pixels", "images are int32")])
def test_bad_data_writes_nothing(tmp_path, tracking, capsys, case, says):
    """Through `experiment`, which checks data and model first: one line, and no MLflow store or run folder."""
    data = tmp_path / "data"
    if case == "file":
        data.write_text("not a folder\n")
    elif case == "corrupt":
        write_set(data, n_train=400)
        corrupt_middle(data / "train-images-idx3-ubyte.gz")
    elif case == "label":
        write_set(data, train_labels=(labels_with(np.nan, np.float32), np.float32))
    else:
        write_set(data, train_images=(digits(20).astype(np.int32) * 2, np.int32))
    err = one_line_error(capsys, ["experiment", str(experiment_file(tmp_path)), f"data.root={data}", *TINY,
                                  "--no-report", "--quiet"])
    assert says in err
    nothing_written(tmp_path)
