"""End to end: an experiment file -> MLflow parent and child runs -> report -> samples."""

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from pixelexp.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.yaml")
FAST = ["data.train_limit=60", "data.val_size=30", "data.test_limit=30", "model.hidden_dims=4",
        "model.recurrent_length=1", "model.out_hidden_dims=8", "train.batch_size=30",
        "track.sample_count=4", "track.sample_every=1"]
EPOCH_METRICS = ["train_bpd", "val_bpd", "test_bpd", "train_nats", "val_nats", "test_nats",
                 "epoch_seconds", "elapsed_hours", "lr", "images_per_second"]
UNTRAINED = ["val_bpd", "val_nats", "elapsed_hours"]  # logged at step 0 too


@pytest.fixture
def store(tracking, mnist10k, monkeypatch):
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    return MlflowClient(tracking)


def runs_of(client, experiment="smoke"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.slow
def test_experiment_tracks_every_variant_and_writes_the_report(store, tmp_path, capsys):
    assert main(["experiment", SMOKE, "--quiet", *FAST]) == 0
    out = capsys.readouterr().out
    # the whole study's progress: a first estimate, then which variant of how many and the time left
    assert "study: 2 variants, roughly" in out and "on this machine" in out
    assert "study: variant 1/2 (pixel_rnn) epoch 1/2; 1/4 epochs in" in out
    assert "study: variant 2/2 (pixel_cnn) epoch 2/2; 4/4 epochs in" in out and "left" in out
    runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("pixelexp.kind") == "experiment"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id in out
    assert {c.info.run_name for c in children} == {"pixel_rnn", "pixel_cnn"}
    for c in children:
        rid = c.info.run_id
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in EPOCH_METRICS:
            hist = store.get_metric_history(rid, key)
            # the untrained model's validation NLL at step 0: curves start at the origin
            assert sorted(m.step for m in hist) == ([0, 1, 2] if key in UNTRAINED else [1, 2]), key
        untrained = {k: store.get_metric_history(rid, k)[0] for k in UNTRAINED}
        assert untrained["elapsed_hours"].value == 0 and untrained["val_bpd"].step == 0
        assert untrained["val_bpd"].value > store.get_metric_history(rid, "val_bpd")[-1].value  # training helped
        assert untrained["val_nats"].value == pytest.approx(untrained["val_bpd"].value * 784 * math.log(2))
        assert c.data.tags["pixelexp.label"] == c.info.run_name  # the chart view's groups
        assert c.data.tags["mlflow.note.content"].startswith(f"variant {c.info.run_name} of experiment smoke: "
                                                           f"model.name={c.info.run_name}")
        arts = {a.path for a in store.list_artifacts(rid, "samples")}
        assert arts == {"samples/epoch-001.png", "samples/epoch-002.png"}  # readable sample grids
        # the flattened config, overrides applied
        assert c.data.params["model.hidden_dims"] == "4" and c.data.params["train.epochs"] == "2"
        assert c.data.params["data.train_limit"] == "60" and int(c.data.params["n_parameters"]) > 0
        tags = c.data.tags
        assert tags["data_source"] == "mnist-10k" and tags["device"] == "cpu"
        assert tags["torch_version"].startswith("2.") and len(tags["git_commit"]) in (40, 7) or \
            tags["git_commit"] == "unknown"
        assert tags["git_dirty"] in ("true", "false", "unknown")
        arts = {a.path for a in store.list_artifacts(rid)}
        assert {"checkpoints", "images", "config.yaml"} <= arts
        images = [a.path for a in store.list_artifacts(rid, "images") if a.path.endswith(".png")]
        assert len([p for p in images if "compressed" not in p]) == 2  # epochs 1 and 2
    # The report, read back from MLflow.
    rep = tmp_path / "reports" / "smoke"
    for f in ["bpd_by_epoch.png", "bpd_by_hour.png", "summary.csv", "report.md",
              "samples_pixel_rnn.png", "samples_pixel_cnn.png"]:
        assert (rep / f).is_file(), f
    summary = pd.read_csv(rep / "summary.csv")
    assert set(summary.variant) == {"pixel_rnn", "pixel_cnn"}
    assert (summary.epochs == 2).all() and summary.test_nats.notna().all()
    for _, row in summary.iterrows():  # the test number of the epoch chosen on validation
        child = next(c for c in children if c.info.run_name == row.variant)
        val = {m.step: m.value for m in store.get_metric_history(child.info.run_id, "val_bpd")}
        test = {m.step: m.value for m in store.get_metric_history(child.info.run_id, "test_bpd")}
        chosen = min(sorted(val), key=lambda e: val[e])
        assert row.epoch_chosen == chosen and row.test_bpd == pytest.approx(test[chosen])
        assert row.split == "60/30/30"
    md = (rep / "report.md").read_text()
    assert "epoch chosen" in md and "never on test" in md
    md = (rep / "report.md").read_text()
    assert "| pixel_rnn |" in md and "samples_pixel_cnn.png" in md
    assert "make ui" in out and str(rep.relative_to(tmp_path)) in out

    # A bad second call writes nothing and loses nothing.
    before = (rep / "report.md").read_bytes()
    assert main(["experiment", SMOKE, "--quiet", *FAST, "model.hidden_dim=3"]) == 2
    assert len(runs_of(store)) == 3 and (rep / "report.md").read_bytes() == before

    # `make sample RUN=...`: a fresh grid from the final checkpoint.
    rid = children[0].info.run_id
    assert main(["sample", rid, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    w, h = Image.open(tmp_path / "s.png").size
    assert w == h and w >= 3 * 2 * 28

    # `make report` alone rewrites the same files.
    (rep / "summary.csv").unlink()
    assert main(["report", "smoke"]) == 0
    assert (rep / "summary.csv").is_file()


def test_report_and_sample_errors_are_one_line(store, capsys):
    assert main(["report", "no_such_experiment"]) == 2
    assert "make experiment EXP=no_such_experiment" in capsys.readouterr().err
    assert main(["sample", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not in the MLflow store" in err


@pytest.mark.slow
def test_train_command_tracks_a_single_run(store, capsys):
    args = ["train", "model.name=pixel_cnn", "train.epochs=1", *FAST, "--quiet"]
    assert main(args) == 0
    runs = runs_of(store, "train")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(store.get_metric_history(runs[0].info.run_id, "test_bpd")) == 1
