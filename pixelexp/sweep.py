"""sweeps/<name>.yaml -> an Optuna study whose trials are runs of the same `run(config)`.

A sweep file names the experiment file (and variant) it starts from, its own
overrides, the search space, the metric(s) and direction(s), `n_trials`, `timeout`,
the sampler, the pruner and the storage:

    experiment: rnn_vs_cnn          # experiments/rnn_vs_cnn.yaml
    variant: pixel_rnn-1            # default: the first variant
    overrides: {train.epochs: 5}
    space:
      model.hidden_dims: {type: int, low: 16, high: 128, step: 16}
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    metric: val_bpd                 # or objectives: [val_bpd, epoch_seconds] (Pareto front)
    direction: minimize
    n_trials: 20
    sampler: {type: tpe, seed: 0}   # tpe, random, cmaes, grid
    pruner: {type: median}          # median, hyperband, none

Exactly `n_trials` trials run, however many workers share the study: the study holds
that many queued (WAITING) trials, and a worker only ever takes a queued one, which the
storage hands to one worker only (`pixelexp.optuna_compat`). Rerunning the same command
resumes the study: a trial left RUNNING by a worker that died is marked FAIL and queued
again, and only the missing trials run. A trial that crashes or turns NaN is recorded
FAIL, not fatal.

Storage: `sqlite:///optuna.db` for one worker; a journal file `optuna/<sweep>.journal`
for several on one machine (the default when WORKERS > 1, and whenever that file
exists); any URL given in the file or with --storage (e.g. postgresql://...).
"""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pixelexp import signals
from pixelexp.config import (
    Config,
    check_key,
    check_name,
    did_you_mean,
    flatten,
    load_experiment,
    parse_overrides,
    read_yaml,
    resolve,
    shown,
    shown_path,
    yaml_path,
)
from pixelexp.errors import ConfigError, Interrupted, TrackingOutage, UserError
from pixelexp.rundir import process_alive, this_process

SWEEP_KEYS = ("description", "experiment", "variant", "overrides", "space", "metric", "direction",
              "objectives", "directions", "n_trials", "timeout", "sampler", "pruner", "storage", "heartbeat")
METRICS = ("val_bpd", "best_val_bpd", "train_bpd", "val_nats", "best_val_nats", "train_nats", "epoch_seconds",
           "images_per_second")
SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Param:
    key: str
    type: str  # int, float, categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def grid(self) -> list:
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = int(round((self.high - self.low) / self.step))
            return [self.low + k * self.step for k in range(n + 1)]
        raise ConfigError(f"sampler grid needs a step for float parameter {self.key}")


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    base: Config
    space: tuple[Param, ...]
    metrics: tuple[str, ...]
    directions: tuple[str, ...]
    n_trials: int
    timeout: float | None
    sampler: dict
    pruner: dict
    storage: str | None
    description: str = ""
    heartbeat: float = 30.0  # seconds between a worker's heartbeats on a database storage

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


def _param(key: str, spec: Any, where: str, base: Config) -> Param:
    check_key(key, where)
    if not isinstance(spec, dict) or spec.get("type") not in ("int", "float", "categorical"):
        raise ConfigError(f"{where}: space.{key} needs type int, float or categorical, "
                          f"e.g. {{type: int, low: 16, high: 128, step: 16}}")
    allowed = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"},
               "categorical": {"type", "choices"}}[spec["type"]]
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"{where}: space.{key} ({spec['type']}) takes no {shown(sorted(extra, key=str)[0])}; "
                          f"it takes {', '.join(sorted(allowed))}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: space.{key} needs a non-empty list of choices")
        for c in choices:  # every choice must be a valid value of the key
            resolve([base.flat(), {key: c}], ["sweep base", f"{where} (space.{key})"])
        return Param(key, "categorical", choices=tuple(choices))
    low, high, step = _numbers(key, spec, where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: space.{key} has log={shown(log)}; it must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: space.{key} with log: true needs low > 0")
    if log and step is not None:
        raise ConfigError(f"{where}: space.{key} has both log: true and step={step:g}; Optuna samples a log scale "
                          f"without steps: drop one of them")
    for v in (low, high):  # the bounds must be valid values of the key
        resolve([base.flat(), {key: int(v) if spec["type"] == "int" else v}], ["sweep base", f"{where} (space.{key})"])
    return Param(key, spec["type"], low, high, step, log)


def _numbers(key: str, spec: dict, where: str) -> tuple[float, float, float | None]:
    """low, high and step of an int or float space: finite numbers, low < high, step > 0, and
    integers for an int space. Checked here because Optuna only refuses them once the
    study and its MLflow runs exist (or, for nan, never, and samples nan)."""
    low, high = (_number(key, spec.get(name), name, where) for name in ("low", "high"))
    step = None if spec.get("step") is None else _number(key, spec["step"], "step", where)
    if not low < high:
        raise ConfigError(f"{where}: space.{key} has low={low:g} >= high={high:g}")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: space.{key} has step={step:g}; it must be > 0 (or left out)")
    if spec["type"] == "int" and any(v is not None and v != int(v) for v in (low, high, step)):
        raise ConfigError(f"{where}: space.{key} is an int parameter; low, high and step must be integers")
    return low, high, step


def _number(key: str, raw: Any, name: str, where: str) -> float:
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = float(raw)
    except OverflowError:  # an integer beyond a float's range
        value = math.inf
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: space.{key} needs numbers low and high (and optionally step); "
                          f"{name}={shown(raw)} is not one") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: space.{key} has {name}={value!r}, not a finite number; give finite numbers")
    return value


