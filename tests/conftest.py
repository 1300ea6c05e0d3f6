import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/mnist-10k beside the checkout; elsewhere (the GPU machine) PIXELEXP_MNIST10K.
MNIST_10K = Path(os.environ.get("PIXELEXP_MNIST10K") or REPO.parent / "shared" / "data" / "mnist-10k")

torch.set_num_threads(2)


@pytest.fixture
def mnist10k() -> Path:
    if not (MNIST_10K / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real digits not found at {MNIST_10K}")
    return MNIST_10K


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A fresh MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri
