"""sweeps/<name>.yaml (`sweep_file`) -> an Optuna study whose trials are runs of the same
`run(config)`.

Exactly `n_trials` trials run, however many workers share the study: the study holds
that many queued (WAITING) trials, and a worker only ever takes a queued one, which the
storage hands to one worker only (`pixelexp.studies.optuna_compat`). Rerunning the same
command resumes the study: a trial left RUNNING by a worker that died is marked FAIL and
queued again, and only the missing trials run. A trial that crashes or turns NaN is
recorded FAIL, not fatal.

Storage: `sqlite:///optuna.db` for one worker; a journal file `optuna/<sweep>.journal`
for several on one machine (the default when WORKERS > 1, and whenever that file
exists); any URL given in the file or with --storage (e.g. postgresql://...).
"""


from __future__ import annotations

import datetime
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pixelexp.config import resolve
from pixelexp.console import log
from pixelexp.engine import signals
from pixelexp.errors import Interrupted, TrackingOutage, UserError, cause
from pixelexp.runs.rundir import process_alive, this_process
from pixelexp.studies import slurm
from pixelexp.studies.sweep_file import Param, Sweep, load_sweep
from pixelexp.studies.sweep_workers import run_workers


def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_seed(sweep: Sweep, number: int) -> int:
    """The sampler's seed for trial `number`: from the sweep's seed and the trial's number.

    Each worker process has its own sampler; seeded alike, two workers (or a rerun of an
    interrupted sweep) would draw the same points. Seeded per trial, no two trials share a
    stream of random draws; what trial n draws is fixed by the seed and n alone for the
    random and grid samplers, and for TPE, CMA-ES and NSGA-II also depends on which trials
    had finished when it started."""
    import numpy as np
    return int(np.random.SeedSequence([int(sweep.sampler.get("seed", 0)), number]).generate_state(1)[0])


def make_sampler(sweep: Sweep, seed: int | None = None):
    """The sweep's sampler, seeded with `seed` (default: the file's sampler.seed)."""
    optuna = _optuna()
    kind = sweep.sampler.get("type", "tpe")
    seed = sweep.sampler.get("seed", 0) if seed is None else seed
    if kind == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in sweep.space}, seed=seed)
    return {"random": optuna.samplers.RandomSampler, "cmaes": optuna.samplers.CmaEsSampler,
            "tpe": optuna.samplers.NSGAIISampler if sweep.multi else optuna.samplers.TPESampler}[kind](seed=seed)


def make_pruner(sweep: Sweep):
    optuna = _optuna()
    kind = sweep.pruner.get("type", "median")
    if kind == "none" or sweep.multi:  # Optuna does not prune multi-objective studies
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep.base.train.epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=int(sweep.pruner.get("n_startup_trials", 2)),
                                       n_warmup_steps=int(sweep.pruner.get("n_warmup_steps", 0)))


def storage_url(sweep: Sweep, workers: int, given: str | None = None) -> str:
    if given or sweep.storage:
        return given or sweep.storage
    journal = Path("optuna") / f"{sweep.name}.journal"
    return f"journal:{journal}" if workers > 1 or journal.exists() else f"sqlite:///{Path('optuna.db').resolve()}"


def open_storage(url: str, heartbeat: float = 30.0):
    """Journal file, SQLite, or a database server. On a server (many machines) workers send
    heartbeats: a trial whose worker stops beating for 2 x `heartbeat` s is failed and queued
    again by whichever worker notices."""
    optuna = _optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    beats = {} if url.startswith("sqlite") else dict(
        heartbeat_interval=max(1, int(heartbeat)), grace_period=max(2, int(2 * heartbeat)),
        heartbeat_stale_trial_callback=requeue)
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, **beats)
        except Exception as e:  # noqa: BLE001
            if attempt < 3 and created_meanwhile(e):
                time.sleep(0.5 * (attempt + 1))  # the other process's tables are there now: open them
                continue
            raise UserError(f"Optuna storage {url} cannot be opened ({cause(e)}); "
                            f"check the sweep's storage") from None