GRID_MAX_POINTS = 1_000_000  # Optuna's grid sampler holds every point in memory


def _check_grid(space: tuple[Param, ...], where: str) -> None:
    """`sampler: {type: grid}` needs a finite, modest grid: a float without a step, or
    a step so fine that the grid has billions of points, is refused before any study exists."""
    total = 1
    for p in space:
        if p.type == "categorical":
            n = len(p.choices)
        elif p.type == "float" and p.step is None:
            raise ConfigError(f"{where}: sampler grid needs a step for the float parameter space.{p.key}; "
                              f"add step: or choose another sampler")
        else:
            ratio = (p.high - p.low) / (p.step or 1)
            n = math.floor(ratio + 1e-9) + 1 if ratio <= GRID_MAX_POINTS else GRID_MAX_POINTS + 1
        total = min(total * n, GRID_MAX_POINTS + 1)
    if total > GRID_MAX_POINTS:
        raise ConfigError(f"{where}: sampler grid would hold over {GRID_MAX_POINTS:,} points; "
                          f"use larger steps, fewer choices or another sampler")


def _choice(value: Any, allowed: tuple, what: str, where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {what}={shown(value)} is not allowed{did_you_mean(value, allowed)}; "
                          f"choose one of: {', '.join(allowed)}")
    return value


