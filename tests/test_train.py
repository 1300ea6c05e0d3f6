"""Training: units, learning on real digits, determinism, checkpoints."""

import math

import pytest
import torch

from pixelexp.config import load_config
from pixelexp.engine import trainer
from pixelexp.engine.checkpoint import CheckpointDir
from pixelexp.engine.metrics import bits_per_dim, evaluate
from pixelexp.errors import CheckpointError
from pixelexp.models import build_model
from pixelexp.runs.rundir import RunDir
from pixelexp.runs.tracking import Tracker
from pixelexp.runs.train import run
from pixelexp.tools.sample import load_checkpoint


def test_bits_per_dim_is_nats_over_subpixels_times_ln2():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(79.20, 784) == pytest.approx(79.20 / (784 * math.log(2)))


@pytest.mark.parametrize("levels,expected", [(2, 1.0), (256, 8.0), (16, 4.0)])
def test_a_uniform_model_scores_log2_levels_bits_per_dim(levels, expected):
    model = build_model("pixel_cnn", image_shape=(1, 6, 5), levels=levels, hidden_dims=4,
                        recurrent_length=1, out_hidden_dims=4)
    with torch.no_grad():  # zero logits: every value equally likely
        model.head.logits.weight.zero_()
        model.head.logits.bias.zero_()
    x = torch.randint(0, levels, (7, 1, 6, 5))
    nats = evaluate(model, x, batch_size=3, device=torch.device("cpu"))
    assert bits_per_dim(nats, 30) == pytest.approx(expected, rel=1e-6)


def quick_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.val_size=200", "data.train_limit=800",
                              "data.test_limit=200", "model.name=pixel_cnn", "model.hidden_dims=32",
                              "model.recurrent_length=3", "model.out_hidden_dims=32",
                              "train.optimizer=adam", "train.lr=3e-3", "train.batch_size=50",
                              "track.sample_count=2", "track.sample_every=0", *extra])


def test_learns_real_digits(mnist10k):
    """Two epochs on 800 real binarized digits: far below the 1 bit/dim of a coin flip and
    below the ~0.56 bits/dim of independent pixels with MNIST's ink density."""
    res = run(quick_cfg(mnist10k, "train.epochs=2"), progress=False)
    h = res.history
    assert len(h) == 2 and h[1]["train_bpd"] < h[0]["train_bpd"]
    assert h[1]["val_bpd"] < 0.35 and h[1]["test_bpd"] < 0.35
    assert h[1]["test_nats"] == pytest.approx(h[1]["test_bpd"] * 784 * math.log(2), rel=1e-9)
    assert res.samples.shape == (2, 1, 28, 28)


def test_same_seed_same_numbers(mnist10k):
    cfg = quick_cfg(mnist10k, "train.epochs=1", "data.train_limit=100", "data.test_limit=50",
                    "model.name=pixel_rnn", "model.hidden_dims=4", "model.recurrent_length=1")
    a = run(cfg, progress=False)
    b = run(cfg, progress=False)
    assert a.metrics["test_bpd"] == b.metrics["test_bpd"]
    assert torch.equal(a.samples, b.samples)
    c = run(cfg.replace(**{"train.seed": 1}), progress=False)
    assert c.metrics["test_bpd"] != a.metrics["test_bpd"]


def trained(cfg, name: str):
    """A tracked run of `cfg` -> (its RunResult, the newest checkpoint it wrote)."""
    with Tracker("checkpoints").start_run(name) as log:
        res = run(cfg, log, progress=False)
    return res, CheckpointDir(RunDir.of(log.run_id).checkpoints).latest()


