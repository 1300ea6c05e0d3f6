"""A paper's number beside ours says how the two differ; both downsampled ImageNets load."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pixelexp.config import load_config
from pixelexp.data import load_data
from pixelexp.errors import DataError
from pixelexp.studies.report import DIFF_SEP, comparison_section, data_differences, summarize

# ---------------------------------------------------------------------------- data_differences

MNIST = {"data.name": "mnist", "data.levels": "2", "data.binarize": "fixed", "data.seed": "3",
         "data.train_limit": "None", "data.test_limit": "None", "model.conditional": "False",
         "train_size": "50000", "val_size": "10000", "test_size": "10000", "image_shape": "1x28x28"}
RGB = {**MNIST, "data.levels": "256", "data.binarize": "none", "image_shape": "3x32x32",
       "train_size": "45000", "val_size": "5000"}
NATS, BPD = {"published.test_nats": "79.2"}, {"published.test_bpd": "3.86"}
FIXED = ("binarization: ours is drawn by pixelexp, each pixel once from Bernoulli(intensity/255) with "
         "data.seed=3 (binarize: fixed), not the standard fixed binarization of Murray & Salakhutdinov (2008) "
         "the paper used: not the same binary images")
MNIST_10K = ("data: mnist-10k, a subset of 10,000 real MNIST digits (8,000 train / 2,000 test), not the full "
             "MNIST (60,000 train / 10,000 test): fewer training images and a different test set")
CHRABASZCZ = ("data: ours is the .npz downsampled ImageNet of Chrabaszcz, Loshchilov & Hutter (2017, box resize), "
              "not van den Oord et al.'s own downsampled ImageNet (train_{s}x{s}/, valid_{s}x{s}/ PNGs) the "
              "PixelRNN paper used: ImageNet resized another way, not the same pixels")
CONDITIONAL = ("conditioning: ours is class-conditional and reports -log p(x|y), the paper's table lists the "
               "unconditional -log p(x)")

CASES = {
    # (a) the data: full MNIST, the mnist-10k subset, another subset, limits that cut the splits
    "full_mnist": (MNIST, {"data_source": "mnist", **NATS}, [FIXED]),
    "mnist_10k": (MNIST, {"data_source": "mnist-10k", **NATS}, [MNIST_10K, FIXED]),
    "mnist_subset": (MNIST, {"data_source": "mnist-subset-40", **NATS},
                     ["data: mnist-subset-40, not the full MNIST (60,000 train / 10,000 test images)", FIXED]),
    "limits": ({**MNIST, "data.train_limit": "40", "train_size": "40", "data.test_limit": "1500",
                "test_size": "1500"}, {"data_source": "mnist", **NATS},
               ["training set: data.train_limit=40 leaves 40 training images, the paper trained on its whole "
                "training set",
                "test set: data.test_limit=1500, ours is the first 1,500 test images, the paper's number is on its "
                "whole test set", FIXED]),
    # (b) binarization: fixed (above), dynamic, threshold
    "dynamic": ({**MNIST, "data.binarize": "dynamic"}, {"data_source": "mnist", **NATS},
                ["binarization: ours is drawn by pixelexp afresh for every training batch (binarize: dynamic, "
                 "validation and test drawn once with data.seed=3), not the standard fixed binarization of "
                 "Murray & Salakhutdinov (2008) the paper used: not the same binary images"]),
    "threshold": ({**MNIST, "data.binarize": "threshold"}, {"data_source": "mnist", **NATS},
                  ["binarization: ours is thresholded by pixelexp at intensity 0.5 (binarize: threshold), not the "
                   "standard fixed binarization of Murray & Salakhutdinov (2008) the paper used: not the same "
                   "binary images"]),
    # (c) ImageNet: the .npz batches differ from the paper's, the PNG original does not
    "imagenet32_npz": ({**RGB, "data.name": "imagenet32"}, {"data_source": "imagenet32", **BPD},
                       [CHRABASZCZ.format(s=32)]),
    "imagenet64_npz": ({**RGB, "data.name": "imagenet64", "image_shape": "3x64x64"},
                       {"data_source": "imagenet64", **BPD}, [CHRABASZCZ.format(s=64)]),
    "imagenet32_png": ({**RGB, "data.name": "imagenet32"}, {"data_source": "imagenet32-oord2016", **BPD}, []),
    "imagenet64_png": ({**RGB, "data.name": "imagenet64", "image_shape": "3x64x64"},
                       {"data_source": "imagenet64-oord2016", **BPD}, []),
    # (d) a class-conditional model
    "conditional": ({**MNIST, "model.conditional": "True"}, {"data_source": "mnist", **NATS}, [FIXED, CONDITIONAL]),
    "conditional_cifar": ({**RGB, "data.name": "cifar10", "model.conditional": "True"},
                          {"data_source": "cifar10", **BPD}, [CONDITIONAL]),
    # (e) levels and unit
    "cifar10_as_paper": ({**RGB, "data.name": "cifar10"}, {"data_source": "cifar10", **BPD}, []),
    "cifar10_binary": ({**MNIST, "data.name": "cifar10", "image_shape": "3x32x32"}, {"data_source": "cifar10", **BPD},
                       ["levels: ours models 2 values per subpixel, the paper's CIFAR-10 has 256: a different "
                        "distribution, likelihoods not comparable"]),
    "mnist_8bit_vs_nats": ({**MNIST, "data.levels": "256", "data.binarize": "none"}, {"data_source": "mnist", **NATS},
                           ["levels: ours models 256 values per subpixel, the paper's binarized MNIST has 2: a "
                            "different distribution, likelihoods not comparable",
                            "unit: the paper's number is nats per image, pixelexp logs nats only for 2-level data: "
                            "79.20 nats = 0.1457 bits/dim for our 1x28x28 images"]),
    "cifar10_paper_in_nats": ({**RGB, "data.name": "cifar10"},
                              {"data_source": "cifar10", "published.test_nats": "6800"},
                              ["unit: the paper's number is nats per image, pixelexp logs nats only for 2-level "
                               "data: 6800.00 nats = 3.1935 bits/dim for our 3x32x32 images"]),
    # data none of the papers report on
    "fashion_mnist": ({**MNIST, "data.name": "fashion_mnist"}, {"data_source": "fashion-mnist", **NATS},
                      ["data: ours is fashion-mnist, none of the papers' datasets (binarized MNIST, CIFAR-10, "
                       "downsampled ImageNet): the published number is for other data"]),
}


@pytest.mark.parametrize("case", CASES)
def test_data_differences(case):
    params, tags, expected = CASES[case]
    lines = data_differences(params, tags)
    assert lines == expected
    assert all(DIFF_SEP not in line and "\n" not in line for line in lines)  # joinable and splittable again


def test_summary_has_differences_only_beside_a_paper_number():
    runs = [{"name": name, "run_id": name, "status": "FINISHED", "params": params, "metrics": {"test_nats": 90.0},
             "tags": tags} for name, params, tags in [
        ("subset", MNIST, {"data_source": "mnist-10k", **NATS}),
        ("same", {**RGB, "data.name": "cifar10"}, {"data_source": "cifar10", **BPD}),
        ("no_paper", MNIST, {"data_source": "mnist-10k"})]]
    curves = pd.DataFrame(columns=["variant", "epoch"])
    summary = summarize(runs, curves)
    s = summary.set_index("variant")
    assert s.loc["subset", "differences"] == MNIST_10K + DIFF_SEP + FIXED
    assert s.loc["same", "differences"] == "none known"
    assert pd.isna(s.loc["no_paper", "differences"])
    # report.md's section: the variants with a paper number, each difference on its own line
    section = "\n".join(comparison_section(summary))
    assert section.startswith("\n## Compared with the papers\n") and "no_paper" not in section
    assert f"**subset** (paper 79.20 nats, ours 90.00 nats):\n\n- {MNIST_10K}\n- {FIXED}\n" in section
    assert "**same** (paper 3.8600 bits/dim, ours - bits/dim):\n\n- no difference known to pixelexp" in section


def test_report_says_what_the_comparison_compares(tracking, mnist10k, monkeypatch, tmp_path):
    """End to end: an experiment with published numbers on mnist-10k -> report.md's section and
    summary.csv's column name the subset, the limit, the binarization and the conditioning."""
    from pixelexp.cli import main
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    load_data.cache_clear()
    exp = tmp_path / "cmp.yaml"
    exp.write_text("""description: comparisons
base:
  data: {name: mnist, levels: 2, binarize: fixed, train_limit: 40, val_size: 20, test_limit: 20}
  model: {name: gated_pixel_cnn, hidden_dims: 4, recurrent_length: 1, out_hidden_dims: 4, out_recurrent_length: 1}
  train: {epochs: 1, batch_size: 40, eval_batch_size: 20}
  track: {sample_count: 0}
variants:
  - name: labelled
    model: {conditional: true}
    published: {test_nats: 79.20}
""")
    assert main(["experiment", str(exp), "--quiet"]) == 0
    rep = tmp_path / "reports" / "cmp"
    md = (rep / "report.md").read_text()
    section = md.split("## Compared with the papers")[1].split("\n## ")[0]
    assert "**labelled** (paper 79.20 nats, ours " in section
    for line in (MNIST_10K, "training set: data.train_limit=40 leaves 40 training images",
                 "test set: data.test_limit=20, ours is the first 20 test images", "binarization: ours is drawn",
                 CONDITIONAL):
        assert section.count(f"\n- {line}") == 1, line
    assert "with data.seed=0 (binarize: fixed)" in section
    summary = pd.read_csv(rep / "summary.csv").set_index("variant")
    assert summary.loc["labelled", "differences"].split(DIFF_SEP)[0] == MNIST_10K
    assert summary.loc["labelled", "differences"].endswith(CONDITIONAL)


