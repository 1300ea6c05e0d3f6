"""Runs that survive: SIGKILL at random moments and resume, SIGTERM/SIGINT, NaNs, bad
checkpoints, rerun. Resumed runs must end with exactly the metrics and weights of an
uninterrupted run (CPU, train.deterministic)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pixelexp.cli import main
from pixelexp.config import load_config
from pixelexp.engine import checkpoint
from pixelexp.engine.metrics import TIMING_METRICS
from pixelexp.models.base import AutoregressiveModel
from pixelexp.runs.tracking import Tracker
from pixelexp.runs.train import run

REPO = Path(__file__).resolve().parents[1]
UNTRAINED = ("val_bpd", "val_nats", "elapsed_hours")  # also logged at step 0, once, by a new run


def tiny_args(root) -> list[str]:
    # A small Diagonal BiLSTM on dynamically binarized digits: the recurrent scan, the
    # optimizer state (RMSprop), the scheduler (lr_decay), the data generator within an
    # epoch (order and binarization) and sampling all have to come back exactly.
    return ["model.name=pixel_rnn", "model.hidden_dims=4", "model.recurrent_length=2", "model.out_hidden_dims=8",
            f"data.root={root}", "data.binarize=dynamic", "data.train_limit=300", "data.val_size=50",
            "data.test_limit=100", "train.epochs=3", "train.batch_size=20", "train.deterministic=true",
            "train.checkpoint_minutes=0.003", "train.lr_decay=0.9", "track.sample_count=4", "track.sample_every=1"]


def launch(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "2", "PIXELEXP_TRACKING_WAIT": "60", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pixelexp", *args, "--quiet"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def run_id_of(p: subprocess.Popen) -> str:
    """The first line `train` prints is `run <id> in <store> ...`."""
    for line in p.stdout:
        if line.startswith("run "):
            return line.split()[1]
    raise AssertionError("train printed no run id")


def history(folder: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    c = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    keys = c.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, k), key=lambda m: m.timestamp)]
            for k in keys}


def comparable(h: dict) -> dict:
    return {k: v for k, v in h.items() if k not in TIMING_METRICS}


def final_state(folder: Path, run_id: str) -> checkpoint.Checkpoint:
    ckpt = checkpoint.load(checkpoint.CheckpointDir(folder / "runs" / run_id / "checkpoints").latest())
    assert ckpt.final
    return ckpt


def assert_same_training(a: checkpoint.Checkpoint, b: checkpoint.Checkpoint) -> None:
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a.scheduler == b.scheduler


def started(p: subprocess.Popen, lines: list[str]) -> None:
    """Read the output until training starts (the line with the parameter count)."""
    for line in p.stdout:
        lines.append(line.strip())
        if "parameters; data" in line:
            return
    raise AssertionError("\n".join(lines))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    """One uninterrupted run; the other tests compare against it."""
    if not (REPO.parent / "shared/data/mnist-10k/train-images-idx3-ubyte.gz").exists():
        pytest.skip("real digits not found")
    folder = tmp_path_factory.mktemp("reference")
    root = REPO.parent / "shared/data/mnist-10k"
    p = launch(folder, "train", *tiny_args(root))
    run_id = run_id_of(p)
    started(p, [])
    t0 = time.monotonic()
    code, out = finish(p)
    assert code == 0, out
    return {"folder": folder, "run_id": run_id, "root": root, "history": history(folder, run_id),
            "state": final_state(folder, run_id), "seconds": time.monotonic() - t0}


def check_like_reference(reference, folder: Path, run_id: str) -> None:
    h = history(folder, run_id)
    assert comparable(h) == comparable(reference["history"])  # exact values, steps 0..3, in order, once
    for k, v in h.items():
        assert [s for s, _ in v] == ([0, 1, 2, 3] if k in UNTRAINED else [1, 2, 3]), k
    assert_same_training(final_state(folder, run_id), reference["state"])
    c = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    assert c.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in c.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt", "checkpoints/last.pt"]
    images = [a.path for a in c.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [1, 2, 3]  # one grid per epoch
    kept = checkpoint.CheckpointDir(folder / "runs" / run_id / "checkpoints").files()
    assert len(kept) == 2  # train.keep_checkpoints


@pytest.mark.slow
def test_reference_run_is_complete(reference):
    h = reference["history"]
    assert {"train_bpd", "val_bpd", "test_bpd", "train_nats", "lr", "epoch_seconds"} <= set(h)
    lrs = [v for _, v in h["lr"]]
    assert lrs == pytest.approx([1e-3, 0.9e-3, 0.81e-3])  # the scheduler's state is part of it
    assert h["val_bpd"][2][1] < h["val_bpd"][0][1]


@pytest.mark.slow
def test_sigkill_at_five_random_moments_then_resume_is_exact(reference, tmp_path):
    rng = random.Random(5)
    p = launch(tmp_path, "train", *tiny_args(reference["root"]))
    run_id = run_id_of(p)
    lines: list[str] = []
    started(p, lines)
    for kill in range(5):
        # Kill 3 lands in the start-up of `resume`; the others anywhere in training,
        # evaluation, sampling, logging or checkpoint writing.
        # Each kill at most 1/8 of the whole training time after the process starts training,
        # so that the run cannot finish before the fifth kill, on a fast machine or a slow one.
        time.sleep(rng.uniform(0.3, 2.5) if kill == 3 else rng.uniform(0.0, reference["seconds"] / 8))
        assert p.poll() is None, "the run finished before it could be killed"
        p.kill()  # SIGKILL: no handler runs
        p.wait()
        p = launch(tmp_path, "resume", run_id)
        if kill != 2:
            started(p, lines)
    code, out = finish(p)
    resumed = [line for line in lines if line.startswith("resuming")]
    assert code == 0, "\n".join(lines) + out
    assert sum("step-" in line for line in resumed) >= 3, resumed  # progress was kept
    check_like_reference(reference, tmp_path, run_id)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_a_checkpoint_marks_killed_and_resume_is_exact(reference, tmp_path, sig, code):
    p = launch(tmp_path, "train", *tiny_args(reference["root"]))
    run_id = run_id_of(p)
    ckdir = checkpoint.CheckpointDir(tmp_path / "runs" / run_id / "checkpoints")
    deadline = time.monotonic() + 120
    while not any(int(f.stem.split("-")[1]) > 15 for f in ckdir.files()):  # stop it within the second epoch
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before its second epoch"
        time.sleep(0.02)
    p.send_signal(sig)
    rc, out = finish(p)
    assert rc == code, out
    name = signal.Signals(sig).name
    assert f"stopped: {name} at epoch" in out and f"python -m pixelexp resume {run_id}" in out
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["pixelexp.killed_by"].startswith(f"{name} at epoch")
    ckpt = checkpoint.load(checkpoint.CheckpointDir(tmp_path / "runs" / run_id / "checkpoints").latest())
    assert not ckpt.final and ckpt.train_state["step"] > 15  # after epoch 1 (15 batches)
    rc, out = finish(launch(tmp_path, "resume", run_id))
    assert rc == 0, out
    check_like_reference(reference, tmp_path, run_id)


@pytest.mark.slow
def test_rerun_starts_a_new_run_from_the_same_config(reference, tmp_path):
    import shutil
    for name in ("mlflow.db", "mlartifacts", "runs"):
        src = reference["folder"] / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    rc, out = finish(launch(tmp_path, "rerun", reference["run_id"]))
    assert rc == 0, out
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = [r for r in c.search_runs(["1"]) if r.info.run_id != reference["run_id"]]
    assert len(new) == 1
    new = new[0]
    assert new.data.tags["pixelexp.rerun_of"] == reference["run_id"]
    old = c.get_run(reference["run_id"])
    assert new.data.params == old.data.params  # the full resolved config, data checksum, seed
    assert comparable(history(tmp_path, new.info.run_id)) == comparable(reference["history"])
    freeze = Path(c.download_artifacts(new.info.run_id, "environment/requirements.txt", str(tmp_path)))
    assert f"torch=={torch.__version__.split('+')[0]}" in freeze.read_text()
    assert new.data.tags["git_commit"] == old.data.tags["git_commit"]


# ---------------------------------------------------------------- in-process runs


def small_cfg(mnist10k, *extra):
    return load_config(None, ["model.name=pixel_cnn", "model.hidden_dims=4", "model.recurrent_length=1",
                              "model.out_hidden_dims=4", f"data.root={mnist10k}", "data.train_limit=100",
                              "data.val_size=20", "data.test_limit=20", "train.epochs=2", "train.batch_size=10",
                              "track.sample_count=0", "train.deterministic=true", *extra])


def poison(monkeypatch, batches: set[int]) -> None:
    """Make the log-likelihood NaN on the given training forward passes (1-based)."""
    calls = {"n": 0}
    forward = AutoregressiveModel.forward

    def poisoned(self, x, labels=None):
        out = forward(self, x, labels)
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in batches:
                return out * float("nan")
        return out
    monkeypatch.setattr(AutoregressiveModel, "forward", poisoned)


def test_nan_stop_fails_the_run_at_its_step_and_keeps_the_last_checkpoint(mnist10k, tracking, monkeypatch):
    poison(monkeypatch, {14})  # epoch 2, batch 4
    tracker = Tracker("nan")
    log = tracker.start_run("stop")
    with pytest.raises(FloatingPointError, match="non-finite loss at step 14 .epoch 2, batch 4."):
        with log:
            run(small_cfg(mnist10k), log, progress=False)
    r = tracker.client.get_run(log.run_id)
    assert r.info.status == "FAILED" and r.data.tags["pixelexp.nan_step"] == "14"
    kept = checkpoint.CheckpointDir(Path("runs") / log.run_id / "checkpoints").files()
    assert [p.name for p in kept] == ["step-000000010.pt"]  # the end of epoch 1, untouched
    assert checkpoint.load(kept[-1]).train_state["epoch"] == 2
    assert r.data.tags["pixelexp.last_checkpoint"].endswith("step-000000010.pt")


def test_nan_skip_batch_skips_the_update_and_counts_it(mnist10k, tracking, monkeypatch):
    clean = run(small_cfg(mnist10k), None, progress=False)
    poison(monkeypatch, {3, 14, 15})
    tracker = Tracker("nan")
    with tracker.start_run("skip") as log:
        res = run(small_cfg(mnist10k, "train.nan_policy=skip_batch"), log, progress=False)
    hist = tracker.client.get_metric_history(log.run_id, "skipped_batches")
    assert [(m.step, m.value) for m in hist] == [(1, 1.0), (2, 3.0)]
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert res.metrics["train_bpd"] != clean.metrics["train_bpd"]  # three updates fewer
    assert abs(res.metrics["test_bpd"] - clean.metrics["test_bpd"]) < 0.1  # 3 of 20 updates fewer, not ruined


def test_checkpoints_every_minutes_within_an_epoch_and_only_the_newest_kept(mnist10k, tracking, monkeypatch):
    steps = []
    write = checkpoint.CheckpointDir.write
    monkeypatch.setattr(checkpoint.CheckpointDir, "write",
                        lambda self, state, step, final=False: steps.append(step) or write(self, state, step, final))
    tracker = Tracker("ckpt")
    with tracker.start_run("often") as log:
        run(small_cfg(mnist10k, "train.checkpoint_minutes=1e-6", "train.keep_checkpoints=3"), log, progress=False)
    assert steps[:10] == list(range(1, 11))  # after every batch (the minutes are that short) ...
    assert steps.count(10) == 2 and steps.count(20) == 2  # ... and at the end of each epoch
    files = checkpoint.CheckpointDir(Path("runs") / log.run_id / "checkpoints").files()
    assert [p.name for p in files] == ["step-000000018.pt", "step-000000019.pt", "step-000000020.pt"]
    last = checkpoint.load(files[-1])
    assert last.final and last.epoch == 2 and last.run_id == log.run_id
    mid = checkpoint.load(files[0])
    assert mid.train_state["batch"] == 8 and mid.data_rng is not None


# ---------------------------------------------------------------- bad files


@pytest.fixture
def killed_run(mnist10k, tracking, monkeypatch):
    """A run that got SIGTERM in epoch 2, batch 2 (status KILLED), with its checkpoints."""
    from pixelexp.engine import signals
    from pixelexp.errors import Interrupted
    trained = {"n": 0}  # training batches so far
    forward = AutoregressiveModel.forward

    def counting(self, x, labels=None):
        trained["n"] += self.training and torch.is_grad_enabled()
        return forward(self, x, labels)
    tracker = Tracker("bad")
    log = tracker.start_run("killed")
    with monkeypatch.context() as m:
        m.setattr(AutoregressiveModel, "forward", counting)
        m.setattr(signals, "requested", lambda: 15 if trained["n"] >= 12 else None)
        with pytest.raises(Interrupted, match="SIGTERM at epoch 2, batch 2"):
            with log:
                run(small_cfg(mnist10k), log, progress=False)
    assert tracker.client.get_run(log.run_id).info.status == "KILLED"
    return tracker, log.run_id


def _unchanged(tracker, run_id, files):
    r = tracker.client.get_run(run_id)
    return r.info.status == "KILLED" and all(p.read_bytes() == b for p, b in files.items())


def test_resume_refuses_bad_checkpoints_with_one_line_and_writes_nothing(killed_run, tmp_path, capsys):
    tracker, run_id = killed_run
    ckdir = Path("runs") / run_id / "checkpoints"
    latest = ckdir / "step-000000012.pt"
    # (1) the newest checkpoint is truncated
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    files = {p: p.read_bytes() for p in ckdir.iterdir()}
    n_metrics = len(tracker.client.get_metric_history(run_id, "val_bpd"))

    def refused(args, words):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and all(w in err for w in words), err
        assert _unchanged(tracker, run_id, files)
        assert len(tracker.client.get_metric_history(run_id, "val_bpd")) == n_metrics

    refused(["resume", run_id], ["truncated", str(latest), "--checkpoint"])
    # (2) a foreign file, (3) a torch file that is not ours
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    refused(["resume", run_id, "--checkpoint", str(junk)], ["not a readable checkpoint"])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "theirs.pt")
    refused(["resume", run_id, "--checkpoint", str(tmp_path / "theirs.pt")], ["not a pixelexp checkpoint"])
    # (4) another run's checkpoint
    latest.write_bytes(data)
    files = {p: p.read_bytes() for p in ckdir.iterdir()}
    ck = checkpoint.load(latest)
    ck.run_id = "0" * 32
    torch.save(ck.to_dict(), tmp_path / "other.pt")
    refused(["resume", run_id, "--checkpoint", str(tmp_path / "other.pt")], ["checkpoint of run 0000", run_id])
    # (5) the run's config no longer matches the checkpoint's model
    cfg_file = Path("runs") / run_id / "config.yaml"
    text = cfg_file.read_text()
    cfg_file.write_text(text.replace("hidden_dims: 4", "hidden_dims: 8", 1))
    files[cfg_file] = cfg_file.read_bytes()
    refused(["resume", run_id], ["does not match", "model.hidden_dims: 4 in the checkpoint, 8 now"])
    cfg_file.write_text(text)
    # ... and with everything back in place it resumes and finishes epoch 2
    assert main(["resume", run_id, "--quiet"]) == 0
    r = tracker.client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert [m.step for m in tracker.client.get_metric_history(run_id, "val_bpd")] == [0, 1, 2]
    assert main(["resume", run_id]) == 2  # finished: rerun, not resume
    assert "rerun" in capsys.readouterr().err
    assert main(["resume", "f" * 32]) == 2


@pytest.mark.slow
def test_rerunning_a_killed_experiment_continues_it(tmp_path):
    if not (REPO.parent / "shared/data/mnist-10k/train-images-idx3-ubyte.gz").exists():
        pytest.skip("real digits not found")
    exp = tmp_path / "two.yaml"
    exp.write_text(f"""
