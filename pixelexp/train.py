"""The training loop, in the open: one `run(config)` seeds, loads data, builds the
model, trains, evaluates, samples and tracks. Experiments and sweeps both call it.

Units: the loss is the negative log-likelihood in bits per subpixel,

    bits/dim = nats per image / (C * H * W * ln 2),

and for 2-level data the paper's unit, nats per image, is logged beside it.
Per epoch (step = epoch) it logs train_bpd (the mean over the epoch's batches),
val_bpd, test_bpd, [train|val|test]_nats for 2 levels, epoch_seconds (training and
evaluation), elapsed_hours (the sum of epoch_seconds: sampling and logging are not
counted, so models compare by their own cost), lr and images_per_second (training).
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pixelexp.config import Config
from pixelexp.data import DataSplits, load_data
from pixelexp.distributed import Dist, all_sum, barrier
from pixelexp.distributed import setup as setup_distributed
from pixelexp.distributed import wrap as wrap_ddp
from pixelexp.errors import ConfigError
from pixelexp.images import to_grid
from pixelexp.models import AutoregressiveModel, build_model, count_parameters

LN2 = math.log(2.0)
CHECKPOINT_FORMAT = "pixelexp-checkpoint"
CHECKPOINT_VERSION = 1


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
    return build_model(cfg.model.name, image_shape=image_shape, levels=levels, **hparams)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.train.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr)


def nats_per_image(model: AutoregressiveModel, x: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) ints -> (B,) negative log-likelihood of each image in nats."""
    return -model.log_prob(x, labels).sum(dim=(1, 2, 3))


@torch.no_grad()
def evaluate(model: AutoregressiveModel, images: torch.Tensor, batch_size: int,
             device: torch.device, labels: torch.Tensor | None = None, ctx: Dist = Dist()) -> float:
    """Mean nats per image over a whole split (given its labels, for a conditional model);
    across ranks, each evaluates a slice and the sums are added."""
    was_training = model.training
    model.eval()
    total = 0.0
    n = len(images)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    images = images[lo:hi]
    labels = None if labels is None else labels[lo:hi]
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).long()
        y = labels[start:start + batch_size].to(device) if model.conditional else None
        total += nats_per_image(model, x, y).sum().item()
    model.train(was_training)
    (total,) = all_sum([total], ctx, device)
    return total / max(n, 1)


@dataclass
class RunResult:
    metrics: dict[str, float]  # the last epoch's
    history: list[dict[str, float]] = field(default_factory=list)
    n_parameters: int = 0
    model: AutoregressiveModel | None = None
    samples: torch.Tensor | None = None


