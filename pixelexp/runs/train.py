"""The training loop, in the open: one `run(config)` seeds, loads data, builds the
model, trains, evaluates, samples, checkpoints and tracks. Experiments, sweeps,
`resume` and `rerun` all call it.

Runs survive: a checkpoint (checkpoint.py) is written at the end of every epoch,
every `train.checkpoint_minutes` within one, and when SIGINT/SIGTERM arrives (after
the batch in flight); `run(cfg, log, resume=checkpoint)` continues from one so that,
with `train.deterministic`, a run killed at any moment and resumed computes exactly
what an uninterrupted run computes. A non-finite loss or gradient stops the run
(`train.nan_policy: stop`) or skips that update (`skip_batch`, counted in
`skipped_batches`).

Units: the loss is the negative log-likelihood in bits per subpixel,

    bits/dim = nats per image / (C * H * W * ln 2),

and for 2-level data the paper's unit, nats per image, is logged beside it.
Per epoch (step = epoch) it logs train_bpd (the mean over the epoch's batches),
val_bpd, test_bpd, [train|val|test]_nats for 2 levels, epoch_seconds (training and
evaluation), elapsed_hours (the sum of epoch_seconds: sampling and logging are not
counted, so models compare by their own cost), lr and images_per_second (training).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pixelexp.config import Config
from pixelexp.data import DataSplits, load_data
from pixelexp.engine import checkpoint, fast, signals
from pixelexp.engine.distributed import Dist, all_sum, barrier, broadcast
from pixelexp.engine.distributed import setup as setup_distributed
from pixelexp.engine.distributed import wrap as wrap_ddp
from pixelexp.errors import CheckpointError, ConfigError, Interrupted
from pixelexp.images import to_grid
from pixelexp.models import AutoregressiveModel, build_model, count_parameters, set_impl
from pixelexp.runs import rundir

LN2 = math.log(2.0)
TIMING_METRICS = ("epoch_seconds", "elapsed_hours", "images_per_second")  # the only ones that vary


def bits_per_dim(nats_per_image: float, subpixels: int) -> float:
    return nats_per_image / (subpixels * LN2)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_hparams(cfg: Config) -> dict:
    m = cfg.model
    return dict(hidden_dims=m.hidden_dims, recurrent_length=m.recurrent_length,
                out_hidden_dims=m.out_hidden_dims, out_recurrent_length=m.out_recurrent_length,
                use_residual=m.use_residual, use_skip=m.use_skip)


def make_model(cfg: Config, image_shape, levels: int, num_classes: int | None = None) -> AutoregressiveModel:
    hparams = model_hparams(cfg)
    if cfg.model.conditional:  # (config checks that the model can be conditional)
        hparams.update(conditional=True, num_classes=num_classes or 10)
    if cfg.model.name == "multiscale_pixel_rnn":
        hparams.update(scale_stride=cfg.model.scale_stride)
    return set_impl(build_model(cfg.model.name, image_shape=image_shape, levels=levels, **hparams), cfg.model.impl)


def check_fits(cfg: Config, image_shape, levels: int, num_classes: int | None, device) -> dict[str, int]:
    """Stop with one line (ConfigError) when training this config would run out of memory
    on `device`, before anything is allocated or written; return the estimate in bytes.

    The model is built on the meta device (its parameters counted, no memory taken) and
    the estimate is memory.memory_estimate: 4 x parameters x 4 bytes for the weights,
    their gradients and the optimizer's state, plus the activations of one training
    batch kept for backward (train.batch_size x H x W x hidden_dims x (recurrent_length
    + 2) x the model's floats per feature, plus the output layers and logits), or of one
    evaluation batch (train.eval_batch_size, two layers live) when that is larger. It is
    compared with memory.available_memory: MemAvailable (within cgroup and `ulimit -v`
    limits) on a CPU, the free memory torch.cuda.mem_get_info reports on a GPU, where
    the model is also first built on the CPU. The estimate is 1-3x the peak measured on
    CPU steps, so a run is refused only when it is over twice the free memory: what is
    refused would need at least two thirds of the machine's free memory and almost always
    all of it, and a run that might fit is tried. Where the free memory cannot be
    told, the check passes."""
    from pixelexp import memory  # (looked up at call time: tests stand in for the machine)
    device = torch.device(device)
    with torch.device("meta"):
        model = make_model(cfg, image_shape, levels, num_classes)
    n_params = sum(p.numel() for p in model.parameters())
    m, t = cfg.model, cfg.train
    est = memory.memory_estimate(
        m.name, n_params, sum(b.numel() for b in model.buffers()), image_shape, levels,
        hidden_dims=m.hidden_dims, recurrent_length=m.recurrent_length, out_hidden_dims=m.out_hidden_dims,
        out_recurrent_length=m.out_recurrent_length, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size)
    batch = "train.eval_batch_size" if est["eval"] > est["train"] else "train.batch_size"
    settings = (f"model.name={m.name} model.hidden_dims={m.hidden_dims} model.recurrent_length={m.recurrent_length} "
                f"{batch}={getattr(t, batch.split('.')[1])}")
    needs = [(device, est["total"], "to train", 2.0)]
    if device.type != "cpu":  # built on the CPU, then moved
        needs.append((torch.device("cpu"), 4 * n_params, "to build", 1.0))
    for where, need, what, margin in needs:
        free = memory.available_memory(where)
        if free is not None and need > margin * free:
            raise ConfigError(f"{settings} needs about {need / 1e9:.1f} GB {what} "
                              f"({memory.format_count(n_params)} parameters), {free / 1e9:.1f} GB is available "
                              f"on {where}; lower model.hidden_dims, model.recurrent_length or {batch}")
    return est


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.train.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr)


def make_scheduler(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: lr * lr_decay ** epochs done."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.train.lr_decay)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False


def effective_impl(cfg: Config, device: torch.device) -> str:
    """model.impl as it runs here: triton where its kernels cannot run is the fast scan."""
    from pixelexp.nn.kernels import triton_scan
    why = triton_scan.unavailable(cfg.model.hidden_dims, device) if cfg.model.impl == "triton" else None
    return cfg.model.impl if why is None else f"fast (model.impl=triton: {why})"


class _StopEval(Exception):
    pass


@torch.no_grad()
def evaluate(model: AutoregressiveModel, images: torch.Tensor, batch_size: int,
             device: torch.device, labels: torch.Tensor | None = None, ctx: Dist = Dist(),
             stop=lambda: False, step: fast.EvalStep | None = None) -> float:
    """Mean nats per image over a whole split (given its labels, for a conditional model);
    across ranks, each evaluates a slice and the sums are added. `stop()` is asked
    between batches (a signal arrived): it abandons the evaluation. `step` (the
    trainer's, built for this batch_size and kept across epochs) may replay full batches
    as a CUDA graph; without it, the plain path."""
    step = step or fast.EvalStep(model, fast.PLAIN, device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: one sync per split
    n = len(images)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    images = images[lo:hi]
    labels = None if labels is None else labels[lo:hi]
    for start in range(0, len(images), batch_size):
        if stop():
            model.train(was_training)
            raise _StopEval
        x = images[start:start + batch_size].to(device).long()
        y = labels[start:start + batch_size].to(device) if model.conditional else None
        total += step(x, y).sum()
    model.train(was_training)
    (total,) = all_sum([total.item()], ctx, device)
    return total / max(n, 1)


@dataclass
class RunResult:
    metrics: dict[str, float]  # the last epoch's, with the chosen epoch's best_* beside them
    history: list[dict[str, float]] = field(default_factory=list)
    n_parameters: int = 0
    model: AutoregressiveModel | None = None
    samples: torch.Tensor | None = None
    checkpoint: Path | None = None  # the last one written


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


SELECTED = ("val_bpd", "test_bpd", "val_nats", "test_nats")


def chosen_line(metrics: dict[str, float]) -> str:
    """'test 0.2416 bits/dim (epoch 2, chosen on validation)': what a finished run reports."""
    if "best_test_bpd" not in metrics:
        return f"test {metrics.get('test_bpd', math.nan):.4f} bits/dim"
    return f"test {metrics['best_test_bpd']:.4f} bits/dim (epoch {int(metrics['best_epoch'])}, chosen on validation)"


def selected(history: list[dict]) -> dict[str, float]:
    """The epoch a run reports: the one with the lowest validation bits/dim so far (the
    earliest of equals), as the papers choose models; without a validation split, the
    last. -> best_epoch and its best_val_bpd, best_test_bpd (and nats for 2 levels)."""
    with_val = [h for h in history if math.isfinite(h.get("val_bpd", math.nan))]
    best = min(with_val, key=lambda h: h["val_bpd"]) if with_val else history[-1]
    return {"best_epoch": float(best["epoch"]), **{f"best_{k}": best[k] for k in SELECTED if k in best}}


class NonFiniteLoss(FloatingPointError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def epoch_generator(cfg: Config, epoch: int) -> torch.Generator:
    """The generator of one epoch's data order (and dynamic binarization)."""
    return torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)


class Trainer:
    """One run's model, optimizer, scheduler and position, and the checkpoints of them."""

    def __init__(self, cfg: Config, data: DataSplits, model, net, optimizer, scheduler, device, ctx: Dist,
                 run_dir: rundir.RunDir | None, log, label: str, progress: bool, paths: fast.FastPaths = fast.PLAIN):
        self.cfg, self.data, self.model, self.net = cfg, data, model, net
        self.optimizer, self.scheduler, self.device, self.ctx = optimizer, scheduler, device, ctx
        self.run_dir, self.log, self.label, self.progress = run_dir, log, label, progress
        self.ckpt_dir = checkpoint.CheckpointDir(run_dir.checkpoints, cfg.train.keep_checkpoints) if run_dir else None
        self.paths = paths
        # forward + backward of a full batch, maybe as a CUDA graph; the same for evaluation
        self.grad_step = fast.GradStep(net, model, paths, device, batch_size=cfg.train.batch_size)
        self.eval_step = fast.EvalStep(model, paths, device, batch_size=cfg.train.eval_batch_size)
        self.pos = Position()
        self.gen: torch.Generator | None = None  # the data generator of the epoch in progress
        self.last_checkpoint = time.monotonic()
        self.written: Path | None = None
        self.data_rng: torch.Tensor | None = None  # the data generator's state to resume within an epoch

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            config=self.cfg.to_dict(), image_shape=list(self.data.image_shape),
            levels=self.data.levels, num_classes=self.data.num_classes,
            data_checksum=self.data.checksum, run_id=getattr(self.log, "run_id", None),
            epoch=len(self.pos.history),  # epochs finished
            metrics=self.pos.history[-1] if self.pos.history else {},
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), train_state=dict(vars(self.pos)),
            data_rng=self.gen.get_state() if self.gen is not None and self.pos.batch else None,
            rng=checkpoint.pack_rng(checkpoint.rng_state()), torch_version=str(torch.__version__))

    def save(self, final: bool = False) -> Path | None:
        """Rank 0 writes runs/<id>/checkpoints/step-N.pt and sends it as checkpoints/last.pt."""
        self.last_checkpoint = time.monotonic()
        if self.ckpt_dir is None or not self.ctx.main:
            return None
        self.written = self.ckpt_dir.write(self.state(), self.pos.step, final=final)
        if self.log is not None:
            self.log.log_artifact(self.written, rundir.CHECKPOINTS, name=rundir.LAST, copy=False)
        return self.written

    def save_best(self) -> Path | None:
        """Rank 0 writes the checkpoint of the epoch with the best validation NLL so far as
        runs/<id>/checkpoints/best.pt (MLflow: checkpoints/best.pt): the model a run reports."""
        if self.run_dir is None or not self.ctx.main:
            return None
        path = self.state().save(self.run_dir.best)
        if self.log is not None:
            self.log.log_artifact(path, rundir.CHECKPOINTS, name=rundir.BEST)
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
        again = f"; continue with `python -m pixelexp resume {self.log.run_id}`" if self.log is not None else ""
        return Interrupted(signum, f"{signals.name(signum)} at {where}; checkpoint {path}{again}")

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
                   unit="img", leave=False, disable=not (self.progress and sys.stderr.isatty()), file=sys.stderr,
                   dynamic_ncols=True)  # no bars in a redirected log
        t0, seconds0 = time.perf_counter(), pos.train_seconds
        for k in range(pos.batch * bs, len(order), bs):
            batch = order[k:k + bs]
            idx = batch[ctx.rank::ctx.world]  # this rank's slice of the global batch
            x = data.train_batch(idx, g).to(self.device, non_blocking=True)
            y = data.train_labels[idx].to(self.device) if self.model.conditional else None
            # Loss: bits/dim of the global batch; DDP averages gradients over ranks, hence * world.
            nats = self.grad_step(x, y, ctx.world / (len(batch) * dims * LN2))  # (b,) nats per image
            clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            batch_nats = nats.detach().sum().item()
            pos.step += 1
            pos.batch += 1
            if math.isfinite(batch_nats) and math.isfinite(grad_norm):
                self.optimizer.step()
                pos.nats += batch_nats
                pos.seen += len(idx)
            elif cfg.train.nan_policy == "skip_batch":
                self.optimizer.zero_grad(set_to_none=True)
                pos.skipped += 1
            else:
                raise NonFiniteLoss(
                    f"non-finite {'loss' if not math.isfinite(batch_nats) else 'gradient'} at step {pos.step} "
                    f"(epoch {pos.epoch}, batch {pos.batch}); the last good checkpoint is kept; try a lower "
                    f"train.lr, train.grad_clip, or train.nan_policy=skip_batch", pos.step)
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

    def finish_epoch(self) -> dict[str, float]:
        """Evaluate the epoch just trained -> its metrics (added to the history)."""
        cfg, data, pos = self.cfg, self.data, self.pos
        dims = math.prod(data.image_shape)
        t0 = time.perf_counter()
        bs = cfg.train.eval_batch_size
        # A signal abandons the evaluation (one process only: ranks evaluate different numbers of batches).
        stop = (lambda: False) if self.ctx.active else (lambda: signals.requested() is not None)
        try:
            val = evaluate(self.model, data.val, bs, self.device, data.val_labels, self.ctx, stop,
                           self.eval_step) \
                if len(data.val) else float("nan")
            test = evaluate(self.model, data.test, bs, self.device, data.test_labels, self.ctx, stop,
                            self.eval_step)
        except _StopEval:
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

    def next_epoch(self) -> None:
        self.scheduler.step()
        p = self.pos
        self.pos = Position(epoch=p.epoch + 1, step=p.step, skipped=p.skipped, elapsed=p.elapsed,
                            history=p.history)
        self.gen = None


