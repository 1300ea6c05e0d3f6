"""Settings of one run: frozen dataclasses, their checks, dotted overrides.

A run's settings come in layers, each a flat dict of dotted keys ("train.lr"):
the dataclass defaults, an experiment file's `base`, one of its `variants`, then
command-line overrides such as `train.lr=3e-4`. Every key is checked against the
dataclasses below; a bad one stops everything before any run starts, with one line
that names where it came from, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelexp.errors import ConfigError


def opt(default, *, help: str, choices: tuple | Callable[[], tuple] | None = None,
        min: float | None = None, max: float | None = None, min_exclusive: bool = False):
    """A setting with its help text and the values it allows."""
    meta = dict(help=help, choices=choices, min=min, max=max, min_exclusive=min_exclusive)
    return field(default=default, metadata=meta)


SHOWN_CHARS = 60


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value) cut to `limit` characters: a user's value quoted in a one-line error stays
    readable however long it is (a 1 MB string, a huge list)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown_path(path: Any) -> str:
    """A file's path as errors name it: as typed when short and printable, else cut like `shown`,
    so a path with a newline or of 5,000 characters still gives one readable line."""
    text = str(path)
    return text if text.isprintable() and len(text) <= 200 else shown(text, 200)


NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"


def check_name(name: Any, what: str, where: str) -> str:
    """`name` if it is safe as a folder name, a file name and an MLflow experiment name.

    Experiment, variant and sweep names become reports/<name>/, samples_<variant>.png,
    optuna/<name>.journal: a '/', '..', a space or a newline there would write outside
    those folders or break the file names."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise ConfigError(f"{where}: {what} {shown(name)} is not a safe name; it must match {NAME_PATTERN} "
                          f"and have no '..' (it names folders and files)")
    return name