def train_epoch(model, optimizer, data: DataSplits, cfg: Config, epoch: int, device,
                label: str, progress: bool, net=None, ctx: Dist = Dist()) -> tuple[float, float]:
    """One pass over the training set -> (mean nats per image, seconds).

    `net` is the model as trained (DistributedDataParallel across ranks, else the model
    itself); each rank takes its slice of every global batch of `train.batch_size`."""
    net = net if net is not None else model
    net.train()
    dims = math.prod(data.image_shape)
    g = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)  # data order of this epoch
    order = torch.randperm(len(data.train), generator=g)
    total, seen = 0.0, 0
    bar = tqdm(total=len(order), desc=f"{label} epoch {epoch}", unit="img", leave=False,
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    for k in range(0, len(order), cfg.train.batch_size):
        batch = order[k:k + cfg.train.batch_size]
        idx = batch[ctx.rank::ctx.world]  # this rank's slice of the global batch
        x = data.train_batch(idx, g).to(device, non_blocking=True)
        y = data.train_labels[idx].to(device) if model.conditional else None
        nats = -net(x, y).sum(dim=(1, 2, 3))  # (b,) nats per image
        # Bits/dim of the global batch; DDP averages gradients over ranks, hence * world.
        loss = nats.sum() * ctx.world / (len(batch) * dims * LN2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        batch_nats = nats.detach().sum().item()
        if not math.isfinite(batch_nats):
            raise FloatingPointError(f"loss became {batch_nats} at epoch {epoch}, batch {k // cfg.train.batch_size}; "
                                     f"try a lower train.lr or train.grad_clip")
        total += batch_nats
        seen += len(idx)
        bar.update(len(idx))
        bar.set_postfix(bpd=f"{bits_per_dim(total / seen, dims):.4f}",
                        img_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    total, seen = all_sum([total, seen], ctx, device)
    return total / seen, time.perf_counter() - start


def draw_samples(model: AutoregressiveModel, n: int, seed: int, device,
                 num_classes: int | None = None) -> torch.Tensor:
    """n samples with a fixed seed, so grids of different epochs share their noise.
    A conditional model draws the classes in turn (0, 1, ..., 0, 1, ...)."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(n, device=device) % (num_classes or 10) if model.conditional else None
    return model.sample(n, generator=g, device=device, labels=labels)


def save_checkpoint(path: Path, model, optimizer, cfg: Config, data: DataSplits, epoch: int,
                    metrics: dict) -> Path:
    """Written to a temporary file and renamed, so a crash never leaves half a file."""
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(), "image_shape": list(data.image_shape), "levels": data.levels,
        "num_classes": data.num_classes,
        "epoch": epoch, "metrics": metrics, "data_checksum": data.checksum,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "torch_version": str(torch.__version__),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def run(cfg: Config, log=None, *, label: str = "run", progress: bool = True, echo=print,
        on_epoch=None) -> RunResult:
    """Train and evaluate one config. `log` is a tracking.RunLog, or None to track nothing.
    `on_epoch(epoch, metrics)` is called after each epoch's evaluation (a sweep reports to
    Optuna there, and may stop the run by raising optuna.TrialPruned)."""
    ctx = setup_distributed()
    device = pick_device(cfg.train.device)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if not ctx.main:  # only rank 0 tracks and talks
        log, echo, progress, on_epoch = None, (lambda *a, **k: None), False, None
    seed_everything(cfg.train.seed)
    data = load_data(cfg.data)
    model = make_model(cfg, data.image_shape, data.levels, data.num_classes).to(device)
    net = wrap_ddp(model, ctx, device)
    optimizer = make_optimizer(cfg, model)
    dims = math.prod(data.image_shape)
    n_params = count_parameters(model)
    if log is not None:
        log.log_params({**cfg.flat(), **data.summary(), "n_parameters": n_params})
        log.set_tags({"data_source": data.source, "device": str(device),
                      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "torch_version": str(torch.__version__), "pixelexp.model": cfg.model.name})
        log.log_text(_yaml(cfg), "config.yaml")
    echo(f"[{label}] {cfg.model.name}: {n_params:,} parameters; data {data.source} "
         f"({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {data.levels} levels); "
         f"device {device}")

    result = RunResult(metrics={}, n_parameters=n_params, model=model)
    elapsed = 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        train_nats, train_s = train_epoch(model, optimizer, data, cfg, epoch, device, label, progress, net, ctx)
        t0 = time.perf_counter()
        bs = cfg.train.eval_batch_size
        val_nats = evaluate(model, data.val, bs, device, data.val_labels, ctx) if len(data.val) else float("nan")
        test_nats = evaluate(model, data.test, bs, device, data.test_labels, ctx)
        epoch_s = train_s + time.perf_counter() - t0
        elapsed += epoch_s
        m = {"train_bpd": bits_per_dim(train_nats, dims), "val_bpd": bits_per_dim(val_nats, dims),
             "test_bpd": bits_per_dim(test_nats, dims)}
        if data.levels == 2:
            m.update(train_nats=train_nats, val_nats=val_nats, test_nats=test_nats)
        m.update(epoch_seconds=epoch_s, elapsed_hours=elapsed / 3600.0,
                 lr=optimizer.param_groups[0]["lr"], images_per_second=len(data.train) / train_s)
        result.metrics = m
        result.history.append({"epoch": epoch, **m})
        if log is not None:
            log.log_metrics(m, step=epoch)
        nats = f" ({m['test_nats']:.2f} nats)" if data.levels == 2 else ""
        echo(f"[{label}] epoch {epoch}/{cfg.train.epochs}  bits/dim train {m['train_bpd']:.4f}  "
             f"val {m['val_bpd']:.4f}  test {m['test_bpd']:.4f}{nats}  "
             f"{m['images_per_second']:.0f} img/s  {epoch_s:.1f} s")
        if on_epoch is not None:
            on_epoch(epoch, m)
        last = epoch == cfg.train.epochs
        every = cfg.track.sample_every
        if ctx.main and cfg.track.sample_count and (last or (every and epoch % every == 0)):
            t0 = time.perf_counter()
            result.samples = draw_samples(model, cfg.track.sample_count, cfg.train.seed, device,
                                          data.num_classes)
            if log is not None:
                log.log_image(to_grid(result.samples, data.levels), key="samples", step=epoch)
            echo(f"[{label}] {cfg.track.sample_count} samples in {time.perf_counter() - t0:.1f} s")
        barrier(ctx)  # the other ranks wait while rank 0 samples

    if log is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(Path(tmp) / "final.pt", model, optimizer, cfg, data, cfg.train.epochs,
                                   result.metrics)
            log.log_artifact(path, "checkpoints")
    return result


def _yaml(cfg: Config) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