def created_meanwhile(error: Exception) -> bool:
    """Whether opening a new database failed because another process (a second worker, a
    reader) created its tables at the same moment: a duplicate row or table."""
    text = f"{type(error).__name__} {error}".lower()
    return "integrityerror" in text or "already exists" in text or "duplicate" in text


@dataclass(frozen=True)
class Store:
    """A sweep's study and the storage object it was opened on, whose public methods change trial states."""
    study: Any
    storage: Any
    study_id: int
    heartbeat: int | None  # seconds between a worker's heartbeats; None for a file, which has none


def open_store(sweep: Sweep, url: str) -> Store:
    optuna = _optuna()
    storage = open_storage(url, sweep.heartbeat)
    study = optuna.create_study(study_name=sweep.name, storage=storage, load_if_exists=True, pruner=make_pruner(sweep),
                                directions=list(sweep.directions), sampler=make_sampler(sweep))
    beats = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    return Store(study, storage, storage.get_study_id_from_name(sweep.name), beats)


def open_study(sweep: Sweep, url: str):
    return open_store(sweep, url).study


WORKER_ATTR = "pixelexp_worker"  # "host:pid" of the process running a trial
SLURM_ATTR = "slurm_job"  # the Slurm job (array task) of that process, when it is one


def requeue(study, trial) -> None:
    """Queue a failed trial again with the same parameters (`retry_of` links them)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def _fail_and_requeue(store: Store, trial) -> bool:
    """A dead worker's RUNNING trial -> FAIL, queued again; False if another process did it first."""
    optuna = _optuna()
    trial_id = store.storage.get_trial_id_from_study_id_trial_number(store.study_id, trial.number)
    try:
        store.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    requeue(store.study, trial)
    return True


def recover(store: Store) -> list:
    """Trials left RUNNING by a dead worker -> FAIL, queued again. On a database server the
    storage's heartbeats decide; for a journal or SQLite file, whether the worker's
    process still lives on this machine."""
    optuna = _optuna()
    running = store.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if store.heartbeat is None:
        # A worker on another machine, or one this process may not signal, is not judged dead here.
        return [t for t in running if WORKER_ATTR in t.user_attrs
                and process_alive(t.user_attrs[WORKER_ATTR]) is False and _fail_and_requeue(store, t)]
    optuna.storages.fail_stale_trials(store.study)  # the storage's stale-trial callback, `requeue`, queues each
    # A worker killed after taking a trial but before its first heartbeat leaves no
    # heartbeat to go stale; it sets its worker attribute right after that first beat,
    # so a trial without one for several grace periods has no worker.
    since = datetime.datetime.now() - datetime.timedelta(seconds=store.heartbeat * 2 * 3)
    for t in running:
        if WORKER_ATTR not in t.user_attrs and t.datetime_start is not None and t.datetime_start < since:
            _fail_and_requeue(store, t)
    failed = {t.number for t in store.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    return [t for t in running if t.number in failed]


def close_dead_runs(tracker, trials: list) -> list:
    """The MLflow runs of trials whose worker died: KILLED, tagged as retried -> those trials."""
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and tracker.status(run_id) == "RUNNING":
            tracker.set_tags(run_id, {"optuna.state": "failed (worker died; retried)"})
            tracker.set_terminated(run_id, "KILLED")
    return trials


def _counting(study) -> list:
    """Trials that use up one of the n_trials: all but the failed ones that were retried."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if t.number not in retried]


def counted(study) -> int:
    """How many trials use up one of the n_trials."""
    return len(_counting(study))


def top_up(study, n_trials: int) -> int:
    missing = max(0, n_trials - counted(study))
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def work(sweep: Sweep, store: Store, tracker, parent_id: str, deadline: float | None) -> int:
    """Run queued trials until none is left (or the deadline passes) -> trials run. A worker takes
    queued trials only (see `pixelexp.studies.optuna_compat`); each draws with its own seeded sampler."""
    from pixelexp.studies.optuna_compat import claim_queued_trial, trial_object
    states = _optuna().trial.TrialState
    parent = tracker.run_log(parent_id, journal=False)  # workers share it: sent directly
    me = this_process()
    done = 0
    while deadline is None or time.time() < deadline:
        signals.check("between trials")  # before taking a trial: it stays queued for the next run
        claimed = claim_queued_trial(store.study, store.storage, store.study_id)
        if claimed is None:
            # Nothing queued. On a server, a trial still RUNNING may belong to a dead worker:
            # wait for its heartbeat to go stale (it is then queued again) or for it to end.
            if store.heartbeat is None or not store.study.get_trials(deepcopy=False, states=(states.RUNNING,)):
                break
            time.sleep(store.heartbeat)
            recover(store)
            continue
        trial_id, number = claimed
        with _beating(store, trial_id):  # a worker killed from here on leaves a heartbeat that goes stale
            store.study.sampler = make_sampler(sweep, trial_seed(sweep, number))
            trial = trial_object(store.study, trial_id)
            trial.set_user_attr(WORKER_ATTR, me)
            if slurm.worker_job():
                trial.set_user_attr(SLURM_ATTR, slurm.worker_job())
            run_trial(sweep, store.study, trial, tracker, parent)
        done += 1
    return done


@contextmanager
def _beating(store: Store, trial_id: int):
    """Heartbeats for `trial_id` while the block runs (on a server): one at once, then one every interval."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(store.heartbeat):
            store.storage.record_heartbeat(trial_id)

    if store.heartbeat is not None:
        store.storage.record_heartbeat(trial_id)
        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}").start()
    try:
        yield
    finally:
        stop.set()


