"""The numbers a run reports, in one unit: the negative log-likelihood in bits per
subpixel,

    bits/dim = nats per image / (C * H * W * ln 2),

computed in fp32 over whole splits (`evaluate`), and the epoch a run reports: the one
chosen on validation (`selected`), never on test.
"""

from __future__ import annotations

import math

import torch

from pixelexp.engine import fast
from pixelexp.engine.distributed import Dist, all_sum
from pixelexp.models import AutoregressiveModel

LN2 = math.log(2.0)
TIMING_METRICS = ("epoch_seconds", "elapsed_hours", "images_per_second")  # the only ones that vary


def bits_per_dim(nats_per_image: float, subpixels: int) -> float:
    return nats_per_image / (subpixels * LN2)


class StopEval(Exception):
    """A signal arrived during an evaluation: it was abandoned."""


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
            raise StopEval
        x = images[start:start + batch_size].to(device).long()
        y = labels[start:start + batch_size].to(device) if model.conditional else None
        total += step(x, y).sum()
    model.train(was_training)
    (total,) = all_sum([total.item()], ctx, device)
    return total / max(n, 1)


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
