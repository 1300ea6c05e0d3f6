"""DistributedDataParallel on CPU (gloo): two processes, one MLflow run, the loss of a
single process with the same global batch."""

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from pixelexp.cli import main

ARGS = ["model.name=pixel_cnn", "model.hidden_dims=8", "model.recurrent_length=2", "model.out_hidden_dims=8",
        "train.epochs=2", "data.train_limit=80", "data.val_size=20", "data.test_limit=20",
        "train.batch_size=20", "track.sample_count=2", "--quiet"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tracking, mnist10k, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    assert main(["train", *ARGS, "--experiment", "single"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "pixelexp", "train", *ARGS, "--experiment", "ddp"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(tracking)
    single = client.search_runs([client.get_experiment_by_name("single").experiment_id])
    ddp = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(ddp) == 1 and ddp[0].info.status == "FINISHED"  # rank 0 alone logs
    steps = {"train_bpd": [1, 2], "val_bpd": [0, 1, 2], "test_bpd": [1, 2]}  # step 0: the untrained model
    for key, want in steps.items():
        a = sorted((m.step, m.value) for m in client.get_metric_history(single[0].info.run_id, key))
        b = sorted((m.step, m.value) for m in client.get_metric_history(ddp[0].info.run_id, key))
        assert [s for s, _ in a] == [s for s, _ in b] == want, key
        assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-5), key
    assert {a.path for a in client.list_artifacts(ddp[0].info.run_id)} >= {"checkpoints", "images"}