def run_trial(sweep: Sweep, study, trial, tracker, parent) -> None:
    """Train one trial's config in its own MLflow run, then tell the study how it ended. A
    crash or NaN fails the trial alone; an interrupt leaves it RUNNING, to be queued again."""
    optuna = _optuna()
    from pixelexp.runs.train import run
    states = optuna.trial.TrialState
    values = {p.key: p.suggest(trial) for p in sweep.space}
    cfg = resolve([sweep.base.flat(), values], ["sweep base", f"trial {trial.number}"])
    child = tracker.start_run(f"trial-{trial.number}", parent=parent, tags={
        "pixelexp.kind": "trial", "optuna.study": sweep.name, "optuna.trial": trial.number,
        "optuna.state": "running", **slurm.job_tag(),
        "mlflow.note.content": f"trial {trial.number} of sweep {sweep.name}: "
        + ", ".join(f"{k}={v}" for k, v in values.items()), **({"optuna.retry_of": trial.user_attrs["retry_of"]}
                                      if "retry_of" in trial.user_attrs else {})})
    trial.set_user_attr("mlflow_run_id", child.run_id)

    def on_epoch(epoch: int, m: dict) -> None:
        if not sweep.multi:
            trial.report(m[sweep.metrics[0]], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        result = run(cfg, child, label=f"trial {trial.number}", progress=False, on_epoch=on_epoch)
    except optuna.TrialPruned:
        study.tell(trial, state=states.PRUNED)
        child.set_tags({"optuna.state": "pruned"})
        child.end("FINISHED")
        log.info(f"[trial {trial.number}] pruned")
    except (Interrupted, KeyboardInterrupt):  # SIGTERM/SIGINT: the next `make sweep` queues it again
        child.set_tags({"optuna.state": "interrupted (queued again by the next run of the sweep)"})
        try:
            child.end("KILLED", wait=10)
        except TrackingOutage as e:
            log.warning(str(e))
        raise
    except Exception as e:  # noqa: BLE001 - a crash or NaN in one trial is recorded, not fatal
        study.tell(trial, state=states.FAIL)
        child.set_tags({"optuna.state": "failed", "pixelexp.error": f"{type(e).__name__}: {e}"})
        child.end("FAILED")
        log.info(f"[trial {trial.number}] failed: {type(e).__name__}: {e}")
    else:
        value = [result.metrics[m] for m in sweep.metrics]
        finite = all(math.isfinite(v) for v in value)
        study.tell(trial, (value if sweep.multi else value[0]) if finite else None, None if finite else states.FAIL)
        child.set_tags({"optuna.state": "complete" if finite else "failed"})
        child.end("FINISHED")


def run_sweep(path: str | Path, overrides: list[str] | None = None, workers: int = 1,
              storage: str | None = None, report: bool = True, n_trials: int | None = None,
              launcher: str = "local") -> dict:
    """Run (or resume) the study: its trials in this process (`workers` 1), in `workers`
    processes on this machine, or (`launcher` "slurm") in a Slurm job array of `workers`
    workers, waited for here."""
    from pixelexp.runs import provenance, tracking
    from pixelexp.runs.train import preflight

    overrides = list(overrides or [])
    sweep = load_sweep(path, overrides)
    sweep = sweep if n_trials is None else replace(sweep, n_trials=n_trials)
    url = storage_url(sweep, workers, storage)
    if launcher == "slurm":
        slurm.require_shared_stores(url, tracking.tracking_uri())
    else:
        # Bad data or a base model that cannot run stops us before any write; a trial whose
        # sizes do not fit the machine fails alone (its run says why), the others go on.
        # (A login node checks no data: the workers' nodes read it.)
        preflight(sweep.base)
    signals.check("during start-up; nothing was written")
    store = open_store(sweep, url)
    tracker = tracking.Tracker(f"sweep-{sweep.name}")
    tracker.describe(sweep.description or f"Optuna study {sweep.name} ({sweep.path.name})",
                     epochs=sweep.base.train.epochs)
    parent_id = store.study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None or not tracker.has_run(parent_id):
        parent = tracker.start_run(f"sweep {sweep.name}", journal=False, study=True, tags={
            "pixelexp.kind": "sweep", "optuna.study": sweep.name, "optuna.storage": url,
            "pixelexp.sweep_file": str(sweep.path), **provenance.git_state()})
        parent.log_params({"n_trials": sweep.n_trials, "metrics": ",".join(sweep.metrics),
                           "directions": ",".join(sweep.directions), "sampler": sweep.sampler.get("type", "tpe"),
                           "pruner": sweep.pruner.get("type", "median"),
                           "space": "; ".join(f"{p.key}:{p.type}" for p in sweep.space)})
        parent.log_text(sweep.path.read_text(), f"sweep/{sweep.path.name}")
        store.study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        parent_id = parent.run_id
    else:
        tracker.reopen(parent_id, journal=False)
    retried = close_dead_runs(tracker, recover(store))
    added = top_up(store.study, sweep.n_trials)
    log.info(f"sweep {sweep.name}: study in {url}; {counted(store.study) - added} trials there before, "
             f"{added} queued" + (f", {len(retried)} retried after a dead worker" if retried else "")
             + f"; MLflow parent run {parent_id}")
    deadline = None if sweep.timeout is None else time.time() + sweep.timeout
    try:
        if launcher == "slurm":
            if counted(store.study) - _finished(store.study) > 0:
                slurm_workers(sweep, overrides, workers, url, parent_id)
            close_dead_runs(tracker, recover(store))
            left = counted(store.study) - _finished(store.study)
            if left:
                log.info(f"{left} trials are not finished: the workers ended before them (their output is in "
                         f"{slurm.jobs_file().parent}/); the same command submits workers for them")
        elif workers <= 1:
            work(sweep, store, tracker, parent_id, deadline)
        else:
            run_workers(sweep, overrides, workers, url, parent_id)
            close_dead_runs(tracker, recover(store))  # a dead worker's trial is queued again: finish here
            work(sweep, store, tracker, parent_id, deadline)
    except (Interrupted, KeyboardInterrupt) as e:  # the next run of the same command goes on with the study
        try:
            tracker.set_tags(parent_id, {"pixelexp.killed_by": str(e) or type(e).__name__})
            tracker.set_terminated(parent_id, "KILLED")
        except Exception as outage:  # noqa: BLE001 - the store is away: the signal's line matters more
            log.warning(f"the sweep's parent run {parent_id} could not be marked KILLED ({type(outage).__name__})")
        raise
    return finish(sweep, store.study, tracker, parent_id, url, report)


def _finished(study) -> int:
    """Counted trials that ended (complete, pruned, or failed and not retried)."""
    return sum(1 for t in _counting(study) if t.state.is_finished())


def slurm_workers(sweep: Sweep, overrides: list[str], workers: int, url: str, parent_id: str) -> None:
    """Submit `workers` sweep workers as one Slurm job array and wait for it."""
    args = ["sweep", str(sweep.path.resolve()), *overrides, "--worker", "--storage", url, "--parent", parent_id]
    text = slurm.sweep_workers_script(f"pixelexp-sweep-{sweep.name}", workers, sweep.slurm, args)
    job, final = slurm.submit_and_wait(f"sweep-{sweep.name}", text, {
        "kind": "sweep", "sweep": sweep.name, "sweep_file": str(sweep.path.resolve()), "storage": url,
        "parent_run": parent_id, "workers": workers})
    ended = ", ".join(f"{k} {v.lower()}" for k, v in sorted(final.items()))
    log.info(f"Slurm job {job} ended: {ended or 'no state left in Slurm'}")


def worker_main(path: str, overrides: list[str], url: str, parent_id: str) -> None:
    from pixelexp.runs import tracking
    sweep = load_sweep(path, overrides)
    deadline = None if sweep.timeout is None else time.time() + sweep.timeout
    work(sweep, open_store(sweep, url), tracking.Tracker(f"sweep-{sweep.name}"), parent_id, deadline)


def finish(sweep: Sweep, study, tracker, parent_id: str, url: str, report: bool) -> dict:
    states = _optuna().trial.TrialState
    parent = tracker.run_log(parent_id, journal=False)  # workers share it: sent directly
    trials = study.get_trials(deepcopy=False)
    summary = {s.name.lower(): sum(t.state == s for t in trials) for s in states}
    parent.log_metrics({f"trials_{k}": v for k, v in summary.items()}, step=0)
    best: dict = {}
    if any(t.state == states.COMPLETE for t in trials):
        if sweep.multi:
            front = study.best_trials
            best = {"pareto_trials": [t.number for t in front]}
            parent.set_tags({"pareto_front": ",".join(str(t.number) for t in front)})
        else:
            bt = study.best_trial
            best = {"best_trial": bt.number, "best_value": bt.value, "best_params": bt.params}
            parent.log_metrics({f"best_{sweep.metrics[0]}": bt.value}, step=0)
            parent.set_tags({"best_trial": bt.number, **{f"best.{k}": v for k, v in bt.params.items()}})
    report_dir = None
    if report:
        from pixelexp.studies.report import sweep_report
        try:
            with signals.at_once():
                report_dir = sweep_report(sweep.name, study=study, multi=sweep.multi, metrics=sweep.metrics,
                                          run_log=parent)
        except KeyboardInterrupt:
            parent.end("KILLED")
            raise signals.interrupted(f"while writing reports/{sweep.name}/ (every trial finished; the same "
                                      f"command writes it)") from None
    parent.end("FINISHED")
    log.info("")
    log.info(f"study:        {sweep.name} in {url}")
    log.info("trials:       " + ", ".join(f"{v} {k}" for k, v in summary.items() if v))
    if "best_value" in best:
        log.info(f"best:         trial {best['best_trial']}, {sweep.metrics[0]} = {best['best_value']:.4f}, "
                 f"{best['best_params']}")
    elif best:
        log.info(f"Pareto front: trials {best['pareto_trials']}")
    log.info(f"MLflow:       {tracker.uri}, experiment sweep-{sweep.name}, parent run {parent_id}")
    from pixelexp.runs.tracking import ui_address
    log.info(f"browse it:    make ui, then open {tracker.view_url(ui_address())}")
    if report_dir:
        log.info(f"report:       {report_dir}/report.md")
    return {"study": study, "parent_run_id": parent_id, "summary": summary, **best}


__all__ = ["Sweep", "Param", "Store", "load_sweep", "run_sweep", "open_store", "open_study", "recover", "top_up",
           "counted", "work"]
