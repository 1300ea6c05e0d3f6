"""Shifts and skews of (B, C, H, W) feature maps, all without Python loops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down; row 0 becomes zeros. Output row i holds input row i-1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right; column 0 becomes zeros."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


def skew(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W+H-1): row i shifted right by i, zeros elsewhere.

    After the skew, column j holds the anti-diagonal {(i, j-i)} of the input, so a
    scan over columns visits the image diagonal by diagonal. Done with one pad and
    two reshapes: rows padded to width W+H and read back at width W+H-1 start one
    element later each row.
    """
    B, C, H, W = x.shape
    flat = F.pad(x, (0, H)).reshape(B, C, H * (W + H))  # (B, C, H*(W+H))
    return flat[:, :, : H * (W + H - 1)].reshape(B, C, H, W + H - 1)


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of `skew`: (B, C, H, W+H-1) -> (B, C, H, W) with output[i, j] = x[i, i+j]."""
    B, C, H, P = x.shape
    flat = F.pad(x.reshape(B, C, H * P), (0, H))  # (B, C, H*(P+1))
    return flat.reshape(B, C, H, P + 1)[:, :, :, :width]
