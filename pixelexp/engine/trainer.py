"""The training loop, in one place: `Trainer(cfg, data, model).fit()` trains and
evaluates epoch after epoch, writes checkpoints, and calls its callbacks; it knows
nothing of tracking stores, run folders or studies (those are callbacks, given by
`pixelexp.runs.train.run`).

    trainer = Trainer(cfg, data, model, device=device, callbacks=[SampleGrids(...), ...])
    trainer.restore(checkpoint)          # optional: continue a killed run
    result = trainer.fit()

An epoch: train over the shuffled training set (loss: bits/dim of the batch), evaluate
validation and test in fp32 (`metrics.evaluate`), call `on_metrics` (tracking, the
progress line, Optuna's pruning), then `on_epoch_end` (sample grids), then write a
checkpoint. A checkpoint is also written every `train.checkpoint_minutes` and when
SIGINT/SIGTERM arrives (after the batch in flight); with `train.deterministic`, a run
killed at any moment and restored computes exactly what an uninterrupted run computes.
A non-finite loss or gradient stops the run (`train.nan_policy: stop`) or skips that
update (`skip_batch`, counted in `skipped_batches`).

Per epoch the metrics are train_bpd (the mean over the epoch's batches), val_bpd,
test_bpd, [train|val|test]_nats for 2 levels, epoch_seconds (training and evaluation),
elapsed_hours (the sum of epoch_seconds: sampling and logging are not counted, so models
compare by their own cost), lr and images_per_second (training), and the selection on
validation (best_epoch, best_val_bpd, best_test_bpd, ...).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from pixelexp.config import Config
from pixelexp.console import log
from pixelexp.data import DataSplits
from pixelexp.engine import checkpoint, fast, signals
from pixelexp.engine.build import make_optimizer, make_scheduler
from pixelexp.engine.callbacks import Callback
from pixelexp.engine.distributed import Dist, all_sum, barrier
from pixelexp.engine.distributed import wrap as wrap_ddp
from pixelexp.engine.metrics import LN2, StopEval, bits_per_dim, evaluate, selected
from pixelexp.errors import Interrupted
from pixelexp.models import AutoregressiveModel, count_parameters


@dataclass
class Position:
    """Where training stands; saved in every checkpoint."""
    epoch: int = 1  # the epoch in progress
    batch: int = 0  # its batches done
    step: int = 0  # batches done in all epochs (optimizer steps, plus skipped ones)
    nats: float = 0.0  # this epoch's training nats so far (summed over ranks)
    seen: int = 0  # images in that sum
    skipped: int = 0  # batches skipped for a non-finite loss or gradient (whole run)
    train_seconds: float = 0.0  # this epoch's training time so far
    elapsed: float = 0.0  # training + evaluation seconds of the finished epochs
    trained: bool = False  # this epoch's training pass is done
    evaluated: bool = False  # and its evaluation (metrics logged); its samples are not
    history: list = field(default_factory=list)  # metrics of the finished epochs


@dataclass
class RunResult:
    metrics: dict[str, float]  # the last epoch's, with the chosen epoch's best_* beside them
    history: list[dict[str, float]] = field(default_factory=list)
    n_parameters: int = 0
    model: AutoregressiveModel | None = None
    samples: torch.Tensor | None = None  # the last sample grid drawn
    checkpoint: Path | None = None  # the last one written


class NonFiniteLoss(FloatingPointError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def epoch_generator(cfg: Config, epoch: int) -> torch.Generator:
    """The generator of one epoch's data order (and dynamic binarization)."""
    return torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)


