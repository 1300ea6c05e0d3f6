"""A sweep file (sweeps/<name>.yaml): the experiment file (and variant) it starts from,
its own overrides, the search space, the metric(s) and direction(s), `n_trials`,
`timeout`, the sampler, the pruner and the storage, each key checked:

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
    slurm: {partition: gpu, gpus: 1} # LAUNCHER=slurm: each worker's job (pixelexp.studies.slurm)
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from pixelexp.errors import ConfigError
from pixelexp.studies.slurm import SlurmOptions, slurm_options, split_overrides

SWEEP_KEYS = ("description", "experiment", "variant", "overrides", "space", "metric", "direction",
              "objectives", "directions", "n_trials", "timeout", "sampler", "pruner", "storage", "heartbeat", "slurm")
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
    slurm: SlurmOptions = SlurmOptions()  # for LAUNCHER=slurm: the slurm: block, then slurm.<key>= overrides

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
    overrides, slurm_overrides = split_overrides(list(overrides or []))
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
    slurm = slurm_options(tree.get("slurm"), slurm_overrides, where)
    return Sweep(name, p, base, space, tuple(metrics), tuple(directions), n_trials, timeout, sampler, pruner,
                 storage, str(tree.get("description") or ""), heartbeat, slurm)


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
