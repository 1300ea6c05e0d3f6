"""Which input subpixels reach the prediction of one subpixel, from gradients.

    python -m pixelexp receptive-field MODEL [--pixel i,j] [--size H,W] [--out PNG]

For a randomly initialised model the gradient of the chosen subpixel's logits with
respect to every (continuous) input subpixel is taken over several random images; a
nonzero gradient means the input reaches the output. Masked or unreachable inputs
have exactly zero gradient. The picture makes PixelCNN's blind spot (above and to the
right) visible, and its absence in the gated PixelCNN and the Diagonal BiLSTM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixelexp.models import AutoregressiveModel, build_model


def receptive_field(model: AutoregressiveModel, i: int, j: int, c: int = 0, n_images: int = 8,
                    seed: int = 0) -> torch.Tensor:
    """(C, H, W) bool: the input subpixels whose value reaches subpixel (c, i, j)."""
    C, H, W = model.image_shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.levels, (n_images, C, H, W), generator=g)
    xf = model.scale(x).detach().requires_grad_(True)
    labels = torch.randint(0, 10, (n_images,), generator=g) if model.conditional else None
    feats = model.features(xf) if labels is None else model.features(xf, labels)
    out = model.head(feats)  # (n, C*(1 or L), H, W)
    out = out.view(n_images, C, -1, H, W)[:, c, :, i, j]  # (n, 1 or L) logits of that subpixel
    weights = torch.randn(out.shape, generator=g, dtype=out.dtype)  # no cancellation by symmetry
    (grad,) = torch.autograd.grad((out * weights).sum(), xf)
    return grad.abs().amax(0) > 0


def render(field: torch.Tensor, i: int, j: int, c: int, scale: int = 16) -> np.ndarray:
    """A picture: gray = reaches the pixel, black = does not, red = the pixel itself.
    Channels side by side."""
    C, H, W = field.shape
    img = np.zeros((H, W * C + (C - 1), 3), dtype=np.uint8)
    for k in range(C):
        tile = np.where(field[k].numpy()[..., None], 170, 25).astype(np.uint8).repeat(3, -1)
        img[:, k * (W + 1): k * (W + 1) + W] = tile
    img[i, c * (W + 1) + j] = (220, 40, 40)
    return img.repeat(scale, 0).repeat(scale, 1)


def receptive_field_image(name: str, pixel: tuple[int, int] | None = None, size: tuple[int, int] = (15, 15),
                          channels: int = 1, out: str | Path | None = None, echo=print, **hparams) -> Path:
    from pixelexp.images import save_png

    H, W = size
    i, j = pixel if pixel is not None else (H // 2, W // 2)
    if not (0 <= i < H and 0 <= j < W):
        from pixelexp.errors import UserError
        raise UserError(f"--pixel {i},{j} is outside the {H}x{W} image; give 0 <= i < {H}, 0 <= j < {W}")
    torch.manual_seed(0)
    model = build_model(name, image_shape=(channels, H, W), levels=2, **hparams).double()
    field = receptive_field(model, i, j)
    out = Path(out or Path("reports") / "receptive_field" / f"{name}.png")
    save_png(render(field, i, j, 0), out)
    above = int(field[:, :i].sum())
    echo(f"{name}: {above} of {channels * i * W} subpixels above row {i} and "
         f"{int(field[:, i, :j].sum())} of {channels * j} to the left reach pixel ({i}, {j}); written to {out}")
    return out