def _plain(key: Any) -> str:
    """A key as typed when it is a short printable string (sampler.typ), else cut like `shown`."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else shown(key)


def _options(tree: Any, default: str, keys: tuple, what: str, where: str) -> dict:
    """`sampler:` / `pruner:` blocks: a mapping of known keys only."""
    tree = {"type": default} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: {what} must be a mapping like {{type: {default}}}")
    for k in tree:
        if k not in keys:
            raise ConfigError(f"{where}: {what}.{_plain(k)} is unknown{did_you_mean(k, keys)}; "
                              f"{what} takes {', '.join(keys)}")
    return dict(tree)


def _seconds(tree: dict, key: str, default: float | None, least: float, where: str) -> float | None:
    """`timeout:` / `heartbeat:`: a finite number of seconds (nan or inf would stop a sweep
    before its first trial, or crash its heartbeat thread)."""
    value = tree.get(key, default)
    if value is None and default is None:
        return None
    try:
        number = math.nan if isinstance(value, (bool, str)) else float(value)
    except (TypeError, OverflowError):  # not a number, or an int beyond a float's range
        number = math.nan
    if not math.isfinite(number) or number < least or (least == 0 and number == 0):
        bound = "> 0 (or null)" if least == 0 else f">= {least:g}"
        raise ConfigError(f"{where}: {key}={shown(value)} must be a finite number of seconds {bound}")
    return number


SEED_MAX = 2**32 - 1  # NumPy's seeds, which Optuna's samplers use


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    p = yaml_path(str(path), "sweeps")
    tree = read_yaml(p, "sweep")
    where = shown_path(p)
    for k in tree:
        if k not in SWEEP_KEYS:
            raise ConfigError(f"{where}: unknown key {shown(k)}{did_you_mean(k, SWEEP_KEYS)}; "
                              f"allowed: {', '.join(SWEEP_KEYS)}")
    name = check_name(p.stem, "sweep name (the file's name)", where)
    if not isinstance(tree.get("experiment"), str) or not tree["experiment"]:
        raise ConfigError(f"{where}: needs 'experiment', the experiment file the trials start from")
    try:
        exp_path = _experiment_path(tree["experiment"], p)
    except OSError as e:
        raise ConfigError(f"{where}: experiment={shown(tree['experiment'])} cannot be a file "
                          f"({e.strerror}); name one in experiments/") from None
    exp = load_experiment(exp_path)
    names = [v.name for v in exp.variants]
    variant = tree.get("variant", names[0])
    if variant not in names:
        raise ConfigError(f"{where}: variant={shown(variant)} is not in {shown_path(exp.path)}; "
                          f"choose one of: {', '.join(names)}")
    start = next(v.config for v in exp.variants if v.name == variant)
    own = {} if tree.get("overrides") is None else tree["overrides"]
    base = resolve([start.flat(), flatten(own, f"{where} (overrides)"), parse_overrides(overrides or [])],
                   [shown_path(exp.path), f"{where} (overrides)", "command line"])
    space_tree = tree.get("space")
    if not isinstance(space_tree, dict) or not space_tree:
        raise ConfigError(f"{where}: needs a 'space' mapping keys to {{type: int|float|categorical, ...}}")
    space = tuple(_param(k, v, where, base) for k, v in flatten_space(space_tree).items())
    if "objectives" in tree:
        metrics = tree["objectives"]
        if not isinstance(metrics, list) or len(metrics) < 2:
            raise ConfigError(f"{where}: objectives must list two or more metrics, e.g. [val_bpd, epoch_seconds]")
        directions = tree.get("directions", ["minimize"] * len(metrics))
    else:
        metrics = [tree.get("metric", "val_bpd")]
        directions = [tree.get("direction", "minimize")]
    for m in metrics:
        if isinstance(m, str) and m.startswith(("test_", "best_test_")):
            raise ConfigError(f"{where}: metric={m} is a test metric; models are chosen on validation, never on "
                              f"test: use val_bpd (or best_val_bpd, val_nats)")
        _choice(m, METRICS, "metric", where)
    if not isinstance(directions, list) or len(directions) != len(metrics):
        raise ConfigError(f"{where}: directions must give one of minimize/maximize per objective")
    for d in directions:
        _choice(d, ("minimize", "maximize"), "direction", where)
    n_trials = tree.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"{where}: n_trials={shown(n_trials)} must be an integer >= 1")
    timeout = _seconds(tree, "timeout", None, 0, where)
    sampler = _options(tree.get("sampler"), "tpe", ("type", "seed"), "sampler", where)
    _choice(sampler.get("type", "tpe"), SAMPLERS, "sampler.type", where)
    pruner = _options(tree.get("pruner"), "median", ("type", "n_startup_trials", "n_warmup_steps"), "pruner", where)
    _choice(pruner.get("type", "median"), PRUNERS, "pruner.type", where)
    for block, key in ((sampler, "seed"), (pruner, "n_startup_trials"), (pruner, "n_warmup_steps")):
        v = block.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{where}: {key}={shown(v)} must be an integer >= 0")
    if sampler.get("seed", 0) > SEED_MAX:
        raise ConfigError(f"{where}: sampler.seed={sampler['seed']} is too large; it must be <= {SEED_MAX}")
    if sampler.get("type") == "grid":
        _check_grid(space, where)
    storage = tree.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise ConfigError(f"{where}: storage={shown(storage)} must be a URL such as sqlite:///optuna.db (or null)")
    heartbeat = _seconds(tree, "heartbeat", 30, 1, where)
    return Sweep(name, p, base, space, tuple(metrics), tuple(directions), n_trials, timeout, sampler, pruner,
                 storage, str(tree.get("description") or ""), heartbeat)


def _experiment_path(name: str, sweep_path: Path) -> Path:
    """`rnn_vs_cnn` -> the experiments/ folder beside the sweep's sweeps/ folder (or under
    the current folder); a path stays a path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    beside = sweep_path.resolve().parent.parent / "experiments" / f"{name}.yaml"
    return beside if beside.is_file() else Path("experiments") / f"{name}.yaml"