def test_checkpoint_round_trip_and_bad_files(mnist10k, tmp_path, tracking):
    cfg = quick_cfg(mnist10k, "train.epochs=1", "data.train_limit=50", "data.test_limit=20",
                    "model.hidden_dims=4", "model.recurrent_length=1")
    res, path = trained(cfg, "round trip")
    from pixelexp.data import load_data
    model, cfg2, ckpt = load_checkpoint(path)
    assert cfg2 == cfg and ckpt.epoch == 1
    x = load_data(cfg.data).test[:4].long()
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), res.model.log_prob(x))
    # A truncated file, a foreign file: one-line errors.
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pixelexp checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_conditional_training_uses_labels_end_to_end(mnist10k, tmp_path, tracking):
    cfg = quick_cfg(mnist10k, "train.epochs=1", "data.train_limit=100", "data.test_limit=40",
                    "model.name=gated_pixel_cnn", "model.conditional=true", "model.hidden_dims=8",
                    "model.recurrent_length=1", "track.sample_count=10")
    res, path = trained(cfg, "conditional")
    assert res.model.conditional and res.samples.shape == (10, 1, 28, 28)
    from pixelexp.data import load_data
    data = load_data(cfg.data)
    x, y = data.test[:8].long(), data.test_labels[:8]
    with torch.no_grad():  # the trained model's likelihood depends on the label it is given
        assert not torch.equal(res.model.log_prob(x, y), res.model.log_prob(x, (y + 1) % 10))
    model, _, ckpt = load_checkpoint(path)
    assert model.conditional and ckpt.num_classes == 10


def test_conditional_needs_a_conditional_model():
    from pixelexp.errors import ConfigError
    with pytest.raises(ConfigError, match="gated_pixel_cnn"):
        load_config(None, ["model.name=pixel_cnn", "model.conditional=true"])


def test_the_reported_epoch_is_chosen_on_validation_never_on_test():
    from pixelexp.engine.metrics import selected
    h = [{"epoch": 1, "val_bpd": 0.30, "test_bpd": 0.20}, {"epoch": 2, "val_bpd": 0.25, "test_bpd": 0.29},
         {"epoch": 3, "val_bpd": 0.25, "test_bpd": 0.10}, {"epoch": 4, "val_bpd": 0.28, "test_bpd": 0.05}]
    assert selected(h) == {"best_epoch": 2.0, "best_val_bpd": 0.25, "best_test_bpd": 0.29}  # earliest of equals
    no_val = [{"epoch": e, "val_bpd": float("nan"), "test_bpd": t} for e, t in ((1, 0.2), (2, 0.3))]
    assert selected(no_val)["best_epoch"] == 2.0  # no validation split: the last epoch, not the best test


def test_the_best_checkpoint_is_the_chosen_epochs(mnist10k, tracking, monkeypatch):
    """runs/<id>/checkpoints/best.pt holds the weights of the epoch with the lowest val NLL."""
    from pixelexp.cli import main
    from pixelexp.engine import checkpoint
    vals = iter([0.5, 0.3, 0.4])  # epoch 2 is best on validation, whatever test says
    real = trainer.evaluate
    calls = {"n": 0}

    def fake(model, images, *a, **k):
        calls["n"] += 1
        nats = real(model, images, *a, **k)
        if calls["n"] == 1:  # the untrained model's validation NLL (step 0)
            return nats
        return next(vals) * 784 * math.log(2) if calls["n"] % 2 == 0 else nats  # val, then test
    monkeypatch.setattr(trainer, "evaluate", fake)
    args = ["train", "model.name=pixel_cnn", "model.hidden_dims=4", "model.recurrent_length=1", f"data.root={mnist10k}",
            "data.train_limit=40", "data.val_size=20", "data.test_limit=20", "train.batch_size=20", "train.epochs=3",
            "track.sample_count=0", "--quiet"]
    assert main(args) == 0
    from mlflow import MlflowClient
    c = MlflowClient(tracking)
    run = c.search_runs([c.get_experiment_by_name("train").experiment_id])[0]
    assert run.data.metrics["best_epoch"] == 2 and run.data.metrics["best_val_bpd"] == pytest.approx(0.3)
    test2 = [m.value for m in c.get_metric_history(run.info.run_id, "test_bpd") if m.step == 2][0]
    assert run.data.metrics["best_test_bpd"] == test2
    best = checkpoint.load(f"runs/{run.info.run_id}/checkpoints/best.pt")
    assert best.epoch == 2 and best.metrics["epoch"] == 2
    assert "checkpoints/best.pt" in [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")]
