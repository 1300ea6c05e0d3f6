"""Sample grids: (n, C, H, W) integer images -> one (rows*H, cols*W, 3) uint8 picture."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_grid(images: torch.Tensor, levels: int, pad: int = 2) -> np.ndarray:
    """Tile images in a near-square grid with gray separators; values scaled to 0..255."""
    x = images.detach().cpu().long()
    n, C, H, W = x.shape
    x = (x.float() * (255.0 / (levels - 1))).round().clamp(0, 255).to(torch.uint8)
    if C == 1:
        x = x.expand(n, 3, H, W)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), 128, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = pad + r * (H + pad), pad + c * (W + pad)
        grid[y0:y0 + H, x0:x0 + W] = x[k].permute(1, 2, 0).numpy()
    return grid


def upscale(grid: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so 28x28 digits are visible in a report."""
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(grid: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
