"""LAUNCHER=slurm against a real one-node Slurm started here (Debian's slurm-wlm and munge:
munged, slurmctld and slurmd on 127.0.0.1, no cgroups), with the study on a real
PostgreSQL and the runs on a real `mlflow server`: a sweep through a job array, a worker
scancel'ed mid-trial, a two-process experiment job, and a job requeued mid-run."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from test_outage import ROOT, UNTRAINED, free_port  # (tests/ is on sys.path under pytest)
from test_postgres import postgres, write_sweep  # noqa: F401 - the fixture, used by name
from test_server import server  # noqa: F401 - the fixture, used by name

from pixelexp.cli import main
from pixelexp.studies import slurm
from pixelexp.studies.sweep import counted, load_sweep, open_study

REPO = Path(__file__).resolve().parents[1]
States = optuna.trial.TrialState
TINY = ["data.train_limit=40", "data.val_size=20", "data.test_limit=20", "train.batch_size=20",
        "track.sample_count=0", "model.recurrent_length=1", "model.out_hidden_dims=8"]


def _bin(name: str) -> str | None:
    """A Slurm or munge program, also where root's PATH lacks /usr/sbin."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
                                      None)


class Cluster:
    """munged, slurmctld and slurmd of one node (this machine) in `folder`, with their own
    ports, socket and state: nothing of the system's Slurm configuration is used."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        f, host = self.folder, socket.gethostname()
        for d in ("state", "spool", "log", "munge"):
            (f / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(f / "munge", "munge", "munge")
        (f / "munge").chmod(0o755)
        self.conf.write_text("\n".join([
            "ClusterName=pixelexp-test", f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={f / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={f / 'state'}", f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}", f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
            "KillWait=20", "MinJobAge=600",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4", ""]))
        key = Path("/etc/munge/munge.key")
        if not key.exists():  # the package makes one; a bare image may not have run its scripts
            key.write_bytes(os.urandom(1024))
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        subprocess.run(["runuser", "-u", "munge", "--", _bin("munged"), f"--socket={f / 'munge' / 'munge.socket'}",
                        f"--pid-file={f / 'munge' / 'munged.pid'}", f"--log-file={f / 'munge' / 'munged.log'}",
                        f"--seed-file={f / 'munge' / 'seed'}", "--key-file=/etc/munge/munge.key"], check=True,
                       timeout=60)
        subprocess.run([_bin("slurmctld"), "-f", str(self.conf)], check=True, env=self.env, timeout=60)
        subprocess.run([_bin("slurmd"), "-f", str(self.conf)], check=True, env=self.env, timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout
            if out.strip() == "idle":
                return
            time.sleep(0.5)
        raise AssertionError(f"Slurm did not start: {self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in (self.folder / "log").glob("*.log"))

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=60)
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            try:
                os.kill(int((self.folder / pidfile).read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if not _bin(c)]
    if missing or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm is missing ({missing or 'not root'}): .ci/run installs slurm-wlm and munge")
        pytest.skip("Slurm not installed (apt-get install slurm-wlm munge) or not root")
    c = Cluster(Path(f"/tmp/pixelexp-slurm-{os.getpid()}"))  # short: munge's socket path has a length limit
    c.start()
    yield c
    c.stop()
    shutil.rmtree(c.folder, ignore_errors=True)


@pytest.fixture
def on_cluster(cluster, server, tmp_path, monkeypatch):  # noqa: F811
    """This test's folder, the cluster's commands and the tracking server in the environment
    (which sbatch passes on to the jobs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("PIXELEXP_DATA", str(ROOT))
    monkeypatch.setenv("PIXELEXP_TRACKING_WAIT", "60")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(slurm, "POLL", 1.0)
    return MlflowClient(server.uri)


def trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(f"sweep-{name}")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("pixelexp.kind") == "trial"]


def job_output(folder: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted((folder / "runs" / "slurm").glob("*.out")))