base:
  data: {{root: {REPO.parent / 'shared/data/mnist-10k'}, train_limit: 200, val_size: 50, test_limit: 50}}
  model: {{hidden_dims: 4, recurrent_length: 2, out_hidden_dims: 8}}
  train: {{epochs: 3, batch_size: 20, deterministic: true, checkpoint_minutes: 0.003}}
  track: {{sample_count: 0}}
variants:
  - name: first
    model: {{name: pixel_cnn}}
  - name: second
    model: {{name: pixel_rnn}}
""")
    p = launch(tmp_path, "experiment", str(exp), "--no-report")
    lines: list[str] = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("[second]") and "parameters; data" in line:
            break
    time.sleep(1.5)
    p.kill()
    p.wait()
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in c.search_runs(["1"])}
    first = runs["first"].info.run_id
    assert runs["first"].info.status == "FINISHED" and runs["second"].info.status == "RUNNING"
    rc, out = finish(launch(tmp_path, "experiment", str(exp), "--no-report"))
    assert rc == 0, out
    assert f"[first] finished before in run {first}: not run again" in out
    assert f"[second] resuming run {runs['second'].info.run_id}" in out
    after = c.search_runs(["1"])
    assert len(after) == 3  # the same parent and children: nothing started twice
    assert all(r.info.status == "FINISHED" for r in after)
    for r in after:
        if r.info.run_name in ("first", "second"):
            assert [m.step for m in c.get_metric_history(r.info.run_id, "val_bpd")] == [0, 1, 2, 3]
    assert c.get_run(first).info.end_time == runs["first"].info.end_time  # untouched
    rc, out = finish(launch(tmp_path, "experiment", str(exp), "--no-report", "--fresh"))
    assert rc == 0 and len(c.search_runs(["1"])) == 6  # --fresh: a new parent and children


def test_a_bad_tracking_wait_is_a_one_line_error_before_any_run(tracking, monkeypatch, capsys):
    monkeypatch.setenv("PIXELEXP_TRACKING_WAIT", "soon")
    assert main(["train", "model.name=pixel_cnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "PIXELEXP_TRACKING_WAIT='soon'" in err
    assert not Path("mlflow.db").exists() or not MlflowClient(tracking).search_runs(["0"])