def did_you_mean(value: Any, options, cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when none is close."""
    near = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=cutoff)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _dataset_names() -> tuple:
    from pixelexp.data import DATASETS
    return tuple(DATASETS)


def _model_names() -> tuple:
    from pixelexp.models import MODELS
    return tuple(MODELS)


VAL_CAP = 5000  # the default validation split's largest size


@dataclass(frozen=True)
class DataConfig:
    name: str = opt("mnist", help="dataset", choices=_dataset_names)
    root: str | None = opt(None, help="folder with the data files (default: $PIXELEXP_DATA or data/)")
    binarize: str = opt("fixed", help="how 2-level data is made from 8-bit pixels",
                        choices=("fixed", "dynamic", "threshold", "none"))
    levels: int = opt(2, help="values per subpixel (2: binary, 256: 8-bit)", min=2, max=256)
    train_limit: int | None = opt(None, help="use at most this many training images", min=1)
    val_size: int | None = opt(None, help="images carved from train for validation (default: 10% of the "
                                          "train split, at most 5,000)", min=0)
    test_limit: int | None = opt(None, help="use at most this many test images", min=1)
    seed: int = opt(0, help="seed of the validation split and of fixed binarization", min=0)

    def resolved_val_size(self, n_train: int) -> int:
        """Validation images out of a train split of n_train: data.val_size, or by default
        10% of it, at most 5,000 (MNIST: 5,000 of 60,000; the mnist-10k subset: 800 of
        8,000), so that most of every source is left to train on."""
        return self.val_size if self.val_size is not None else min(VAL_CAP, n_train // 10)

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get("PIXELEXP_DATA") or "data")


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt("pixel_rnn", help="model", choices=_model_names)
    hidden_dims: int = opt(16, help="features per layer (h)", min=1)
    recurrent_length: int = opt(7, help="number of masked / LSTM layers", min=1)
    out_hidden_dims: int = opt(32, help="features of the 1x1 output layers", min=1)
    out_recurrent_length: int = opt(2, help="number of ReLU + 1x1 output layers", min=0)
    use_residual: bool = opt(True, help="residual connections around each layer")
    use_skip: bool = opt(False, help="skip connections: every layer's output reaches the output layers")
    conditional: bool = opt(False, help="condition on the class label (gated_pixel_cnn)")
    scale_stride: int = opt(2, help="multiscale_pixel_rnn: the small image is every n-th row and column", min=2)
    impl: str = opt("fast", help="recurrent layers: the fast scan, the plain reference loop (same function), or "
                                 "triton: the Diagonal BiLSTM's scan as Triton kernels (pixel_rnn, "
                                 "multiscale_pixel_rnn; hidden_dims a power of two >= 16; on CUDA, else the fast "
                                 "scan with a warning)", choices=("fast", "plain", "triton"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(10, help="passes over the training set", min=1)
    batch_size: int = opt(100, help="training batch size", min=1)
    eval_batch_size: int = opt(500, help="batch size for val/test evaluation", min=1)
    lr: float = opt(1e-3, help="learning rate", min=0.0, min_exclusive=True)
    optimizer: str = opt("rmsprop", help="optimizer", choices=("rmsprop", "adam"))
    grad_clip: float = opt(1.0, help="clip the gradient norm to this (0: no clipping)", min=0.0)
    seed: int = opt(0, help="seed of weights, data order and sampling", min=0, max=2**32 - 1)  # NumPy's limit
    device: str = opt("auto", help="where to train", choices=("auto", "cpu", "cuda"))
    lr_decay: float = opt(1.0, help="multiply the learning rate by this after each epoch", min=0.0,
                          max=1.0, min_exclusive=True)
    checkpoint_minutes: float = opt(30.0, help="also checkpoint every N minutes within an epoch (0: only at "
                                               "epoch ends)", min=0.0)
    keep_checkpoints: int = opt(2, help="checkpoints kept in runs/<run id>/checkpoints", min=1)
    deterministic: bool = opt(False, help="deterministic algorithms only (exact resume and reruns on GPUs too)")
    precision: str = opt("auto", help="fp32, or bf16 autocast (auto: bf16 on CUDA devices that have it)",
                         choices=("auto", "fp32", "bf16"))
    compile: str = opt("auto", help="torch.compile the model (auto: on for CUDA; falls back to eager with a "
                                    "warning)", choices=("auto", "on", "off"))
    channels_last: str = opt("auto", help="channels-last memory format (auto: on for CUDA)",
                             choices=("auto", "on", "off"))
    cuda_graphs: str = opt("auto", help="replay forward and backward of full batches as a CUDA graph (auto: on "
                                        "for CUDA without DDP; falls back with a warning)",
                           choices=("auto", "on", "off"))
    nan_policy: str = opt("stop", help="on a non-finite loss or gradient: stop (run FAILED) or skip_batch",
                          choices=("stop", "skip_batch"))


@dataclass(frozen=True)
class TrackConfig:
    sample_every: int = opt(5, help="log a sample grid every N epochs (0: only at the end)", min=0)
    sample_count: int = opt(64, help="images in each sample grid (0: no samples)", min=0, max=1024)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"train.lr": 0.001, ...}: the form MLflow params take."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def compared(self) -> dict[str, Any]:
        """The settings that shape a run's numbers (model, data, optimizer, seeds, precision):
        its MLflow params, the columns a comparison of runs reads. Settings of how it runs
        (device, checkpoints, fast paths, samples) are left to its config.yaml."""
        return {k: v for k, v in self.flat().items() if k not in HOW_IT_RUNS}

    def replace(self, **dotted: Any) -> Config:
        """A copy with some dotted keys changed (checked like any other layer)."""
        return resolve([self.flat(), dotted], ["defaults", "replace()"])


HOW_IT_RUNS = frozenset({
    "data.root", "model.impl", "train.device", "train.eval_batch_size", "train.checkpoint_minutes",
    "train.keep_checkpoints", "train.deterministic", "train.compile", "train.channels_last", "train.cuda_graphs",
    "track.sample_every", "track.sample_count"})  # same numbers whatever their values (to rounding)

SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def known_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _field(key: str) -> dataclasses.Field:
    section, name = key.split(".", 1)
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]


# ---------------------------------------------------------------------------- parsing

def flatten(tree: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} and {"train.lr": 1} both give {"train.lr": 1}.

    Settings are two levels deep (section.key): a mapping under a known key stays its
    value (and fails as the wrong type), and one under an unknown dotted key fails at
    once instead of being walked to its bottom."""
    if not isinstance(tree, dict):
        under = f" under {shown(prefix.rstrip('.'))}" if prefix else ""
        raise ConfigError(f"{where}: expected a mapping of settings{under}, got {type(tree).__name__}")
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in key:
            out.update(flatten(v, where, key + "."))
            continue
        if isinstance(v, dict):
            check_key(key, where)  # a known key: its value is this mapping (refused by _coerce)
        out[key] = v
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """["train.lr=3e-4", "model.use_residual=false"] -> {"train.lr": "3e-4", ...}.

    Values stay strings here; `resolve` converts them to each key's type.
    """
    out = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: expected KEY=VALUE, got {shown(a)} "
                              f"(for example train.lr=3e-4)")
        out[key.strip()] = value.strip()
    return out


