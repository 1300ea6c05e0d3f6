"""Optuna sweeps: exact trial counts with several workers, resume after a kill,
pruning, MLflow tracking and reports."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from pixelexp.cli import main
from pixelexp.studies.sweep import load_sweep, open_study, storage_url

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.train_limit=40", "data.val_size=20", "data.test_limit=20", "train.batch_size=20",
        "track.sample_count=0", "model.recurrent_length=1", "model.out_hidden_dims=8"]
States = optuna.trial.TrialState


def write_sweep(tmp_path, n_trials=3, epochs=2, space=None, pruner="none", extra=""):
    space = space or ("  model.hidden_dims: {type: int, low: 4, high: 12, step: 4}\n"
                      "  train.lr: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}\n")
    f = tmp_path / "sweeps" / "tiny.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_text(f"experiment: {REPO / 'experiments' / 'rnn_vs_cnn.yaml'}\nvariant: pixel_cnn-1\n"
                 f"overrides: {{train.epochs: {epochs}}}\nspace:\n{space}n_trials: {n_trials}\n"
                 f"pruner: {{type: {pruner}}}\n{extra}")
    return f


@pytest.fixture
def env(tracking, mnist10k, monkeypatch):
    monkeypatch.setenv("PIXELEXP_DATA", str(mnist10k))
    return MlflowClient(tracking)


def trials_of(path, workers=1):
    s = load_sweep(path, TINY)
    return open_study(s, storage_url(s, workers)).get_trials()


def children(client, name="tiny"):
    exp = client.get_experiment_by_name(f"sweep-{name}")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("pixelexp.kind") == "trial"]


@pytest.mark.slow
def test_sweep_runs_n_trials_tracks_each_and_writes_the_report(env, tmp_path, capsys):
    f = write_sweep(tmp_path, n_trials=3)
    assert main(["sweep", str(f), *TINY]) == 0
    trials = trials_of(f)
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == States.COMPLETE for t in trials)
    runs = children(env)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2]
    assert all(r.data.tags["optuna.state"] == "complete" and r.info.status == "FINISHED" for r in runs)
    for r in runs:  # each trial's suggested values are its run's params
        t = trials[int(r.data.tags["optuna.trial"])]
        assert r.data.params["model.hidden_dims"] == str(t.params["model.hidden_dims"])
    exp = env.get_experiment_by_name("sweep-tiny")
    parent = [r for r in env.search_runs([exp.experiment_id]) if r.data.tags.get("pixelexp.kind") == "sweep"][0]
    best = min(trials, key=lambda t: t.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.metrics["best_val_bpd"] == pytest.approx(best.value)
    rep = tmp_path / "reports" / "tiny"
    assert {"report.md", "trials.csv", "optimization_history.png", "param_importances.png"} <= \
        {p.name for p in rep.iterdir()}
    assert {a.path for a in env.list_artifacts(parent.info.run_id, "optuna")} >= {"optuna/trials.csv"}
    # Running it again finds nothing missing and runs nothing.
    assert main(["sweep", str(f), *TINY]) == 0
    assert len(trials_of(f)) == 3 and len(children(env)) == 3
    # `make report SWEEP=...` rewrites the report from the study.
    (rep / "trials.csv").unlink()
    assert main(["report", "--sweep", str(f)]) == 0 and (rep / "trials.csv").is_file()
    other = tmp_path / "sweeps" / "never_run.yaml"
    other.write_text(f.read_text())
    assert main(["report", "--sweep", str(other)]) == 2  # no such study: a one-line error


@pytest.mark.slow
def test_two_workers_finish_exactly_n_trials(env, tmp_path):
    f = write_sweep(tmp_path, n_trials=5, epochs=1)
    assert main(["sweep", str(f), "--workers", "2", *TINY]) == 0
    assert (tmp_path / "optuna" / "tiny.journal").is_file()  # several workers: the journal file
    trials = trials_of(f, workers=2)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == States.COMPLETE for t in trials)
    owners = {t.user_attrs["pixelexp_worker"].rpartition(":")[2] for t in trials}
    assert str(os.getpid()) not in owners and len(owners) <= 2  # run by the worker processes
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5  # no worker repeats another's draws
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children(env)) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped(env, tmp_path):
    f = write_sweep(tmp_path, n_trials=3, epochs=4)
    slow = ["data.train_limit=400", "train.batch_size=5"]  # a few seconds a trial: time to kill it
    cmd = [sys.executable, "-m", "pixelexp", "sweep", str(f), *TINY, *slow]
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        study = None  # opened once: opening a SQLite study on every poll takes locks the sweep needs
        while time.time() < deadline:  # wait until the second trial is running and tracked
            time.sleep(0.5)
            assert proc.poll() is None, f"the sweep ended early: {(tmp_path / 'sweep.log').read_text()[-1500:]}"
            if (tmp_path / "optuna.db").exists():
                try:
                    s = load_sweep(f, TINY)
                    study = study or open_study(s, storage_url(s, 1))
                    ts = study.get_trials()
                except Exception:
                    continue
                # RUNNING in the study comes a moment before its MLflow run exists: wait for both
                if any(t.state == States.RUNNING and t.number == 1 and "mlflow_run_id" in t.user_attrs
                       for t in ts):
                    break
                assert not any(t.number == 1 and t.state.is_finished() for t in ts), "missed trial 1"
        else:
            pytest.fail(f"the sweep never reached its second trial: {(tmp_path / 'sweep.log').read_text()[-1500:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    before = trials_of(f)
    assert before[0].state == States.COMPLETE and before[1].state == States.RUNNING
    assert main(["sweep", str(f), *TINY, *slow]) == 0
    after = trials_of(f)
    assert after[0].datetime_complete == before[0].datetime_complete  # not run twice
    assert after[1].state == States.FAIL
    done = [t for t in after if t.state == States.COMPLETE]
    assert len(done) == 3  # trials 0, 2 and the retry of 1
    retry = next(t for t in after if t.user_attrs.get("retry_of") == 1)
    assert retry.params == after[1].params
    drawn = [tuple(sorted(t.params.items())) for t in after if "retry_of" not in t.user_attrs]
    assert len(drawn) == 3 and len(set(drawn)) == 3  # the rerun draws afresh, not trial 0's point again
    killed = [r for r in children(env) if r.data.tags["optuna.trial"] == "1"][0]
    assert killed.info.status == "KILLED"


@pytest.mark.slow
def test_pruning_stops_a_bad_trial_early(env, tmp_path):
    space = "  train.lr: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}\n"
    f = write_sweep(tmp_path, n_trials=3, epochs=3, space=space,
                    pruner="median, n_startup_trials: 2, n_warmup_steps: 0")
    s = load_sweep(f, TINY)
    study = open_study(s, storage_url(s, 1))
    for lr in (3e-3, 3e-3, 1e-7):  # two good trials, then one made to be bad
        study.enqueue_trial({"train.lr": lr})
    assert main(["sweep", str(f), *TINY]) == 0
    trials = trials_of(f)
    assert [t.state for t in trials] == [States.COMPLETE, States.COMPLETE, States.PRUNED]
    bad = [r for r in children(env) if r.data.tags["optuna.trial"] == "2"][0]
    assert bad.data.tags["optuna.state"] == "pruned"
    assert len(env.get_metric_history(bad.info.run_id, "val_bpd")) < 3  # stopped before its last epoch


def test_a_crash_in_one_trial_is_recorded_not_fatal(env, tmp_path):
    space = "  train.lr: {type: float, low: 1.0e-3, high: 1.0e+9, log: true}\n"
    f = write_sweep(tmp_path, n_trials=2, epochs=1, space=space, extra="sampler: {type: random, seed: 0}\n")
    s = load_sweep(f, TINY)
    study = open_study(s, storage_url(s, 1))
    study.enqueue_trial({"train.lr": 1e9})  # diverges to NaN/inf
    study.enqueue_trial({"train.lr": 1e-3})
    assert main(["sweep", str(f), *TINY, "train.grad_clip=0"]) == 0
    trials = trials_of(f)
    assert len(trials) == 2 and trials[0].state == States.FAIL and trials[1].state == States.COMPLETE


@pytest.mark.parametrize("text,words", [
    ("experiment: rnn_vs_cnn\nspace: {model.hidden_dims: {type: int, low: 4, high: 2}}\n", ["low=4", "high=2"]),
    ("experiment: rnn_vs_cnn\nspace: {model.hiden_dims: {type: int, low: 4, high: 8}}\n", ["model.hidden_dims"]),
    ("experiment: rnn_vs_cnn\nspace: {train.lr: {type: normal}}\n", ["int, float or categorical"]),
    ("experiment: rnn_vs_cnn\nspace: {train.lr: {type: float, low: 0, high: 1, log: true}}\n", ["low > 0"]),
    ("experiment: rnn_vs_cnn\nmetric: val_bdp\nspace: {train.lr: {type: float, low: 0.1, high: 1}}\n",
     ["did you mean 'val_bpd'"]),
    ("experiment: rnn_vs_cnn\nn_trail: 3\nspace: {train.lr: {type: float, low: 0.1, high: 1}}\n",
     ["did you mean 'n_trials'"]),
    ("experiment: rnn_vs_cnn\nvariant: nope\nspace: {train.lr: {type: float, low: 0.1, high: 1}}\n",
     ["pixel_rnn-1"]),
    ("experiment: rnn_vs_cnn\nspace: {model.recurrent_length: {type: int, low: 0, high: 3}}\n", [">= 1"]),
    ("experiment: rnn_vs_cnn\nsampler: {typ: tpe}\nspace: {train.lr: {type: float, low: 0.1, high: 1}}\n",
     ["sampler.typ", "did you mean 'type'"]),
    ("experiment: rnn_vs_cnn\npruner: {type: median, n_warmup_steps: -1}\n"
     "space: {train.lr: {type: float, low: 0.1, high: 1}}\n", ["n_warmup_steps=-1", ">= 0"]),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, monkeypatch, capsys, text, words):
    monkeypatch.chdir(REPO)
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert main(["sweep", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("name", ["rnn_dims", "cnn_dims"])
def test_shipped_sweeps_are_valid(name, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    assert {p.key for p in s.space} == {"model.hidden_dims", "model.recurrent_length",
                                        "model.out_hidden_dims", "train.lr"}


@pytest.mark.slow
def test_multi_objective_sweep_reports_a_pareto_front(env, tmp_path):
    f = write_sweep(tmp_path, n_trials=3, epochs=1,
                    extra="objectives: [val_bpd, epoch_seconds]\ndirections: [minimize, minimize]\n")
    assert main(["sweep", str(f), *TINY]) == 0
    trials = trials_of(f)
    assert all(t.state == States.COMPLETE and len(t.values) == 2 for t in trials)
    exp = env.get_experiment_by_name("sweep-tiny")
    parent = [r for r in env.search_runs([exp.experiment_id]) if r.data.tags.get("pixelexp.kind") == "sweep"][0]
    front = {int(n) for n in parent.data.tags["pareto_front"].split(",")}
    assert front and front <= {t.number for t in trials}
    assert (tmp_path / "reports" / "tiny" / "pareto_front.png").is_file()


def test_a_storage_created_by_another_process_meanwhile_is_opened(tmp_path, monkeypatch):
    """Two processes that create one new study database at once: the second's insert of
    the schema version fails (a duplicate row); it opens the tables the first made."""
    import sqlalchemy.exc

    from pixelexp.errors import UserError
    from pixelexp.studies import sweep as sweep_mod
    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            real(url, **kw)  # the other process wins the race...
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception(
                "UNIQUE constraint failed: alembic_version.version_num"))  # ...and this one's insert fails
        return real(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = sweep_mod.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, real) and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, **kw: (_ for _ in ()).throw(
        sqlalchemy.exc.OperationalError("connect", {}, Exception("could not connect to server"))))
    with pytest.raises(UserError, match="cannot be opened"):  # other errors are still one line at once
        sweep_mod.open_storage("postgresql://nobody@127.0.0.1:1/none")
