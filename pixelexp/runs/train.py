"""`run(config)`: one run from its settings to its result. Experiments, sweeps, `train`,
`resume` and `rerun` all call it.

It seeds, loads the data, checks that the model fits in memory, builds it and hands it
to the engine's `Trainer`, with the callbacks a tracked run needs: `TrackRun` (params,
provenance, metrics, checkpoints and NaN tags to the run's MLflow run through its
journal), `SampleGrids` (sample grids as images) and, for a sweep, `EachEpoch` (Optuna's
report and pruning). Without a run log (`log=None`) nothing is tracked and no checkpoint
is written. In a distributed run only rank 0 tracks, samples and writes checkpoints.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from pixelexp.config import Config, config_from_dict
from pixelexp.data import DataSplits, load_data
from pixelexp.engine import checkpoint
from pixelexp.engine.build import (
    check_fits,
    effective_impl,
    make_model,
    pick_device,
    seed_everything,
    set_deterministic,
)
from pixelexp.engine.callbacks import (
    AfterEpoch,
    Callback,
    EachEpoch,
    SampleGrids,
)
from pixelexp.engine.distributed import broadcast
from pixelexp.engine.distributed import setup as setup_distributed
from pixelexp.engine.trainer import NonFiniteLoss, RunResult, Trainer
from pixelexp.errors import CheckpointError, ConfigError
from pixelexp.images import save_png, to_grid
from pixelexp.runs import provenance, rundir


def run(cfg: Config, log=None, *, label: str = "run", progress: bool = True,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        after_epoch: Callable[[int, dict[str, float]], None] | None = None,
        resume: checkpoint.Checkpoint | None = None) -> RunResult:
    """Train and evaluate one config. `log` is a tracking.RunLog, or None to track nothing
    (and write no checkpoints). `resume`: a checkpoint (checkpoint.load) of this run to
    continue from. `on_epoch(epoch, metrics)` is called after each epoch's evaluation (a
    sweep reports to Optuna there, and may stop the run by raising optuna.TrialPruned);
    `after_epoch(epoch, metrics)` once the epoch is over, samples drawn."""
    ctx = setup_distributed()
    device = pick_device(cfg.train.device)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if not ctx.main:  # only rank 0 tracks and talks
        log, progress, on_epoch, after_epoch = None, False, None, None
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    set_deterministic(cfg.train.deterministic)
    try:
        seed_everything(cfg.train.seed)
        data = load_data(cfg.data)
        check_fits(cfg, data.image_shape, data.levels, data.num_classes, device)  # sweep trials, resume, torchrun
        model = make_model(cfg, data.image_shape, data.levels, data.num_classes).to(device)
        callbacks: list[Callback] = []
        if log is not None:
            callbacks.append(TrackRun(log))
        if ctx.main:
            sink = None if log is None else lambda epoch, images: log_samples(log, images, data.levels, epoch)
            callbacks.append(SampleGrids(cfg.track.sample_count, cfg.track.sample_every, cfg.train.seed, sink))
        if on_epoch is not None:
            callbacks.append(EachEpoch(on_epoch))
        if after_epoch is not None:
            callbacks.append(AfterEpoch(after_epoch))
        trainer = Trainer(cfg, data, model, device=device, ctx=ctx, callbacks=callbacks, label=label,
                          progress=progress, run_id=getattr(log, "run_id", None),
                          checkpoints=log.run_dir.checkpoint_dir(cfg.train.keep_checkpoints) if log else None)
        if ctx.active:  # every rank loads the checkpoint rank 0 resumes from
            resume_path = broadcast(str(resume.path or "") if resume else None, ctx)
            if resume is None and resume_path:
                resume = checkpoint.load(resume_path, device)
        if resume is not None:
            check_resumable(cfg, resume, data)
            trainer.restore(resume)
        return trainer.fit()
    finally:
        set_deterministic(was_deterministic)


class TrackRun(Callback):
    """A run's tracking: at its start the resolved config, data summary and provenance
    (once, not again when resumed) and the hold on its folder; each epoch's metrics;
    each checkpoint as an artifact (checkpoints/last.pt, checkpoints/best.pt); and where
    a non-finite loss stopped it."""

    def __init__(self, log):
        self.log = log

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.resumed:
            log_reproducibility(self.log, trainer)
        self.log.run_dir.claim()

    def on_untrained(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.log.log_metrics(metrics, step=0)

    def on_metrics(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.log.log_metrics(metrics, step=epoch)

    def on_checkpoint(self, trainer: Trainer, path: Path, kind: str) -> None:
        if kind == "best":
            self.log.log_artifact(path, rundir.CHECKPOINTS, name=rundir.BEST)
        else:  # the newest step file, sent as checkpoints/last.pt (from the folder, not copied)
            self.log.log_artifact(path, rundir.CHECKPOINTS, name=rundir.LAST, copy=False)

    def on_nonfinite(self, trainer: Trainer, error: NonFiniteLoss) -> None:
        latest = trainer.ckpt_dir.latest() if trainer.ckpt_dir else None
        self.log.set_tags({"pixelexp.nan_step": error.step, "pixelexp.last_checkpoint": str(latest or "none")})


def log_samples(log, images: torch.Tensor, levels: int, epoch: int) -> None:
    """A sample grid twice: as MLflow's image of key `samples` at step `epoch` (the UI's
    image chart, with a slider over epochs) and as the readable `samples/epoch-005.png`."""
    grid = to_grid(images, levels)
    log.log_image(grid, key="samples", step=epoch)
    path = save_png(grid, log.run_dir.sample_file(epoch))
    log.log_artifact(path, rundir.SAMPLES, name=path.name)


def log_reproducibility(log, trainer: Trainer) -> None:
    """Everything needed to run it again: the settings compared across runs (params), the
    whole resolved config (config.yaml), data checksum (param) and location (tag), code (git
    commit and diff), packages (pip freeze), machine."""
    cfg, data, device = trainer.cfg, trainer.data, trainer.device
    summary = data.summary()
    where = {"data_location": summary.pop("data_location")}  # a path of this machine
    log.log_params({**cfg.compared(), **summary, "n_parameters": trainer.n_parameters})
    git = provenance.git_state()
    log.set_tags({**where, "data_source": data.source, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch_version": str(torch.__version__), "pixelexp.model": cfg.model.name,
                  "python_version": platform.python_version(), "host": platform.node(), **git})
    log.set_tags({"pixelexp.fast_paths": trainer.paths.describe(), "pixelexp.impl": effective_impl(cfg, device)})
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    log.run_dir.path.mkdir(parents=True, exist_ok=True)
    log.run_dir.config.write_text(text)
    log.log_text(text, rundir.CONFIG)
    log.log_text(provenance.pip_freeze(), "environment/requirements.txt")
    if git.get("git_dirty") == "true":
        log.log_text(provenance.git_diff(), "environment/git.diff")


def preflight(cfg: Config) -> None:
    """Everything a run needs, checked before anything is written (an MLflow run, a
    folder): the device, the data (found or fetched, and sane) and the model."""
    device = pick_device(cfg.train.device)
    data = load_data(cfg.data)
    check_fits(cfg, data.image_shape, data.levels, data.num_classes, device)  # builds it on the meta device


def time_epoch(cfg: Config, steps: int = 3) -> float:
    """Seconds one epoch of `cfg` should take on this machine (training and evaluation),
    from a few training steps of a throwaway model; nothing is tracked or written."""
    device = pick_device(cfg.train.device)
    data = load_data(cfg.data)
    model = make_model(cfg, data.image_shape, data.levels, data.num_classes).to(device)
    return Trainer(cfg, data, model, device=device, progress=False).time_epoch(steps)


def check_resumable(cfg: Config, ckpt: checkpoint.Checkpoint, data: DataSplits) -> None:
    """A checkpoint continues a run only with the same model, data and seeds."""
    where = ckpt.where
    saved = checkpoint_config(ckpt)
    fixed = [k for k, v in cfg.flat().items()
             if k.split(".")[0] in ("data", "model") or k in ("train.seed", "train.optimizer", "train.batch_size")]
    differ = [f"{k}: {saved.flat()[k]!r} in the checkpoint, {cfg.flat()[k]!r} now" for k in fixed
              if saved.flat()[k] != cfg.flat()[k]]
    if differ:
        raise CheckpointError(f"{where} does not match this run's config ({'; '.join(differ[:3])}); "
                              f"resume it with its own config, or start a new run with `rerun`")
    if ckpt.data_checksum != data.checksum:
        raise CheckpointError(f"{where}: the data changed since the checkpoint was written (checksum "
                              f"{str(ckpt.data_checksum)[:12]} then, {data.checksum[:12]} now); "
                              f"restore the data files, or start a new run with `rerun`")


def checkpoint_config(ckpt: checkpoint.Checkpoint) -> Config:
    """The config a checkpoint was written with, checked as a config file's is."""
    try:
        return config_from_dict(ckpt.config, f"{ckpt.where} (config)")
    except ConfigError as e:
        raise CheckpointError(f"{e}; the checkpoint was written by another pixelexp version") from None