def _type_of(key: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a key's annotation."""
    hints = typing.get_type_hints(SECTIONS[key.split(".")[0]])
    t = hints[key.split(".", 1)[1]]
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return next(a for a in args if a is not type(None)), type(None) in args
    return t, False


_NULLS = {"none", "null", "~", ""}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def _coerce(key: str, value: Any, where: str) -> Any:
    base, nullable = _type_of(key)
    bad = lambda what: ConfigError(f"{where}: {key}={shown(value)} is {what}")
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in _NULLS):
        if nullable:
            return None
        raise bad(f"not allowed to be empty; give a {base.__name__}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise bad("not a boolean; use true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise bad("not an integer" + (" (null is allowed)" if nullable else ""))
    if base is float:
        return finite(key, value, where, bad)
    if base is str:
        if isinstance(value, str):
            return value
        raise bad("not a string")
    raise AssertionError(f"unhandled type {base} for {key}")


def finite(key: str, value: Any, where: str, bad: Callable[[str], ConfigError]) -> float:
    """A float setting's value: a number, and a finite one (nan or inf as a learning rate
    or a clip would pass every range check and ruin the run much later)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad("not a number")
    try:
        number = float(value)
    except ValueError:
        raise bad("not a number") from None
    except OverflowError:  # an integer beyond a float's range
        raise bad("not a finite number; give a finite value") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {key}={number!r} is not a finite number; give a finite value")
    return number


def _check_range(key: str, value: Any, where: str) -> None:
    meta = _field(key).metadata
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {key}={shown(value)} is not allowed{did_you_mean(value, choices)}; "
                          f"choose one of: {', '.join(map(str, choices))}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: {key}={shown(value)} is out of range; it must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {key}={shown(value)} is out of range; it must be <= {hi}")


def check_key(key: Any, where: str) -> None:
    """Refuse a key that is not a setting, naming the closest and the known ones."""
    known = known_keys()
    if key in known:
        return
    hint = did_you_mean(key, known, cutoff=0.5)
    section = str(key).split(".")[0]
    if section in SECTIONS:
        allowed = ", ".join(k for k in known if k.startswith(section + "."))
    else:
        allowed = "sections " + ", ".join(SECTIONS)
    raise ConfigError(f"{where}: unknown key {shown(key)}{hint}; known: {allowed}")


def resolve(layers: list[dict[str, Any]], wheres: list[str]) -> Config:
    """Merge flat layers (later wins) into a checked, frozen Config."""
    values: dict[str, Any] = {}
    for layer, where in zip(layers, wheres):
        for key, raw in layer.items():
            check_key(key, where)
            value = _coerce(key, raw, where)
            _check_range(key, value, where)
            values[key] = (value, where)
    sections = {s: {} for s in SECTIONS}
    for key, (value, _) in values.items():
        s, name = key.split(".", 1)
        sections[s][name] = value
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})
    _check_consistency(cfg, {k: w for k, (_, w) in values.items()})
    return cfg


def _check_consistency(cfg: Config, where: dict[str, str]) -> None:
    """Rules that tie two keys together."""
    if cfg.model.conditional:
        from pixelexp.models import MODELS
        if not _accepts(MODELS.get(cfg.model.name), "conditional"):
            w = where.get("model.conditional", "defaults")
            conditional = [n for n, m in MODELS.items() if _accepts(m, "conditional")]
            raise ConfigError(f"{w}: model.conditional=true but {cfg.model.name} is not class-conditional; "
                              f"use model.name={' or '.join(conditional)}, or model.conditional=false")
    if cfg.model.impl == "triton":
        from pixelexp.models import MODELS
        from pixelexp.nn.kernels.triton_scan import fits
        w = where.get("model.impl", "defaults")
        if not MODELS[cfg.model.name].diagonal_scan:
            scans = sorted({n for n, m in MODELS.items() if m.diagonal_scan})
            raise ConfigError(f"{w}: model.impl=triton replaces the Diagonal BiLSTM's scan, which "
                              f"{cfg.model.name} has none of; use model.impl=fast, or model.name={' or '.join(scans)}")
        if not fits(cfg.model.hidden_dims):
            raise ConfigError(f"{w}: model.impl=triton needs model.hidden_dims a power of two >= 16 (16, 32, 64, ...), "
                              f"got {cfg.model.hidden_dims}; change it or use model.impl=fast")
    d = cfg.data
    w = where.get("data.binarize", where.get("data.levels", "defaults"))
    if d.levels == 2 and d.binarize == "none":
        raise ConfigError(f"{w}: data.binarize=none needs data.levels>2 (8-bit data: data.levels=256); "
                          f"for 2 levels choose data.binarize fixed, dynamic or threshold")
    if d.levels > 2 and d.binarize != "none":
        raise ConfigError(f"{w}: data.binarize={d.binarize} makes 2-level data but data.levels={d.levels}; "
                          f"set data.binarize=none for {d.levels} levels, or data.levels=2")


def _accepts(cls, name: str) -> bool:
    import inspect
    return cls is not None and name in inspect.signature(cls.__init__).parameters