class Trainer:
    """One run's model, optimizer, schedule and position; `fit` trains it. The optimizer,
    the schedule and the fast paths follow `cfg.train`; `checkpoints` (rank 0's folder, or
    None to write none) keeps the newest ones and the best; `run_id` is recorded in them."""

    def __init__(self, cfg: Config, data: DataSplits, model: AutoregressiveModel, *, device: torch.device,
                 ctx: Dist = Dist(), checkpoints: checkpoint.CheckpointDir | None = None, run_id: str | None = None,
                 callbacks: Sequence[Callback] = (), label: str = "run", progress: bool = True):
        self.cfg, self.data, self.model, self.device, self.ctx = cfg, data, model, device, ctx
        self.ckpt_dir = checkpoints if ctx.main else None
        self.run_id, self.callbacks, self.label, self.progress = run_id, list(callbacks), label, progress
        self.optimizer = make_optimizer(cfg, model)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        t = cfg.train
        self.paths = fast.resolve(t.precision, t.compile, t.channels_last, device, t.cuda_graphs,
                                  distributed=ctx.active)
        self.net = fast.apply(model, wrap_ddp(model, ctx, device), self.paths)
        # forward + backward of a full batch, maybe as a CUDA graph; the same for evaluation and sampling
        self.grad_step = fast.GradStep(self.net, model, self.paths, device, batch_size=t.batch_size)
        self.eval_step = fast.EvalStep(model, self.paths, device, batch_size=t.eval_batch_size)
        self.sampler_graphs = fast.SamplerGraphs() if self.paths.graphs else None
        self.n_parameters = count_parameters(model)
        self.pos = Position()
        self.resumed = False  # restored from a checkpoint
        self.gen: torch.Generator | None = None  # the data generator of the epoch in progress
        self.data_rng: torch.Tensor | None = None  # its state to resume within an epoch
        self.last_checkpoint = time.monotonic()
        self.written: Path | None = None
        self.samples: torch.Tensor | None = None  # the last grid a callback drew

    # ------------------------------------------------------------------ the fit

    def fit(self) -> RunResult:
        """Train from self.pos to the end of `train.epochs` -> the result of the run."""
        result = RunResult(metrics=dict(self.pos.history[-1]) if self.pos.history else {},
                           history=self.pos.history, n_parameters=self.n_parameters, model=self.model)
        result.metrics.pop("epoch", None)
        self._call("on_fit_start")
        log.info(self.describe())
        if signals.requested() is not None:  # a signal between two runs of an experiment
            raise self.interrupt()
        if not self.resumed and len(self.data.val):
            self._call("on_untrained", self.evaluate_untrained())
        try:
            while self.pos.epoch <= self.cfg.train.epochs:
                result.metrics = self.run_epoch()
        except NonFiniteLoss as e:
            self._call("on_nonfinite", e)
            raise
        result.samples = self.samples
        result.checkpoint = self.written
        return result

    def run_epoch(self) -> dict[str, float]:
        """Finish the epoch in progress: train, evaluate, call back, checkpoint -> its metrics."""
        epoch, last = self.pos.epoch, self.pos.epoch == self.cfg.train.epochs
        if not self.pos.trained:
            self.train_epoch()
        if self.pos.evaluated:  # resumed after this epoch's evaluation, in its sampling
            m = {k: v for k, v in self.pos.history[-1].items() if k != "epoch"}
            m.update(selected(self.pos.history))
        else:
            m = self.evaluate_epoch()
            m.update(selected(self.pos.history))
            if m["best_epoch"] == epoch:
                self.save_best()
            try:  # the line after the metrics are tracked, as a run's log reads it
                self._call("on_metrics", epoch, m)
            finally:
                log.info(self.progress_line(epoch, m))
            self.pos.evaluated = True
        try:
            self._call("on_epoch_end", epoch, m)
        except KeyboardInterrupt:
            raise self.interrupt() from None
        barrier(self.ctx)  # the other ranks wait while rank 0 samples
        self.next_epoch()
        self.save(final=last)
        return m

    def describe(self) -> str:
        data, p = self.data, self.pos
        done = "" if not self.resumed else f"; resuming at epoch {p.epoch}, batch {p.batch} (step {p.step})"
        return (f"[{self.label}] {self.cfg.model.name}: {self.n_parameters:,} parameters; data {data.source} "
                f"({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {data.levels} levels); "
                f"device {self.device} ({self.paths.describe()}){done}")

    def progress_line(self, epoch: int, m: dict[str, float]) -> str:
        nats = f" ({m['test_nats']:.2f} nats)" if self.data.levels == 2 else ""
        return (f"[{self.label}] epoch {epoch}/{self.cfg.train.epochs}  bits/dim train {m['train_bpd']:.4f}  "
                f"val {m['val_bpd']:.4f}  test {m['test_bpd']:.4f}{nats}  "
                f"{m['images_per_second']:.0f} img/s  {m['epoch_seconds']:.1f} s")

    def _call(self, hook: str, *args) -> None:
        for c in self.callbacks:
            getattr(c, hook)(self, *args)

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self) -> None:
        """Train from self.pos to the end of epoch self.pos.epoch."""
        cfg, data, ctx, pos = self.cfg, self.data, self.ctx, self.pos
        self.net.train()
        dims = math.prod(data.image_shape)
        g = self.gen = epoch_generator(cfg, pos.epoch)
        order = torch.randperm(len(data.train), generator=g)
        if pos.batch and self.data_rng is not None:  # resuming within this epoch
            g.set_state(self.data_rng)
        self.data_rng = None
        bs = cfg.train.batch_size
        bar = tqdm(total=len(order), initial=min(pos.batch * bs, len(order)), desc=f"{self.label} epoch {pos.epoch}",
                   unit="img", leave=False, disable=not (self.progress and ctx.main and sys.stderr.isatty()),
                   file=sys.stderr, dynamic_ncols=True)  # no bars in a redirected log
        t0, seconds0 = time.perf_counter(), pos.train_seconds
        for k in range(pos.batch * bs, len(order), bs):
            batch = order[k:k + bs]
            idx = batch[ctx.rank::ctx.world]  # this rank's slice of the global batch
            x = data.train_batch(idx, g).to(self.device, non_blocking=True)
            y = data.train_labels[idx].to(self.device) if self.model.conditional else None
            # Loss: bits/dim of the global batch; DDP averages gradients over ranks, hence * world.
            nats = self.grad_step(x, y, ctx.world / (len(batch) * dims * LN2))  # (b,) nats per image
            self.update(nats.detach().sum().item(), len(idx))
            pos.train_seconds = seconds0 + time.perf_counter() - t0
            bar.update(len(batch))
            bar.set_postfix(bpd=f"{bits_per_dim(pos.nats / max(pos.seen, 1), dims):.4f}")
            due, stop = self._flags()
            if stop:
                bar.close()
                raise self.interrupt()
            if due:
                self.save()
        bar.close()
        pos.trained = True

    def update(self, batch_nats: float, images: int) -> None:
        """Clip the gradients and step the optimizer, unless the loss or gradient is not
        finite: then skip the batch or stop, as train.nan_policy says."""
        t, pos = self.cfg.train, self.pos
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        pos.step += 1
        pos.batch += 1
        if math.isfinite(batch_nats) and math.isfinite(grad_norm):
            self.optimizer.step()
            pos.nats += batch_nats
            pos.seen += images
        elif t.nan_policy == "skip_batch":
            self.optimizer.zero_grad(set_to_none=True)
            pos.skipped += 1
        else:
            raise NonFiniteLoss(
                f"non-finite {'loss' if not math.isfinite(batch_nats) else 'gradient'} at step {pos.step} "
                f"(epoch {pos.epoch}, batch {pos.batch}); the last good checkpoint is kept; try a lower "
                f"train.lr, train.grad_clip, or train.nan_policy=skip_batch", pos.step)

    def evaluate_epoch(self) -> dict[str, float]:
        """Evaluate the epoch just trained -> its metrics (added to the history)."""
        cfg, data, pos = self.cfg, self.data, self.pos
        dims = math.prod(data.image_shape)
        t0 = time.perf_counter()
        bs = cfg.train.eval_batch_size
        # A signal abandons the evaluation (one process only: ranks evaluate different numbers of batches).
        stop = (lambda: False) if self.ctx.active else (lambda: signals.requested() is not None)
        try:
            val = evaluate(self.model, data.val, bs, self.device, data.val_labels, self.ctx, stop,
                           self.eval_step) if len(data.val) else float("nan")
            test = evaluate(self.model, data.test, bs, self.device, data.test_labels, self.ctx, stop, self.eval_step)
        except StopEval:
            raise self.interrupt() from None
        nats, seen = all_sum([pos.nats, pos.seen], self.ctx, self.device)
        train = nats / seen if seen else float("nan")
        epoch_s = pos.train_seconds + time.perf_counter() - t0
        m = {"train_bpd": bits_per_dim(train, dims), "val_bpd": bits_per_dim(val, dims),
             "test_bpd": bits_per_dim(test, dims)}
        if data.levels == 2:
            m.update(train_nats=train, val_nats=val, test_nats=test)
        m.update(epoch_seconds=epoch_s, elapsed_hours=(pos.elapsed + epoch_s) / 3600.0,
                 lr=self.optimizer.param_groups[0]["lr"],
                 images_per_second=len(data.train) / max(pos.train_seconds, 1e-9))
        if cfg.train.nan_policy == "skip_batch":
            m["skipped_batches"] = float(pos.skipped)
        pos.history.append({"epoch": pos.epoch, **m})
        pos.elapsed += epoch_s
        return m

    def time_epoch(self, steps: int = 3) -> float:
        """Seconds an epoch should take here (training and evaluation), from `steps` training
        steps on the first batch after one to warm up. They train this trainer's model:
        use it on a throwaway one."""
        data, bs = self.data, self.cfg.train.batch_size
        idx = torch.arange(min(bs, len(data.train)))
        x = data.train_batch(idx, torch.Generator().manual_seed(0)).to(self.device)
        y = data.train_labels[idx].to(self.device) if self.model.conditional else None
        scale = 1.0 / (len(idx) * math.prod(data.image_shape) * LN2)
        self.net.train()
        seconds = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            nats = self.grad_step(x, y, scale)
            self.update(nats.detach().sum().item(), len(idx))  # .item(): the step has finished
            seconds.append(time.perf_counter() - t0)
        step = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median, after the warm-up
        evaluation = (len(data.val) + len(data.test)) / len(idx) * step / 3  # a forward is ~1/3 of a step
        return math.ceil(len(data.train) / bs) * step + evaluation

    def evaluate_untrained(self) -> dict[str, float]:
        """The validation NLL before the first step: where the by-epoch and by-hour curves
        start (step 0, `elapsed_hours` 0). Its time is not counted in `elapsed_hours`."""
        data = self.data
        stop = (lambda: False) if self.ctx.active else (lambda: signals.requested() is not None)
        try:
            val = evaluate(self.model, data.val, self.cfg.train.eval_batch_size, self.device, data.val_labels,
                           self.ctx, stop, self.eval_step)
        except StopEval:
            raise self.interrupt() from None
        m = {"val_bpd": bits_per_dim(val, math.prod(data.image_shape)), "elapsed_hours": 0.0}
        if data.levels == 2:
            m["val_nats"] = val
        log.info(f"[{self.label}] epoch 0/{self.cfg.train.epochs}  bits/dim val {m['val_bpd']:.4f} (untrained)")
        return m

    def next_epoch(self) -> None:
        self.scheduler.step()
        p = self.pos
        self.pos = Position(epoch=p.epoch + 1, step=p.step, skipped=p.skipped, elapsed=p.elapsed,
                            history=p.history)
        self.gen = None

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            config=self.cfg.to_dict(), image_shape=list(self.data.image_shape),
            levels=self.data.levels, num_classes=self.data.num_classes,
            data_checksum=self.data.checksum, run_id=self.run_id,
            epoch=len(self.pos.history),  # epochs finished
            metrics=self.pos.history[-1] if self.pos.history else {},
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), train_state=dict(vars(self.pos)),
            data_rng=self.gen.get_state() if self.gen is not None and self.pos.batch else None,
            rng=checkpoint.pack_rng(checkpoint.rng_state()), torch_version=str(torch.__version__))

    def save(self, final: bool = False) -> Path | None:
        """Rank 0 writes checkpoints/step-N.pt (on_checkpoint: "last")."""
        self.last_checkpoint = time.monotonic()
        if self.ckpt_dir is None:
            return None
        self.written = self.ckpt_dir.write(self.state(), self.pos.step, final=final)
        self._call("on_checkpoint", self.written, "last")
        return self.written

    def save_best(self) -> Path | None:
        """Rank 0 writes the checkpoint of the epoch with the best validation NLL so far
        (on_checkpoint: "best"): the model a run reports."""
        if self.ckpt_dir is None or self.ckpt_dir.best is None:
            return None
        path = self.state().save(self.ckpt_dir.best)
        self._call("on_checkpoint", path, "best")
        return path

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        self.pos = Position(**ckpt.train_state)
        if not self.ctx.main:  # the partial sums are global: rank 0 carries them on
            self.pos.nats, self.pos.seen = 0.0, 0
        checkpoint.set_rng_state(checkpoint.unpack_rng(ckpt.rng))
        self.data_rng = ckpt.data_rng
        self.model.to(self.device)
        self.resumed = True

    # ------------------------------------------------------------------ signals

    def _flags(self) -> tuple[bool, bool]:
        """(checkpoint due, stop requested), agreed by all ranks."""
        minutes = self.cfg.train.checkpoint_minutes
        due = minutes > 0 and time.monotonic() - self.last_checkpoint >= minutes * 60
        stop = signals.requested() is not None
        if self.ctx.active:
            due_n, stop_n = all_sum([float(due), float(stop)], self.ctx, self.device)
            due, stop = due_n > 0, stop_n > 0
        return due, stop

    def interrupt(self) -> Interrupted:
        """Write a checkpoint and return the exception that ends the run."""
        path = self.save()
        signum = signals.requested() or 15
        p = self.pos
        stage = "in sampling" if p.evaluated else "after training" if p.trained else f"batch {p.batch}"
        where = f"epoch {p.epoch}, {stage} (step {p.step})"
        again = f"; continue with `python -m pixelexp resume {self.run_id}`" if self.run_id else ""
        return Interrupted(signum, f"{signals.name(signum)} at {where}; checkpoint {path}{again}")