# ---------------------------------------------------------------------------- the PNG downsampled ImageNet

@pytest.fixture(autouse=True)
def _fresh_cache():
    load_data.cache_clear()
    yield
    load_data.cache_clear()


def cfg(name, root, *extra):
    return load_config(None, [f"data.name={name}", f"data.root={root}", "data.val_size=0", "data.levels=256",
                              "data.binarize=none", *extra]).data


def write_pngs(folder: Path, n: int, size: int, seed: int) -> np.ndarray:
    """n random RGB PNGs named in reverse of their index -> (n, 3, S, S) in sorted file-name order."""
    folder.mkdir(parents=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    names = [f"{n - i:07d}.png" for i in range(n)]  # written last first: the order must come from the names
    for name, a in zip(names, rgb):
        Image.fromarray(a, "RGB").save(folder / name)
    order = np.argsort(names)
    return rgb[order].transpose(0, 3, 1, 2)


@pytest.mark.parametrize("size", [32, 64])
def test_oord_png_folders(tmp_path, size):
    s = f"{size}x{size}"
    train = write_pngs(tmp_path / f"imagenet{size}" / f"train_{s}", 5, size, 0)
    test = write_pngs(tmp_path / f"imagenet{size}" / f"valid_{s}", 3, size, 1)
    (tmp_path / f"imagenet{size}" / f"valid_{s}" / "notes.txt").write_text("not an image")
    data = load_data(cfg(f"imagenet{size}", tmp_path))
    assert data.source == f"imagenet{size}-oord2016" and data.image_shape == (3, size, size)
    assert data.location == str((tmp_path / f"imagenet{size}").resolve())
    assert np.array_equal(data.train.numpy(), train) and np.array_equal(data.test.numpy(), test)
    assert data.train.dtype == torch.uint8 and not data.train_labels.any() and not data.test_labels.any()


def test_png_folders_in_data_root_itself_and_preferred_over_npz(tmp_path):
    test = write_pngs(tmp_path / "valid_32x32", 2, 32, 1)
    write_pngs(tmp_path / "train_32x32", 4, 32, 0)
    rgb = np.random.default_rng(2).integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
    np.savez(tmp_path / "train_data_batch_1.npz", data=rgb, labels=np.array([1, 2, 3]))
    np.savez(tmp_path / "val_data.npz", data=rgb, labels=np.array([4, 5, 6]))
    data = load_data(cfg("imagenet32", tmp_path))
    assert data.source == "imagenet32-oord2016" and np.array_equal(data.test.numpy(), test)
    for f in (tmp_path / "valid_32x32").iterdir():  # without the PNG original: the .npz batches, tagged imagenet32
        f.unlink()
    (tmp_path / "valid_32x32").rmdir()
    load_data.cache_clear()
    data = load_data(cfg("imagenet32", tmp_path))
    assert data.source == "imagenet32" and np.array_equal(data.test.numpy(), rgb.reshape(3, 3, 32, 32))


def test_missing_imagenet_names_both_layouts(tmp_path):
    (tmp_path / "imagenet32" / "train_32x32").mkdir(parents=True)  # half of the PNG layout
    with pytest.raises(DataError) as e:
        load_data(cfg("imagenet32", tmp_path))
    msg = str(e.value)
    for part in ("train_32x32/", "valid_32x32/", "train_data_batch_*.npz", "val_data.npz",
                 f"{tmp_path}/imagenet32/"):
        assert part in msg, part
    assert "\n" not in msg


def test_bad_pngs_are_one_line_naming_the_file(tmp_path):
    write_pngs(tmp_path / "imagenet32" / "train_32x32", 2, 32, 0)
    valid = tmp_path / "imagenet32" / "valid_32x32"
    valid.mkdir()
    with pytest.raises(DataError, match=f"{valid}/: no .png files"):
        load_data(cfg("imagenet32", tmp_path))
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(valid / "a.png")
    load_data.cache_clear()
    with pytest.raises(DataError, match=f"{valid / 'a.png'}: image is 32x16, imagenet32 needs 32x32"):
        load_data(cfg("imagenet32", tmp_path))
    (valid / "a.png").write_bytes(b"\x89PNG garbage")
    load_data.cache_clear()
    with pytest.raises(DataError, match=f"{valid / 'a.png'}: not a readable PNG"):
        load_data(cfg("imagenet32", tmp_path))
