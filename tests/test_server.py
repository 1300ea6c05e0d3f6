"""The main path against a real `mlflow server` over HTTP, as the docker compose stack and
multi-machine sweeps use it: an experiment with its report and samples, a sweep of two
worker processes, a run killed and resumed. The REST client takes only strings as tag and
param values (the SQLite store coerces anything), prints links on every run's end unless
told not to, and is the store every other machine sees."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from test_outage import ROOT, Server  # (tests/ is on sys.path under pytest)
from test_resume import REPO, tiny_args

pytestmark = pytest.mark.slow
TINY = ["data.train_limit=40", "data.val_size=20", "data.test_limit=20", "train.batch_size=20",
        "model.hidden_dims=4", "model.recurrent_length=1", "model.out_hidden_dims=8", "track.sample_count=4",
        "track.sample_every=1", "train.epochs=2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real digits not found")
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    s.start()
    yield s
    s.stop()


def pixelexp(folder: Path, uri: str, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "PIXELEXP_DATA": str(ROOT),
           "PIXELEXP_TRACKING_WAIT": "60"}
    done = subprocess.run([sys.executable, "-m", "pixelexp", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600, **kw)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def quiet(done: subprocess.CompletedProcess) -> None:
    """No MLflow chatter: links printed at each run's end, table creation, alembic."""
    text = done.stdout + done.stderr
    for noise in ("View run", "View experiment", "Creating initial", "alembic", "Traceback"):
        assert noise not in text, noise


def test_experiment_report_and_sample_on_a_server(server, tmp_path):
    done = pixelexp(tmp_path, server.uri, "experiment", str(REPO / "experiments" / "smoke.yaml"), *TINY, "--quiet")
    quiet(done)
    c = MlflowClient(server.uri)
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("pixelexp.kind") == "experiment")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["pixelexp.world_size"] == "1"
    assert sorted(r.info.run_name for r in children) == ["pixel_cnn", "pixel_rnn"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.params["model.hidden_dims"] == "4"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "test_bpd")] == [1, 2]
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"checkpoints", "images", "config.yaml"} <= arts  # served artifacts
    assert (tmp_path / "reports" / "smoke" / "samples_pixel_rnn.png").is_file()
    (tmp_path / "reports" / "smoke" / "report.md").unlink()
    quiet(pixelexp(tmp_path, server.uri, "report", "smoke"))
    assert (tmp_path / "reports" / "smoke" / "report.md").is_file()
    rid = children[0].info.run_id
    quiet(pixelexp(tmp_path, server.uri, "sample", rid, "--n", "4"))
    assert (tmp_path / "reports" / "samples" / f"{rid}.png").is_file()


def test_two_sweep_workers_on_a_server(server, tmp_path):
    f = tmp_path / "sweeps" / "served.yaml"
    f.parent.mkdir()
    f.write_text(f"experiment: {REPO / 'experiments' / 'rnn_vs_cnn.yaml'}\nvariant: pixel_cnn-1\n"
                 "overrides: {train.epochs: 1}\nspace:\n"
                 "  model.hidden_dims: {type: int, low: 4, high: 12, step: 4}\n"
                 "  train.lr: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}\n"
                 "n_trials: 4\npruner: {type: none}\n")
    args = [a for a in TINY if not a.startswith(("model.hidden_dims", "train.epochs"))] + ["track.sample_count=0"]
    quiet(pixelexp(tmp_path, server.uri, "sweep", str(f), "--workers", "2", *args))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna" / "served.journal")))
    study = optuna.load_study(study_name="served", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # four distinct points
    c = MlflowClient(server.uri)
    runs = c.search_runs([c.get_experiment_by_name("sweep-served").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("pixelexp.kind") == "trial"]
    assert sorted(r.data.tags["optuna.trial"] for r in trial_runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" and r.data.tags["optuna.state"] == "complete" for r in trial_runs)
    parent = next(r for r in runs if r.data.tags.get("pixelexp.kind") == "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == str(study.best_trial.number)


def test_a_run_killed_and_resumed_on_a_server(server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "PIXELEXP_TRACKING_WAIT": "60"}
    p = subprocess.Popen([sys.executable, "-m", "pixelexp", "train", *tiny_args(ROOT), "--quiet"], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "epoch 1/3" in line:
            break
    run_id = lines[0].split()[1]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert "epoch 1/3" in lines[-1], "".join(lines)
    done = pixelexp(tmp_path, server.uri, "resume", run_id, "--quiet")
    quiet(done)
    c = MlflowClient(server.uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and "pixelexp.resumed_at" in run.data.tags
    assert sorted(m.step for m in c.get_metric_history(run_id, "val_bpd")) == [0, 1, 2, 3]  # none lost, none twice
