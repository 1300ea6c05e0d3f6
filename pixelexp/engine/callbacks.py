"""Hooks into `Trainer.fit` (`Callback`), and the two the engine itself offers: sample
grids at the end of epochs (`SampleGrids`) and a function called with each epoch's
metrics (`EachEpoch`, where a sweep reports to Optuna). Tracking is a callback too
(`pixelexp.runs.train.TrackRun`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelexp.console import log
from pixelexp.engine import fast, signals
from pixelexp.models import AutoregressiveModel

if TYPE_CHECKING:
    from pixelexp.engine.trainer import NonFiniteLoss, Trainer


class Callback:
    """A hook into `Trainer.fit`; each method does nothing unless overridden, and the
    trainer calls its callbacks in the order given."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first batch (after `restore`: then `trainer.resumed`)."""

    def on_untrained(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """At the start of a new run (not a resumed one): the untrained model's validation
        metrics, as step 0 of the curves (`elapsed_hours` 0)."""

    def on_metrics(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """Once per epoch, after its evaluation. May end the run by raising (a pruned trial)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After `on_metrics`, and again for an epoch that was resumed after its evaluation.
        A KeyboardInterrupt raised here ends the run with a checkpoint."""

    def on_checkpoint(self, trainer: Trainer, path: Path, kind: str) -> None:
        """After rank 0 wrote a checkpoint: kind "last" (the newest) or "best" (chosen on validation)."""

    def on_nonfinite(self, trainer: Trainer, error: NonFiniteLoss) -> None:
        """A non-finite loss or gradient is ending the run."""


def draw_samples(model: AutoregressiveModel, n: int, seed: int, device, num_classes: int | None = None,
                 graphs: fast.SamplerGraphs | None = None) -> torch.Tensor:
    """n samples with a fixed seed, so grids of different epochs share their noise.
    A conditional model draws the classes in turn (0, 1, ..., 0, 1, ...). With `graphs`
    (the trainer's, on a CUDA device) the sampler is replayed as a CUDA graph."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(n, device=device) % (num_classes or 10) if model.conditional else None
    return fast.sample(model, n, generator=g, device=device, labels=labels, graphs=graphs)


class SampleGrids(Callback):
    """Draws `count` samples at the end of every `every`-th epoch and of the last one
    (rank 0 only), keeps the last in `trainer.samples` and hands each to
    `sink(epoch, images)` (a tracker's image log)."""

    def __init__(self, count: int, every: int, seed: int,
                 sink: Callable[[int, torch.Tensor], None] | None = None):
        self.count, self.every, self.seed, self.sink = count, every, seed, sink

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        last = epoch == trainer.cfg.train.epochs
        if not self.count or not (last or (self.every and epoch % self.every == 0)):
            return
        t0 = time.perf_counter()
        # One process: a signal stops the sampling at once (the samplers have no checks
        # inside); resuming draws them again. Not with DDP (the other ranks wait at the
        # barrier) nor within a CUDA graph's capture or replay (seconds at most).
        at_once = not trainer.ctx.active and trainer.sampler_graphs is None
        with signals.at_once() if at_once else contextlib.nullcontext():
            images = trainer.samples = draw_samples(trainer.model, self.count, self.seed, trainer.device,
                                                    trainer.data.num_classes, graphs=trainer.sampler_graphs)
        if self.sink is not None:
            self.sink(epoch, images)
        log.info(f"[{trainer.label}] {self.count} samples in {time.perf_counter() - t0:.1f} s")


class EachEpoch(Callback):
    """`fn(epoch, metrics)` after each epoch's evaluation (a sweep reports to Optuna
    there, and may end the trial by raising optuna.TrialPruned)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_metrics(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.fn(epoch, metrics)


class AfterEpoch(Callback):
    """`fn(epoch, metrics)` once an epoch is over: trained, evaluated, tracked and sampled
    (an experiment's whole-study progress line)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.fn(epoch, metrics)
