"""Hostile use of runs and stores: two processes on one run or one new store, a damaged
store or journal, commands against a store that does not exist, signals in start-up and
in the final sampling, and the noise a log must not carry. Each case ends in one line and
exit code 2 (130 for Ctrl-C), with nothing written that the user did not ask for."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_resume import REPO, tiny_args

from pixelexp.cli import main
from pixelexp.engine import checkpoint

ROOT = REPO.parent / "shared/data/mnist-10k"
TINY = ["model.name=pixel_cnn", "model.hidden_dims=4", "model.recurrent_length=1", "model.out_hidden_dims=8",
        "data.train_limit=60", "data.val_size=20", "data.test_limit=20", "train.batch_size=20", "train.epochs=1",
        "track.sample_count=0"]


@pytest.fixture(autouse=True)
def digits(monkeypatch):
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real digits not found")
    monkeypatch.setenv("PIXELEXP_DATA", str(ROOT))


def env_for(folder: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(REPO),
            "PIXELEXP_DATA": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PIXELEXP_TRACKING_WAIT": "60"}


def start(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pixelexp", *args], cwd=folder, env=env_for(folder),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line(err: str, *words: str) -> str:
    err = err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and all(w in err for w in words), err
    return err


def killed_run(folder: Path) -> str:
    """A run SIGKILLed after its first epoch -> its id."""
    p = subprocess.Popen([sys.executable, "-m", "pixelexp", "train", *tiny_args(ROOT), "--quiet"], cwd=folder,
                         env=env_for(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "epoch 1/3" in line:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert "epoch 1/3" in lines[-1], "".join(lines)
    return lines[0].split()[1]


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_one_trains_the_other_is_refused(tmp_path):
    run_id = killed_run(tmp_path)
    a, b = start(tmp_path, "resume", run_id, "--quiet"), start(tmp_path, "resume", run_id, "--quiet")
    results = sorted([(p.wait(timeout=300), *p.communicate()) for p in (a, b)])
    (ok, out, _), (refused, _, err) = results
    assert (ok, refused) == (0, 2), results
    one_line(err, f"run {run_id} is running in process", "kill -TERM")
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert c.get_run(run_id).info.status == "FINISHED"
    for key, steps in (("val_bpd", [0, 1, 2, 3]), ("train_bpd", [1, 2, 3])):  # once each: nobody trained twice
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == steps, key


def test_a_run_held_by_a_live_process_is_refused_and_left_alone(tmp_path, tracking, capsys):
    assert main(["train", *TINY, "--quiet"]) == 0
    c = MlflowClient(tracking)
    run_id = c.search_runs([c.get_experiment_by_name("train").experiment_id])[0].info.run_id
    c.set_terminated(run_id, "KILLED")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); open(sys.argv[2], 'w').write(f'otherhost:{os.getpid()}'); "
        "print('held', flush=True); time.sleep(60)"), str(tmp_path / "runs" / run_id / "lock"),
        str(tmp_path / "runs" / run_id / "owner")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["resume", run_id]) == 2
        one_line(capsys.readouterr().err, f"run {run_id} is running in process otherhost:{holder.pid}")
        assert c.get_run(run_id).info.status == "KILLED"
    finally:
        holder.kill()
        holder.wait()
    assert main(["resume", run_id, "--quiet"]) == 0  # the holder is gone: resume goes ahead


@pytest.mark.slow
def test_two_commands_create_one_new_store_at_once(tmp_path):
    procs = [start(tmp_path, "train", *TINY, f"train.seed={k}", "--quiet") for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in err, err
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)


def test_a_damaged_store_is_one_line_for_every_command(tmp_path, tracking, capsys):
    (tmp_path / "mlflow.db").write_bytes(os.urandom(4096))
    for args in (["train", *TINY], ["experiment", str(REPO / "experiments" / "smoke.yaml")], ["report", "smoke"],
                 ["resume", "0" * 32], ["rerun", "0" * 32], ["sample", "0" * 32]):
        assert main(args) == 2, args
        one_line(capsys.readouterr().err, "cannot be opened", "mlflow.db")
    assert not (tmp_path / "runs").exists()


def test_reading_commands_do_not_create_a_store(tmp_path, tracking, capsys):
    for args in (["resume", "0" * 32], ["rerun", "0" * 32], ["sample", "0" * 32], ["report", "smoke"]):
        assert main(args) == 2, args
        one_line(capsys.readouterr().err, "no MLflow store at", "MLFLOW_TRACKING_URI")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_damaged_journal_is_one_line_in_sync(tmp_path, tracking, capsys):
    journal = tmp_path / "runs" / ("a" * 32) / "journal"
    journal.mkdir(parents=True)
    (journal / "meta.json").write_text('{"run_id": "' + "a" * 32 + '", "tracking_uri": "' + tracking + '"}')
    (journal / "events.jsonl").write_text('{"seq": 0, "kind": "tags", "values": {}}\n\x00\x17garbage\n')
    assert main(["sync", str(journal.parent)]) == 2
    one_line(capsys.readouterr().err, "events.jsonl", "line 2", "damaged")
    (journal / "events.jsonl").write_text('{"seq": 0, "kind": "tags", "values": {}}\n')
    (journal / "sent").write_text("lots")
    assert main(["sync", str(journal.parent)]) == 2
    one_line(capsys.readouterr().err, "sent", "damaged")


def test_train_checks_before_it_writes(tmp_path, tracking, capsys):
    assert main(["train", *TINY, "data.val_size=100000"]) == 2  # the data says no, after the config
    one_line(capsys.readouterr().err, "data.val_size=100000")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def _signal_self(monkeypatch, target: str, attr: str, then=None):
    """Patch target.attr to send this process SIGINT, then do what it did."""
    import importlib
    module = importlib.import_module(target)
    real = getattr(module, attr)

    def wrapped(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here
        return real(*a, **k)
    monkeypatch.setattr(module, attr, wrapped)


def test_ctrl_c_in_start_up_writes_nothing(tmp_path, tracking, monkeypatch, capsys):
    _signal_self(monkeypatch, "pixelexp.data", "load_mnist")  # while the data loads
    smoke = str(REPO / "experiments" / "smoke.yaml")
    assert main(["experiment", smoke, "data.train_limit=37", "--quiet"]) == 130
    assert "SIGINT" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_ctrl_c_in_the_final_sampling_stops_with_130_and_resume_draws_them(tmp_path, tracking, monkeypatch, capsys):
    _signal_self(monkeypatch, "pixelexp.engine.fast", "sample")
    args = [a for a in TINY if a != "track.sample_count=0"] + ["track.sample_count=4"]
    assert main(["train", *args, "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT at epoch 1, in sampling" in err, err
    c = MlflowClient(tracking)
    run = c.search_runs([c.get_experiment_by_name("train").experiment_id])[0]
    assert run.info.status == "KILLED"
    assert not [a for a in c.list_artifacts(run.info.run_id, "images")]  # no grid: it was not drawn
    latest = checkpoint.CheckpointDir(tmp_path / "runs" / run.info.run_id / "checkpoints").latest()
    assert checkpoint.load(latest).train_state["evaluated"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    assert main(["resume", run.info.run_id, "--quiet"]) == 0
    run = c.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert len(c.get_metric_history(run.info.run_id, "test_bpd")) == 1  # evaluated once, not again
    assert [a.path for a in c.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]


def test_logs_carry_no_mlflow_noise_or_progress_bars(tmp_path):
    p = start(tmp_path, "train", *TINY)  # no --quiet: output is not a terminal, so no bars
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    for noise in ("Creating initial", "alembic", "Updating database", "img/s]", "\r", "View run"):
        assert noise not in out + err, noise


def test_names_given_on_the_command_line_are_checked_too(tmp_path, tracking, capsys):
    for args in (["train", "--experiment", "../../x", *TINY], ["report", "../../x"]):
        assert main(args) == 2, args
        one_line(capsys.readouterr().err, "'../../x' is not a safe name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_damaged_journal_stops_resume_before_the_run_is_touched(tmp_path, tracking, capsys):
    assert main(["train", *TINY, "--quiet"]) == 0
    c = MlflowClient(tracking)
    run_id = c.search_runs([c.get_experiment_by_name("train").experiment_id])[0].info.run_id
    c.set_terminated(run_id, "KILLED")
    journal = tmp_path / "runs" / run_id / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    (journal / "events.jsonl").write_text("{not json\n")
    assert main(["resume", run_id]) == 2
    one_line(capsys.readouterr().err, "events.jsonl", "line 1", "damaged")
    assert c.get_run(run_id).info.status == "KILLED"  # not left RUNNING
