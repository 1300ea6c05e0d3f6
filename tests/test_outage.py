"""A real `mlflow server` that goes away in the middle of a run: training goes on, the
records wait in the run's journal and reach the server in order, once each, when it is
back; if it never comes back, `python -m pixelexp sync` sends them later."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_resume import REPO, TIMING_METRICS, tiny_args  # (tests/ is on sys.path under pytest)

MLFLOW = Path(sys.executable).parent / "mlflow"
ROOT = REPO.parent / "shared/data/mnist-10k"
UNTRAINED = ("val_bpd", "val_nats", "elapsed_hours")  # also logged at step 0, once
pytestmark = pytest.mark.slow  # a real server stopped and started: about a minute each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite store and served artifacts, which a test
    can stop and start again on the same port with the same data."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path):
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real digits not found")
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def train(folder: Path, uri: str, epochs: int, wait: float) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "PIXELEXP_TRACKING_WAIT": str(wait)}
    args = [a for a in tiny_args(ROOT) if not a.startswith("train.epochs")] + [f"train.epochs={epochs}"]
    return subprocess.Popen([sys.executable, "-m", "pixelexp", "train", *args, "--quiet"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(p: subprocess.Popen, text: str, lines: list[str]) -> str:
    for line in p.stdout:
        lines.append(line.rstrip())
        if text in line:
            return line
    raise AssertionError(f"no {text!r} in:\n" + "\n".join(lines))


def assert_complete(uri: str, run_id: str, epochs: int) -> None:
    """Every metric at every step, once each, in order; one sample grid per epoch."""
    c = MlflowClient(uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"train_bpd", "val_bpd", "test_bpd", "lr", *TIMING_METRICS} <= set(run.data.metrics)
    for key in run.data.metrics:
        h = c.get_metric_history(run_id, key)
        steps = list(range(0 if key in UNTRAINED else 1, epochs + 1))  # step 0: the untrained model
        assert sorted(m.step for m in h) == steps, key  # none lost, none twice
        by_time = [m.step for m in sorted(h, key=lambda m: (m.timestamp, m.step))]
        assert by_time == steps, key  # logged in order
    assert run.data.params["train.epochs"] == str(epochs) and "data_checksum" in run.data.params
    images = [a.path for a in c.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == list(range(1, epochs + 1))
    assert [a.path for a in c.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt", "checkpoints/last.pt"]
    assert "config.yaml" in [a.path for a in c.list_artifacts(run_id)]


def test_the_server_stops_mid_run_and_comes_back(server, tmp_path):
    lines: list[str] = []
    p = train(tmp_path, server.uri, epochs=7, wait=120)
    run_id = read_until(p, "run ", lines).split()[1]
    read_until(p, "epoch 2/7", lines)
    server.stop()
    read_until(p, "epoch 4/7", lines)  # training goes on without the server
    down_for = time.time()
    server.start()
    out, _ = p.communicate(timeout=300)
    lines += out.splitlines()
    text = "\n".join(lines)
    assert p.returncode == 0, text
    assert "does not answer" in text and "answers again" in text
    assert time.time() - down_for > 3
    assert_complete(server.uri, run_id, 7)
    assert not (tmp_path / "runs" / run_id / "journal").exists()  # all sent: the journal is gone


def test_a_server_that_never_comes_back_leaves_a_journal_for_sync(server, tmp_path):
    lines: list[str] = []
    p = train(tmp_path, server.uri, epochs=3, wait=3)
    run_id = read_until(p, "run ", lines).split()[1]
    read_until(p, "epoch 1/3", lines)
    server.stop()
    out, _ = p.communicate(timeout=300)
    text = "\n".join(lines + out.splitlines())
    assert p.returncode == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: the MLflow store") and f"python -m pixelexp sync runs/{run_id}" in last, last
    assert "epoch 3/3" in text  # training finished all the same
    assert (tmp_path / "runs" / run_id / "journal" / "events.jsonl").exists()
    server.start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pixelexp", "sync", f"runs/{run_id}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"records of run {run_id}" in done.stdout
    assert_complete(server.uri, run_id, 3)
    again = subprocess.run([sys.executable, "-m", "pixelexp", "sync", f"runs/{run_id}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "no journal" in again.stderr  # sent once, not twice
