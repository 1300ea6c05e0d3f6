"""Load a run's checkpoint and draw samples (the reference's `--is_train=False`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pixelexp.console import log
from pixelexp.engine import checkpoint
from pixelexp.engine.build import make_model, pick_device
from pixelexp.engine.callbacks import draw_samples
from pixelexp.errors import CheckpointError, UserError, first_line
from pixelexp.images import save_png, to_grid, upscale
from pixelexp.runs import rundir, tracking
from pixelexp.runs.train import checkpoint_config

# The checkpoint a run reports (its best validation NLL); else its newest.
CHECKPOINT_ARTIFACTS = (rundir.BEST_ARTIFACT, rundir.LAST_ARTIFACT)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """-> (model, config, checkpoint); one-line errors for files that are not ours."""
    ckpt = checkpoint.load(path, device)
    cfg = checkpoint_config(ckpt)
    model = make_model(cfg, tuple(ckpt.image_shape), int(ckpt.levels), ckpt.num_classes)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({first_line(e)})") from None
    return model.to(device), cfg, ckpt


def sample_run(run_id: str, n: int = 64, out: str | Path | None = None, seed: int = 0,
               device: str = "auto") -> Path:
    dev = pick_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        for i, artifact in enumerate(CHECKPOINT_ARTIFACTS):
            try:
                local = tracking.download(run_id, artifact, tmp)
                break
            except UserError:
                if i == len(CHECKPOINT_ARTIFACTS) - 1:
                    raise
        model, cfg, ckpt = load_checkpoint(local, str(dev))
    images = draw_samples(model, n, seed, dev, ckpt.num_classes)
    out = Path(out or Path("reports") / "samples" / f"{run_id}.png")
    save_png(upscale(to_grid(images, model.levels), 3), out)
    log.info(f"{n} samples of run {run_id} ({cfg.model.name}, epoch {ckpt.epoch}) written to {out}")
    return out
