"""Sweeps on a real PostgreSQL server (started by this test on 127.0.0.1): several workers
on one study, and a worker killed mid-trial found by its stopped heartbeat and retried."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from pixelexp.cli import main
from pixelexp.studies.sweep import counted, load_sweep, open_study

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.train_limit=40", "data.val_size=20", "data.test_limit=20", "train.batch_size=20",
        "track.sample_count=0", "model.recurrent_length=1", "model.out_hidden_dims=8"]
States = optuna.trial.TrialState


def _as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="pixelexp-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *c: subprocess.run(_as_postgres([str(bindir / c[0]), *c[1:]]), check=True,
                                    capture_output=True, timeout=120)
    run("initdb", "-D", str(data / "db"), "-U", "pixelexp", "--auth=trust")
    run("pg_ctl", "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start",
        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1")
    try:
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "pixelexp", "optuna")
        yield f"postgresql://pixelexp@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def write_sweep(tmp_path, name, n_trials, epochs, heartbeat=30):
    f = tmp_path / "sweeps" / f"{name}.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_text(f"experiment: {REPO / 'experiments' / 'rnn_vs_cnn.yaml'}\nvariant: pixel_cnn-1\n"
                 f"overrides: {{train.epochs: {epochs}}}\n"
                 "space:\n  model.hidden_dims: {type: int, low: 4, high: 12, step: 4}\n"
                 f"n_trials: {n_trials}\npruner: {{type: none}}\nheartbeat: {heartbeat}\n")
    return f


@pytest.fixture
def env(tracking, mnist10k, monkeypatch):
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    return MlflowClient(tracking)


@pytest.mark.slow
def test_three_workers_finish_exactly_n_trials(postgres, env, tmp_path):
    f = write_sweep(tmp_path, "pg3", n_trials=6, epochs=1)
    assert main(["sweep", str(f), "--workers", "3", "--storage", postgres, *TINY]) == 0
    study = open_study(load_sweep(f, TINY), postgres)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == States.COMPLETE for t in trials)
    exp = env.get_experiment_by_name("sweep-pg3")
    runs = [r for r in env.search_runs([exp.experiment_id]) if r.data.tags.get("pixelexp.kind") == "trial"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == list(range(6))  # none twice


@pytest.mark.slow
def test_a_killed_worker_is_found_by_its_heartbeat_and_its_trial_retried(postgres, env, tmp_path):
    f = write_sweep(tmp_path, "pgkill", n_trials=3, epochs=3, heartbeat=1)
    slow = ["data.train_limit=300", "train.batch_size=5"]
    sup = subprocess.Popen([sys.executable, "-m", "pixelexp", "sweep", str(f), "--workers", "2",
                            "--storage", postgres, *TINY, *slow], cwd=tmp_path, env=os.environ.copy(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = None
    try:
        deadline = time.time() + 150
        victim = None
        while time.time() < deadline and victim is None:
            time.sleep(0.5)
            try:
                study = study or open_study(load_sweep(f, TINY), postgres)
                running = study.get_trials(states=(States.RUNNING,))
            except Exception:
                continue
            for t in running:  # killed once it has its parameters and its MLflow run (they come last)
                if "pixelexp_worker" in t.user_attrs and "mlflow_run_id" in t.user_attrs:
                    victim = t
                    break
        assert victim is not None, "no trial started"
        os.kill(int(victim.user_attrs["pixelexp_worker"].rpartition(":")[2]), signal.SIGKILL)
        assert sup.wait(timeout=240) == 0
    finally:
        if sup.poll() is None:
            sup.kill()
    trials = study.get_trials()
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == States.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == States.COMPLETE and retry[0].params == dead.params
    assert counted(study) == 3 and sum(t.state == States.COMPLETE for t in trials) == 3
