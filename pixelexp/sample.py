"""Load a run's checkpoint and draw samples (the reference's `--is_train=False`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pixelexp import tracking
from pixelexp.config import config_from_dict
from pixelexp.errors import CheckpointError, ConfigError
from pixelexp.images import save_png, to_grid, upscale
from pixelexp.train import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, draw_samples, make_model, pick_device

CHECKPOINT_ARTIFACT = "checkpoints/final.pt"


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """-> (model, config, checkpoint dict); one-line errors for files that are not ours."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); "
                              f"it may be truncated: use another run's checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pixelexp checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                              f"(this pixelexp reads version {CHECKPOINT_VERSION})")
    try:
        cfg = config_from_dict(ckpt["config"], f"{path} (config)")
    except ConfigError as e:
        raise CheckpointError(f"{e}; the checkpoint was written by another pixelexp version") from None
    model = make_model(cfg, tuple(ckpt["image_shape"]), int(ckpt["levels"]), ckpt.get("num_classes"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0][:160]})") from None
    return model.to(device), cfg, ckpt


def sample_run(run_id: str, n: int = 64, out: str | Path | None = None, seed: int = 0,
               device: str = "auto", echo=print) -> Path:
    dev = pick_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.download(run_id, CHECKPOINT_ARTIFACT, tmp)
        model, cfg, ckpt = load_checkpoint(local, str(dev))
    images = draw_samples(model, n, seed, dev, ckpt.get("num_classes"))
    out = Path(out or Path("reports") / "samples" / f"{run_id}.png")
    save_png(upscale(to_grid(images, model.levels), 3), out)
    echo(f"{n} samples of run {run_id} ({cfg.model.name}, epoch {ckpt['epoch']}) written to {out}")
    return out
