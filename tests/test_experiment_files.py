"""Every experiment file is valid and runs a quick CPU variant (a few batches, the
file's own model sizes) on tiny data of the right kind."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pixelexp.cli import main
from pixelexp.config import load_experiment
from pixelexp.data import load_data

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "experiments").glob("*.yaml"))
QUICK = ["train.epochs=1", "data.train_limit=2", "data.val_size=2", "data.test_limit=2",
         "train.batch_size=2", "train.eval_batch_size=2", "track.sample_count=0"]


def tiny_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]}, f)
    return root


def tiny_imagenet(root: Path, size: int) -> Path:
    folder = root / f"imagenet{size}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train_data_batch_1", "val_data"):
        np.savez(folder / f"{name}.npz", data=rng.integers(0, 256, (4, 3 * size * size), dtype=np.uint8),
                 labels=np.array([1, 2, 3, 4]))
    return root


HEAVY = ("paper_imagenet32", "paper_cifar10")  # RGB at the paper's depth: about a minute each on a CPU


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in FILES],
                         ids=[p.stem for p in FILES])
def test_experiment_file_runs_a_quick_cpu_variant(path, tracking, tmp_path, mnist10k):
    exp = load_experiment(path)
    names = {v.config.data.name for v in exp.variants}
    assert len(names) == 1, "one dataset per experiment file"
    name = names.pop()
    root = {"mnist": lambda: mnist10k, "cifar10": lambda: tiny_cifar(tmp_path / "data"),
            "imagenet32": lambda: tiny_imagenet(tmp_path / "data", 32)}[name]()
    load_data.cache_clear()
    assert main(["experiment", str(path), "--quiet", f"data.root={root}", *QUICK]) == 0
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(exp.name).experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in children) == sorted(v.name for v in exp.variants)
    assert all(r.info.status == "FINISHED" and "test_bpd" in r.data.metrics for r in children)
    # The file's model sizes were used, not shrunk ones.
    for v in exp.variants:
        child = next(r for r in children if r.info.run_name == v.name)
        assert child.data.params["model.hidden_dims"] == str(v.config.model.hidden_dims)
        for k, val in v.published.items():
            assert float(child.data.tags[f"published.{k}"]) == val
    report = (tmp_path / "reports" / exp.name / "report.md").read_text()
    if any(v.published for v in exp.variants):
        assert "paper" in report