@pytest.mark.slow
def test_a_sweep_through_two_slurm_workers_ends_with_exactly_n_trials(on_cluster, postgres, tmp_path,  # noqa: F811
                                                                      capsys):
    f = write_sweep(tmp_path, "slurm4", n_trials=4, epochs=1)
    t0 = time.monotonic()
    code = main(["sweep", str(f), "--workers", "2", "--launcher", "slurm", "--storage", postgres, *TINY])
    seconds = time.monotonic() - t0
    assert code == 0, job_output(tmp_path)
    study = open_study(load_sweep(f, TINY), postgres)
    trials = study.get_trials()
    assert [t.state for t in trials] == [States.COMPLETE] * 4, job_output(tmp_path)
    tasks = {t.user_attrs["slurm_job"] for t in trials}
    assert len(tasks) == 2 and all("_" in t for t in tasks), tasks  # both array tasks worked
    runs = trial_runs(on_cluster, "slurm4")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2, 3]  # one MLflow run each
    assert all(r.info.status == "FINISHED" and r.data.tags["slurm.job"] in tasks for r in runs)
    print(f"4 trials through 2 Slurm workers: {seconds:.0f} s")
    capsys.readouterr()
    assert main(["jobs"]) == 0  # the job, its state, and each trial with its array task and MLflow run
    listed = capsys.readouterr().out
    job = next(iter(tasks)).split("_")[0]
    assert f"job {job}  sweep slurm4" in listed and "completed" in listed, listed
    for t in trials:
        assert f"trial {t.number:<4} complete  task {t.user_attrs['slurm_job']:<12} MLflow run " \
               f"{t.user_attrs['mlflow_run_id']}" in listed, listed


