"""Masked convolutions: the kernel only sees pixels that come earlier.

Spatially, a k x k kernel keeps the rows above its centre and the pixels left of
it on the centre row. At the centre itself the feature maps are split into one
group per image channel (R, G, B for colour; a single group for gray), and

    mask A:  output group o sees input groups i <  o   (first layer: R sees nothing
             of its own pixel, G sees R, B sees R and G)
    mask B:  output group o sees input groups i <= o   (later layers: a group also
             sees its own features, which only hold earlier information)

    5x5, mask A, gray         5x5, mask B, gray
    1 1 1 1 1                 1 1 1 1 1
    1 1 1 1 1                 1 1 1 1 1
    1 1 0 0 0                 1 1 1 0 0
    0 0 0 0 0                 0 0 0 0 0
    0 0 0 0 0                 0 0 0 0 0

Groups are contiguous blocks of channels (`channel_groups`); layers whose channel
layout is not one block per group (the LSTM gates) pass their own group ids.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_groups(n: int, image_channels: int) -> torch.Tensor:
    """Group id of each of n channels: contiguous blocks, one per image channel."""
    return torch.arange(n) * image_channels // n


def causal_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, kernel: tuple[int, int],
                mask_type: str) -> torch.Tensor:
    """(out, in, kh, kw) mask of 0/1 for a kernel centred at (kh // 2, kw // 2)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kh, kw = kernel
    cy, cx = kh // 2, kw // 2
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    mask[:, :, :cy, :] = 1  # rows above the centre
    mask[:, :, cy, :cx] = 1  # left of the centre, same row
    o, i = out_groups[:, None], in_groups[None, :]
    mask[:, :, cy, cx] = (i < o) if mask_type == "A" else (i <= o)
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded k x k convolution whose kernel is masked (see module doc).

    Args:
        in_channels, out_channels: feature maps in and out.
        kernel_size: k or (kh, kw), odd, so that the kernel has a centre (Row LSTM: (1, 3)).
        mask_type: "A" (the first layer: excludes the current subpixel) or "B".
        image_channels: 1 for gray, 3 for RGB: the number of channel groups.
        in_groups, out_groups: group id per channel, when not contiguous blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 mask_type: str, image_channels: int = 1, in_groups: torch.Tensor | None = None,
                 out_groups: torch.Tensor | None = None, bias: bool = True):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 != 1 or kw % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        in_g = channel_groups(in_channels, image_channels) if in_groups is None else in_groups
        out_g = channel_groups(out_channels, image_channels) if out_groups is None else out_groups
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(out_g, in_g, (kh, kw), mask_type),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)

    # The kernel in pieces, for computing the layer one position at a time (the samplers).

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask  # (out, in, kh, kw)

    def matrix(self) -> torch.Tensor:
        """A 1x1 layer's kernel as an (out, in) matrix."""
        return self.masked_weight()[:, :, 0, 0]

    def rows_above(self) -> torch.Tensor:
        """The kernel's rows above its centre row, (out, in, kh // 2, kw): a convolution
        over finished rows (`conv_rows`)."""
        return self.masked_weight()[:, :, : self.kernel_size[0] // 2]

    def centre_row(self) -> torch.Tensor:
        """The centre row's columns up to the centre (the rest is masked) as a matrix on a
        channels-last window of those columns: ((kw // 2 + 1) * in, out)."""
        cy, cx = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        return self.masked_weight()[:, :, cy, : cx + 1].permute(2, 1, 0).flatten(0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask={self.mask_type}"


def conv_rows(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A convolution over a band of finished rows whose output is a single row: rows
    (n, kh, W + kw - 1, in) channels last, weight (out, in, kh, kw) -> (W, n, out), one
    position's (n, out) contiguous (what a sampler adds its per-position part to)."""
    y = F.conv2d(rows.permute(0, 3, 1, 2), weight, bias)  # (n, out, 1, W)
    return y[:, :, 0].permute(2, 0, 1).contiguous()