def draw_samples(model: AutoregressiveModel, n: int, seed: int, device,
                 num_classes: int | None = None, graphs: bool = False) -> torch.Tensor:
    """n samples with a fixed seed, so grids of different epochs share their noise.
    A conditional model draws the classes in turn (0, 1, ..., 0, 1, ...). With `graphs`
    (train.cuda_graphs on a CUDA device) the sampler is replayed as a CUDA graph."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(n, device=device) % (num_classes or 10) if model.conditional else None
    return fast.sample(model, n, generator=g, device=device, labels=labels, graphs=graphs)


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
    from pixelexp.config import config_from_dict
    try:
        return config_from_dict(ckpt.config, f"{ckpt.where} (config)")
    except ConfigError as e:
        raise CheckpointError(f"{e}; the checkpoint was written by another pixelexp version") from None


def preflight(cfg: Config) -> None:
    """Everything a run needs, checked before anything is written (an MLflow run, a
    folder): the device, the data (found or fetched, and sane) and the model."""
    device = pick_device(cfg.train.device)
    data = load_data(cfg.data)
    check_fits(cfg, data.image_shape, data.levels, data.num_classes, device)  # builds it on the meta device


def run(cfg: Config, log=None, *, label: str = "run", progress: bool = True, echo=print,
        on_epoch=None, resume: checkpoint.Checkpoint | None = None) -> RunResult:
    """Train and evaluate one config. `log` is a tracking.RunLog, or None to track nothing
    (and write no checkpoints). `resume`: a checkpoint (checkpoint.load) of this run to
    continue from. `on_epoch(epoch, metrics)` is called after each epoch's evaluation (a
    sweep reports to Optuna there, and may stop the run by raising optuna.TrialPruned)."""
    ctx = setup_distributed()
    device = pick_device(cfg.train.device)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if not ctx.main:  # only rank 0 tracks and talks
        log, echo, progress, on_epoch = None, (lambda *a, **k: None), False, None
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    set_deterministic(cfg.train.deterministic)
    try:
        return _run(cfg, log, label, progress, echo, on_epoch, resume, ctx, device)
    finally:
        set_deterministic(was_deterministic)


def _run(cfg, log, label, progress, echo, on_epoch, resume, ctx, device) -> RunResult:
    seed_everything(cfg.train.seed)
    data = load_data(cfg.data)
    check_fits(cfg, data.image_shape, data.levels, data.num_classes, device)  # sweep trials, resume, torchrun
    model = make_model(cfg, data.image_shape, data.levels, data.num_classes).to(device)
    net = wrap_ddp(model, ctx, device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer)
    n_params = count_parameters(model)
    # With DDP only rank 0 has the run; the others learn whether to resume from it.
    run_dir = broadcast(getattr(log, "run_dir", None), ctx)
    paths = fast.resolve(cfg.train.precision, cfg.train.compile, cfg.train.channels_last, device,
                         cfg.train.cuda_graphs, distributed=ctx.active)
    net = fast.apply(model, net, paths)
    trainer = Trainer(cfg, data, model, net, optimizer, scheduler, device, ctx, run_dir, log, label, progress,
                      paths)
    if ctx.active:  # every rank loads the checkpoint rank 0 resumes from
        resume_path = broadcast(str(resume.path or "") if resume else None, ctx)
        if resume is None and resume_path:
            resume = checkpoint.load(resume_path, device)
    if resume is not None:
        check_resumable(cfg, resume, data)
        trainer.restore(resume)
        model.to(device)
    if log is not None and resume is None:
        log_reproducibility(log, cfg, data, n_params, device, paths)
    if log is not None:
        log.run_dir.claim()
    pos = trainer.pos
    done = "" if resume is None else f"; resuming at epoch {pos.epoch}, batch {pos.batch} (step {pos.step})"
    echo(f"[{label}] {cfg.model.name}: {n_params:,} parameters; data {data.source} "
         f"({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {data.levels} levels); "
         f"device {device} ({paths.describe()}){done}")
    result = RunResult(metrics=dict(pos.history[-1]) if pos.history else {}, history=pos.history,
                       n_parameters=n_params, model=model)
    result.metrics.pop("epoch", None)
    if signals.requested() is not None:  # a signal between two runs of an experiment
        raise trainer.interrupt()
    try:
        _epochs(trainer, cfg, data, log, label, echo, on_epoch, result, device, ctx)
    except NonFiniteLoss as e:
        if log is not None:
            log.set_tags({"pixelexp.nan_step": e.step,
                          "pixelexp.last_checkpoint": str(trainer.ckpt_dir.latest()) if trainer.ckpt_dir else "none"})
        raise
    result.checkpoint = trainer.written
    return result


def _epochs(trainer: Trainer, cfg, data, log, label, echo, on_epoch, result, device, ctx) -> None:
    while trainer.pos.epoch <= cfg.train.epochs:
        epoch = trainer.pos.epoch
        if not trainer.pos.trained:
            trainer.train_epoch()
        if trainer.pos.evaluated:  # resumed after this epoch's evaluation, in its sampling
            m = {k: v for k, v in trainer.pos.history[-1].items() if k != "epoch"}
            m.update(selected(trainer.pos.history))
        else:
            m = trainer.finish_epoch()
            m.update(selected(trainer.pos.history))
            if m["best_epoch"] == epoch:
                trainer.save_best()
            if log is not None:
                log.log_metrics(m, step=epoch)
            nats = f" ({m['test_nats']:.2f} nats)" if data.levels == 2 else ""
            echo(f"[{label}] epoch {epoch}/{cfg.train.epochs}  bits/dim train {m['train_bpd']:.4f}  "
                 f"val {m['val_bpd']:.4f}  test {m['test_bpd']:.4f}{nats}  "
                 f"{m['images_per_second']:.0f} img/s  {m['epoch_seconds']:.1f} s")
            if on_epoch is not None:
                on_epoch(epoch, m)
            trainer.pos.evaluated = True
        result.metrics = m
        last = epoch == cfg.train.epochs
        every = cfg.track.sample_every
        if ctx.main and cfg.track.sample_count and (last or (every and epoch % every == 0)):
            t0 = time.perf_counter()
            # One process: a signal stops the sampling at once (the samplers have no checks
            # inside); resuming draws them again. Not with DDP (the other ranks wait at the
            # barrier) nor within a CUDA graph's capture or replay (seconds at most).
            at_once = not ctx.active and not trainer.paths.graphs
            try:
                with signals.at_once() if at_once else contextlib.nullcontext():
                    result.samples = draw_samples(trainer.model, cfg.track.sample_count, cfg.train.seed, device,
                                                  data.num_classes, graphs=trainer.paths.graphs)
            except KeyboardInterrupt:
                raise trainer.interrupt() from None
            if log is not None:
                log.log_image(to_grid(result.samples, data.levels), key="samples", step=epoch)
            echo(f"[{label}] {cfg.track.sample_count} samples in {time.perf_counter() - t0:.1f} s")
        barrier(ctx)  # the other ranks wait while rank 0 samples
        trainer.next_epoch()
        trainer.save(final=last)


def log_reproducibility(log, cfg: Config, data: DataSplits, n_params: int, device,
                        paths: fast.FastPaths) -> None:
    """Everything needed to run it again: the resolved config, data checksum, seed (params),
    code (git commit and diff), packages (pip freeze), machine."""
    import platform

    from pixelexp.runs import tracking
    log.log_params({**cfg.flat(), **data.summary(), "n_parameters": n_params})
    git = tracking.git_state()
    log.set_tags({"data_source": data.source, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch_version": str(torch.__version__), "pixelexp.model": cfg.model.name,
                  "python_version": platform.python_version(), "host": platform.node(), **git})
    log.set_tags({"pixelexp.fast_paths": paths.describe(), "pixelexp.impl": effective_impl(cfg, device)})
    text = _yaml(cfg)
    log.run_dir.path.mkdir(parents=True, exist_ok=True)
    log.run_dir.config.write_text(text)
    log.log_text(text, rundir.CONFIG)
    log.log_text(tracking.pip_freeze(), "environment/requirements.txt")
    if git.get("git_dirty") == "true":
        log.log_text(tracking.git_diff(), "environment/git.diff")


def _yaml(cfg: Config) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