@pytest.mark.slow
def test_a_worker_scancelled_mid_trial_leaves_its_trial_to_the_other(on_cluster, postgres, tmp_path):  # noqa: F811
    f = write_sweep(tmp_path, "slurmkill", n_trials=3, epochs=3, heartbeat=1)
    args = ["sweep", str(f), "--workers", "2", "--launcher", "slurm", "--storage", postgres, *TINY,
            "data.train_limit=300", "train.batch_size=5"]
    driver = subprocess.Popen([sys.executable, "-m", "pixelexp", *args], cwd=tmp_path, env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    victim = None
    deadline = time.time() + 240
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        try:
            running = open_study(load_sweep(f, TINY), postgres).get_trials(states=(States.RUNNING,))
        except Exception:  # the study is not there yet
            continue
        victim = next((t for t in running if "slurm_job" in t.user_attrs and "mlflow_run_id" in t.user_attrs), None)
    assert victim is not None, driver.communicate(timeout=60)[0][-3000:]
    subprocess.run(["scancel", victim.user_attrs["slurm_job"]], check=True, timeout=60)
    out, _ = driver.communicate(timeout=600)
    seconds = time.monotonic() - t0
    assert driver.returncode == 0, out[-3000:] + job_output(tmp_path)
    study = open_study(load_sweep(f, TINY), postgres)
    trials = study.get_trials()
    assert counted(study) == 3 and sum(t.state == States.COMPLETE for t in trials) == 3, \
        [(t.number, t.state) for t in trials]
    assert study.get_trials()[victim.number].state == States.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == States.COMPLETE and retry[0].params == victim.params
    killed = on_cluster.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"  # its MLflow run is closed, not left RUNNING
    assert f"Slurm job {victim.user_attrs['slurm_job']}: cancelled" in out
    print(f"3 trials, one worker scancel'ed: {seconds:.0f} s")
    print("\n".join(line for line in out.splitlines() if "Slurm" in line or "trials" in line))


def experiment_file(folder: Path, name: str, epochs: int, train_limit: int = 40) -> Path:
    """A tiny experiment of two variants, named `name` (one MLflow experiment per test: the server is shared)."""
    f = folder / f"{name}.yaml"
    f.write_text(f"""
base:
  data: {{train_limit: {train_limit}, val_size: 20, test_limit: 20}}
  model: {{hidden_dims: 4, recurrent_length: 1, out_hidden_dims: 8}}
  train: {{epochs: {epochs}, batch_size: 10, deterministic: true, checkpoint_minutes: 0.003}}
  track: {{sample_count: 0}}
variants:
  - name: cnn
    model: {{name: pixel_cnn}}
  - name: rnn
    model: {{name: pixel_rnn}}
""")
    return f


def histories(client: MlflowClient, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pixelexp.kind") == "experiment"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert all(r.info.status == "FINISHED" for r in children)
    return {r.data.tags["pixelexp.variant"]: {k: [(m.step, m.value) for m in sorted(
        client.get_metric_history(r.info.run_id, k), key=lambda m: m.step)] for k in ("train_bpd", "val_bpd")}
        for r in children}


@pytest.mark.slow
def test_an_experiment_job_of_two_processes_matches_two_local_ones(on_cluster, tmp_path):
    f = experiment_file(tmp_path, "two", epochs=2)
    assert main(["experiment", str(f), "--launcher", "slurm", "--tasks-per-node", "2", "--no-report"]) == 0, \
        job_output(tmp_path)
    on_slurm = histories(on_cluster, "two")
    parent = on_cluster.search_runs([on_cluster.get_experiment_by_name("two").experiment_id],
                                    "tags.`pixelexp.kind` = 'experiment'")[0]
    assert parent.data.tags["pixelexp.world_size"] == "2" and parent.data.tags["slurm.job"]  # two processes
    local = tmp_path / "local"
    local.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "pixelexp", "experiment", str(f.rename(local / "two-local.yaml")), "--no-report",
                           "--quiet"], cwd=local, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    here = histories(on_cluster, "two-local")
    assert sorted(on_slurm) == sorted(here) == ["cnn", "rnn"]
    for variant in here:
        for key, steps in here[variant].items():
            assert [s for s, _ in on_slurm[variant][key]] == [s for s, _ in steps], (variant, key)
            assert [v for _, v in on_slurm[variant][key]] == pytest.approx([v for _, v in steps], rel=1e-5)


@pytest.mark.slow
def test_a_requeued_experiment_job_resumes_with_each_step_once(on_cluster, tmp_path):
    f = experiment_file(tmp_path, "requeued", epochs=3, train_limit=1000)
    driver = subprocess.Popen([sys.executable, "-m", "pixelexp", "experiment", str(f), "--launcher", "slurm",
                               "--no-report"], cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    job = None
    deadline = time.time() + 300
    ckpts = tmp_path / "runs"
    while time.time() < deadline:  # requeue once the second variant has a checkpoint mid-run
        time.sleep(0.3)
        job = job or next((r["job"] for r in slurm.recorded()), None)
        ckpt_runs = {p.parts[-3] for p in ckpts.glob("*/checkpoints/step-*.pt")}
        if job and len(ckpt_runs) >= 2:
            break
    assert job, driver.communicate(timeout=60)[0][-3000:]
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    requeued = time.time() + 240
    while time.time() < requeued:  # Slurm holds a requeued job back a while: let it start now
        state = slurm.states(job).get(job)
        if state == "RUNNING" and "restart 1" in job_output(tmp_path):
            break
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True, timeout=60)
        time.sleep(1)
    out, _ = driver.communicate(timeout=600)
    log = job_output(tmp_path)
    assert driver.returncode == 0, out[-3000:] + log
    assert "restart 1" in log and "resuming run" in log, log
    h = histories(on_cluster, "requeued")
    for variant, keys in h.items():
        for key, values in keys.items():
            steps = [s for s, _ in values]
            assert steps == ([0, 1, 2, 3] if key in UNTRAINED else [1, 2, 3]), (variant, key, steps)  # once each


@pytest.mark.slow
def test_make_cancel_stops_a_submitted_job(on_cluster, tmp_path, capsys):
    f = experiment_file(tmp_path, "cancelled", epochs=3, train_limit=1000)
    driver = subprocess.Popen([sys.executable, "-m", "pixelexp", "experiment", str(f), "--launcher", "slurm",
                               "--no-report"], cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/checkpoints/step-*.pt")):
        time.sleep(0.3)
    job = slurm.recorded()[-1]["job"]
    assert slurm.states(job) == {job: "RUNNING"}
    assert main(["cancel"]) == 0
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 2 and f"Slurm job {job} ended cancelled" in out, out[-2000:]
    assert slurm.states(job) == {job: "CANCELLED"}
    capsys.readouterr()
    assert main(["cancel"]) == 0 and "no submitted job is queued or running" in capsys.readouterr().out


@pytest.mark.slow
def test_a_submission_slurm_refuses_is_one_line(on_cluster, tmp_path, capsys):
    f = experiment_file(tmp_path, "nowhere", epochs=1)
    assert main(["experiment", str(f), "--launcher", "slurm", "slurm.partition=nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sbatch refused" in err and "partition" in err.lower(), err
    assert slurm.recorded() == [] and not list((tmp_path / "runs" / "slurm").glob("*.sbatch"))  # nothing left


def test_slurm_refuses_stores_other_nodes_cannot_share(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    f = write_sweep(tmp_path, "refused", n_trials=2, epochs=1)
    for storage, words in ((f"journal:{tmp_path / 'j.journal'}", "journal file's locks are not reliable"),
                           (f"sqlite:///{tmp_path / 'o.db'}", "cannot share a SQLite file"),
                           ("postgresql://u@127.0.0.1:1/x", "MLflow tracking server")):
        assert main(["sweep", str(f), "--workers", "2", "--launcher", "slurm", "--storage", storage]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
    assert main(["experiment", str(experiment_file(tmp_path, "refused", 1)), "--launcher", "slurm"]) == 2
    assert "MLflow tracking server" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("override,words", [
    ("slurm.time=soon", "not a Slurm time limit"), ("slurm.mem=lots", "not a Slurm memory size"),
    ("slurm.gpus=-1", "whole number >= 0"), ("slurm.cpus=1.5", "whole number >= 1"),
    ("slurm.partiton=gpu", "did you mean 'partition'"), ("slurm.sbatch=qos=high", "sbatch options such as")])
def test_bad_slurm_options_are_one_line_errors(tmp_path, monkeypatch, capsys, override, words):
    monkeypatch.chdir(tmp_path)
    f = write_sweep(tmp_path, "badslurm", n_trials=2, epochs=1)
    assert main(["sweep", str(f), "--launcher", "slurm", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err


def test_the_sbatch_scripts_say_what_the_options_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = write_sweep(tmp_path, "opts", n_trials=2, epochs=1)
    f.write_text(f.read_text() + "slurm: {partition: gpu, time: '2:00:00', gpus: 1, sbatch: ['--qos=high']}\n")
    s = load_sweep(f, ["slurm.time=30", "slurm.mem=16G"])  # the command line wins
    text = slurm.sweep_workers_script("w", 3, s.slurm, ["sweep", "x"])
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    for want in ("--array=0-2", "--partition=gpu", "--time=30", "--gpus-per-task=1", "--mem=16G", "--qos=high",
                 "--requeue"):
        assert f"#SBATCH {want}" in lines, (want, lines)
    multi = slurm.experiment_script("e", s.slurm, 4, 8, ["experiment", "x.yaml"])
    assert "#SBATCH --nodes=4" in multi and "#SBATCH --gpus-per-node=1" in multi
    assert "--nnodes 4 --nproc-per-node 8" in multi and '--rdzv-endpoint "$head:' in multi