def flatten_space(tree: dict) -> dict:
    """`space: {model: {hidden_dims: {type: ...}}}` and `space: {model.hidden_dims: ...}`."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and "type" not in v:
            out.update({f"{k}.{kk}": vv for kk, vv in flatten_space(v).items()})
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------- Optuna

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
    try:
        return optuna.storages.RDBStorage(url, **beats)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"Optuna storage {url} cannot be opened ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); check the sweep's storage") from None


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
        if run_id and tracker.has_run(run_id) and tracker.client.get_run(run_id).info.status == "RUNNING":
            tracker.set_tags(run_id, {"optuna.state": "failed (worker died; retried)"})
            tracker.set_terminated(run_id, "KILLED")
    return trials


def counted(study) -> int:
    """Trials that use up one of the n_trials: all but the failed ones that were retried."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(1 for t in trials if t.number not in retried)


def top_up(study, n_trials: int) -> int:
    missing = max(0, n_trials - counted(study))
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def work(sweep: Sweep, store: Store, tracker, parent_id: str, deadline: float | None, echo=print) -> int:
    """Run queued trials until none is left (or the deadline passes) -> trials run. A worker takes
    queued trials only (see `pixelexp.optuna_compat`); each draws with its own seeded sampler."""
    from pixelexp.optuna_compat import claim_queued_trial, trial_object
    from pixelexp.tracking import RunLog
    states = _optuna().trial.TrialState
    parent = RunLog(tracker.client, parent_id, journal=False)  # workers share it: sent directly
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
            run_trial(sweep, store.study, trial, tracker, parent, echo)
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


def run_trial(sweep: Sweep, study, trial, tracker, parent, echo) -> None:
    """Train one trial's config in its own MLflow run, then tell the study how it ended. A
    crash or NaN fails the trial alone; an interrupt leaves it RUNNING, to be queued again."""
    optuna = _optuna()
    from pixelexp.train import run
    states = optuna.trial.TrialState
    values = {p.key: p.suggest(trial) for p in sweep.space}
    cfg = resolve([sweep.base.flat(), values], ["sweep base", f"trial {trial.number}"])
    child = tracker.start_run(f"trial-{trial.number}", parent=parent, tags={
        "pixelexp.kind": "trial", "optuna.study": sweep.name, "optuna.trial": trial.number,
        "optuna.state": "running", **({"optuna.retry_of": trial.user_attrs["retry_of"]}
                                      if "retry_of" in trial.user_attrs else {})})
    trial.set_user_attr("mlflow_run_id", child.run_id)

    def on_epoch(epoch: int, m: dict) -> None:
        if not sweep.multi:
            trial.report(m[sweep.metrics[0]], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        result = run(cfg, child, label=f"trial {trial.number}", progress=False, echo=echo, on_epoch=on_epoch)
    except optuna.TrialPruned:
        study.tell(trial, state=states.PRUNED)
        child.set_tags({"optuna.state": "pruned"})
        child.end("FINISHED")
        echo(f"[trial {trial.number}] pruned")
    except (Interrupted, KeyboardInterrupt):  # SIGTERM/SIGINT: the next `make sweep` queues it again
        child.set_tags({"optuna.state": "interrupted (queued again by the next run of the sweep)"})
        try:
            child.end("KILLED", wait=10)
        except TrackingOutage as e:
            echo(f"warning: {e}")
        raise
    except Exception as e:  # noqa: BLE001 - a crash or NaN in one trial is recorded, not fatal
        study.tell(trial, state=states.FAIL)
        child.set_tags({"optuna.state": "failed", "pixelexp.error": f"{type(e).__name__}: {e}"})
        child.end("FAILED")
        echo(f"[trial {trial.number}] failed: {type(e).__name__}: {e}")
    else:
        value = [result.metrics[m] for m in sweep.metrics]
        finite = all(math.isfinite(v) for v in value)
        study.tell(trial, (value if sweep.multi else value[0]) if finite else None, None if finite else states.FAIL)
        child.set_tags({"optuna.state": "complete" if finite else "failed"})
        child.end("FINISHED")


def _gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run_sweep(path: str | Path, overrides: list[str] | None = None, workers: int = 1,
              storage: str | None = None, report: bool = True, echo=print, n_trials: int | None = None) -> dict:
    from pixelexp import tracking
    from pixelexp.train import preflight

    overrides = list(overrides or [])
    sweep = load_sweep(path, overrides)
    sweep = sweep if n_trials is None else replace(sweep, n_trials=n_trials)
    # Bad data or a base model that cannot run stops us before any write; a trial whose
    # sizes do not fit the machine fails alone (its run says why), the others go on.
    preflight(sweep.base)
    signals.check("during start-up; nothing was written")
    url = storage_url(sweep, workers, storage)
    store = open_store(sweep, url)
    tracker = tracking.Tracker(f"sweep-{sweep.name}")
    parent_id = store.study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None or not tracker.has_run(parent_id):
        parent = tracker.start_run(f"sweep {sweep.name}", journal=False, tags={
            "pixelexp.kind": "sweep", "optuna.study": sweep.name, "optuna.storage": url,
            "pixelexp.sweep_file": str(sweep.path), **tracking.git_state()})
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
    echo(f"sweep {sweep.name}: study in {url}; {counted(store.study) - added} trials there before, {added} queued"
         + (f", {len(retried)} retried after a dead worker" if retried else "")
         + f"; MLflow parent run {parent_id}")
    deadline = None if sweep.timeout is None else time.time() + sweep.timeout
    try:
        if workers <= 1:
            work(sweep, store, tracker, parent_id, deadline, echo)
        else:
            run_workers(sweep, overrides, workers, url, parent_id, echo)
            close_dead_runs(tracker, recover(store))  # a dead worker's trial is queued again: finish here
            work(sweep, store, tracker, parent_id, deadline, echo)
    except (Interrupted, KeyboardInterrupt) as e:  # the next run of the same command goes on with the study
        try:
            tracker.set_tags(parent_id, {"pixelexp.killed_by": str(e) or type(e).__name__})
            tracker.set_terminated(parent_id, "KILLED")
        except Exception as outage:  # noqa: BLE001 - the store is away: the signal's line matters more
            echo(f"warning: the sweep's parent run {parent_id} could not be marked KILLED "
                 f"({type(outage).__name__})")
        raise
    return finish(sweep, store.study, tracker, parent_id, url, report, echo)


def run_workers(sweep: Sweep, overrides: list[str], workers: int, url: str, parent_id: str, echo) -> None:
    gpus = _gpus()
    procs = []
    for k in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)  # one worker per GPU
        # Share the CPU cores: N workers x all cores each would oversubscribe them badly.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        cmd = [sys.executable, "-m", "pixelexp", "sweep", str(sweep.path), *overrides,
               "--worker", "--storage", url, "--parent", parent_id]
        procs.append(subprocess.Popen(cmd, env=env))
    echo(f"{workers} workers started (pids {', '.join(str(p.pid) for p in procs)})")
    for p in procs:
        if p.wait() != 0:
            echo(f"worker {p.pid} ended with exit code {p.returncode}; its trial is queued again")


