"""What a run is built from, each with its defaults in one place: the device, the seeds,
the model, the optimizer and its schedule, determinism, and the memory check that
refuses a run that cannot fit before anything is allocated."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from pixelexp.config import Config
from pixelexp.errors import ConfigError
from pixelexp.models import AutoregressiveModel, build_model, set_impl


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