def worker_main(path: str, overrides: list[str], url: str, parent_id: str) -> None:
    from pixelexp import tracking
    sweep = load_sweep(path, overrides)
    deadline = None if sweep.timeout is None else time.time() + sweep.timeout
    work(sweep, open_store(sweep, url), tracking.Tracker(f"sweep-{sweep.name}"), parent_id, deadline)


def finish(sweep: Sweep, study, tracker, parent_id: str, url: str, report: bool, echo) -> dict:
    from pixelexp.tracking import RunLog
    states = _optuna().trial.TrialState
    parent = RunLog(tracker.client, parent_id, journal=False)  # workers share it: sent directly
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
        from pixelexp.report import sweep_report
        try:
            with signals.at_once():
                report_dir = sweep_report(sweep.name, study=study, multi=sweep.multi, metrics=sweep.metrics,
                                          log=parent)
        except KeyboardInterrupt:
            parent.end("KILLED")
            raise signals.interrupted(f"while writing reports/{sweep.name}/ (every trial finished; the same "
                                      f"command writes it)") from None
    parent.end("FINISHED")
    echo("")
    echo(f"study:        {sweep.name} in {url}")
    echo("trials:       " + ", ".join(f"{v} {k}" for k, v in summary.items() if v))
    if "best_value" in best:
        echo(f"best:         trial {best['best_trial']}, {sweep.metrics[0]} = {best['best_value']:.4f}, "
             f"{best['best_params']}")
    elif best:
        echo(f"Pareto front: trials {best['pareto_trials']}")
    echo(f"MLflow:       {tracker.uri}, experiment sweep-{sweep.name}, parent run {parent_id}")
    if report_dir:
        echo(f"report:       {report_dir}/report.md")
    return {"study": study, "parent_run_id": parent_id, "summary": summary, **best}


__all__ = ["Sweep", "Param", "Store", "load_sweep", "run_sweep", "open_store", "open_study", "recover", "top_up",
           "counted", "work"]
