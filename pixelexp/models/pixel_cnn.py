"""PixelCNN: a residual stack of masked convolutions.

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
section 3.4 and Figure 5 (https://arxiv.org/abs/1601.06759).

    x ─ 7x7 mask A (2h) ─┬─ ReLU ─ 1x1 (h) ─ ReLU ─ 3x3 (h) ─ ReLU ─ 1x1 (2h) ─(+)─ ...
                         └──────────────────────────────────────────────────────┘
      ... `recurrent_length` blocks ─ head (1x1 mask B layers) ─ logits

As in the paper, the residual stream has 2h features (h = `hidden_dims`) and each block
(Figure 5, right) narrows it to h around its 3x3 convolution; every layer after the
first is mask B:

        x   (B, 2h, H, W)
        ├──────────────────────────────┐
        ReLU, 1x1 mask B   2h -> h     │  (B, h, H, W)
        ReLU, 3x3 mask B    h -> h     │  (B, h, H, W)
        ReLU, 1x1 mask B    h -> 2h    │  (B, 2h, H, W)
        │                              │
       (+) ────────────────────────────┘  residual (`use_residual`; without it the
        │   (B, 2h, H, W)                 block's output replaces the stream)

With `use_skip` the head reads the sum of all blocks' outputs, as in the PixelRNNs.
Every masked layer, the 1x1s included, splits its features into one group per image
channel (R, G, B for colour; `pixelexp.nn.masked`): at its own position a group sees
only the groups up to its own, so no channel of a pixel sees its own or a later value.
Every layer only looks up and to the left, so the receptive field of a pixel is a
triangle above it with a blind spot to its upper right (Gated PixelCNN removes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.models.base import AutoregressiveModel, OutputHead, run_layers
from pixelexp.models.rowwise import sample_rowwise
from pixelexp.nn.masked import MaskedConv2d, conv_rows
from pixelexp.nn.row_cache import RowCache


class PixelCNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: h, the features of each block's 3x3 layer; the residual stream has 2h.
        recurrent_length: number of residual blocks (each around one 3x3 mask-B layer).
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: add each block's input to its output.
        use_skip: feed the sum of all blocks' outputs to the head.
    """

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False):
        super().__init__(image_shape, levels)
        C = self.image_shape[0]
        width = 2 * hidden_dims
        self.use_residual = use_residual
        self.use_skip = use_skip
        self.input = MaskedConv2d(C, width, 7, "A", C)
        self.layers = nn.ModuleList(
            MaskedConvBlock(hidden_dims, C, use_residual) for _ in range(recurrent_length))
        self.head = OutputHead(width, out_hidden_dims, out_recurrent_length, C, self.levels)
        # Each k x k layer reaches k // 2 rows further up; the 1x1 layers and the head none.
        self.rows_above = 3 + recurrent_length

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.input(x), self.layers, self.use_skip)  # (B, 2h, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cached generation (Ramachandran et al., 2017, Fast Generation for Convolutional
        Autoregressive Models): every block keeps its 3x3 layer's input along the current
        row and the row above, and a new subpixel computes each block at its own position
        only (`MaskedConvBlock.step`, six small operations; the row loop is the PixelRNNs'
        `pixelexp.models.rowwise`). It does not use `rows_above` (the band of rows that
        `AutoregressiveModel.sample` recomputes). Same draws as `naive_sample` for the same
        generator (tested)."""
        self._check_labels(labels, n)
        device = device or next(self.parameters()).device
        return sample_rowwise(self, n, device, generator)


class MaskedConvBlock(nn.Module):
    """The paper's residual block on a stream of 2h features: ReLU, 1x1 mask B to h, ReLU,
    3x3 mask B, ReLU, 1x1 mask B back to 2h; the input added back when residual."""

    def __init__(self, hidden_dims: int, image_channels: int, use_residual: bool):
        super().__init__()
        h, C = hidden_dims, image_channels
        self.reduce = MaskedConv2d(2 * h, h, 1, "B", C)
        self.conv = MaskedConv2d(h, h, 3, "B", C)
        self.expand = MaskedConv2d(h, 2 * h, 1, "B", C)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 2h, H, W)
        y = self.reduce(F.relu(x))  # (B, h, H, W)
        y = self.conv(F.relu(y))  # (B, h, H, W)
        y = self.expand(F.relu(y))  # (B, 2h, H, W)
        return x + y if self.use_residual else y

    # ------------------------------------------------------------ pixel by pixel, for sampling
    # The 1x1 layers read the block's position o only; the 3x3 mask-B kernel at o reads two
    # rows of its input u = relu(reduce(relu(x))):
    #
    #       . a a a .      row i-1 (a): final once row i-1 is drawn, so its part of every
    #       . b o . .      position of row i is one convolution per row (`start_row`)
    #                      row i (b, o): per subpixel, one matrix product (`step`)
    #
    # So per subpixel the block is three ReLUs and three matrix products at o, the last one
    # adding the residual (x is its bias argument) and writing the output straight into the
    # next layer's row. u is kept along row i, and becomes the row above when the row is
    # done. A subpixel's value only changes later positions, so once the last channel of
    # (i, j) is drawn the kept values at (i, j) are final.

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> MaskedConvBlockCache:
        h = self.conv.out_channels
        z = lambda *s: like.new_zeros(*s)
        return MaskedConvBlockCache(
            x_row=z(n, width, 2 * h), pad=0, rx=z(n, 2 * h), a=z(n, h), c=z(n, h),
            rc=torch.cat([z(n, h), like.new_ones(n, 1)], 1), u_row=z(n, 1 + width, h), prev=z(n, 1, width + 2, h),
            w_reduce=self.reduce.matrix().T, b_reduce=self.reduce.bias,
            w_cur=self.conv.centre_row(), w_above=self.conv.rows_above(),
            w_expand=torch.cat([self.expand.matrix().T, self.expand.bias[None]]))

    def start_row(self, cache: MaskedConvBlockCache, cond_row: torch.Tensor | None = None) -> None:
        """The 3x3 layer's rows-above part and bias at every position of the row: (W, n, h)."""
        cache.above = conv_rows(cache.prev, cache.w_above, self.conv.bias)

    def step(self, cache: MaskedConvBlockCache, j: int, dest: torch.Tensor) -> None:
        """The block at (i, j) from its input at column j of the kept row -> `dest` (n, 2h)."""
        h, x, u_row, rc = self.conv.out_channels, cache.x_row[:, j], cache.u_row, cache.rc
        torch.clamp(x, min=0, out=cache.rx)  # relu(x)  (n, 2h)
        torch.addmm(cache.b_reduce, cache.rx, cache.w_reduce, out=cache.a)  # 1x1: (n, h)
        torch.clamp(cache.a, min=0, out=u_row[:, j + 1])  # u at o, kept along the row
        # (n, 2 positions (j-1, j) x h) @ (2h, h): row i's part of the 3x3 kernel, + rows above and bias
        torch.addmm(cache.above[j], u_row[:, j: j + 2].flatten(1), cache.w_cur, out=cache.c)
        torch.clamp(cache.c, min=0, out=rc[:, :h])  # [relu(c) | 1]
        if self.use_residual:  # 1x1 back to 2h, + its bias, + x
            torch.addmm(x, rc, cache.w_expand, out=dest)
        else:
            torch.mm(rc, cache.w_expand, out=dest)

    def finish_row(self, cache: MaskedConvBlockCache, cond_row: torch.Tensor | None = None) -> None:
        """This row's u becomes the row above."""
        cache.prev[:, 0, 1:-1] = cache.u_row[:, 1:]


@dataclass(slots=True)
class MaskedConvBlockCache(RowCache):
    """A MaskedConvBlock's sampling state (`RowCached`): x_row (n, W, 2h), no padding;
    u = relu(reduce(relu(x))), the 3x3 layer's input."""

    rx: torch.Tensor  # (n, 2h): relu(x) at o
    a: torch.Tensor  # (n, h): reduce(relu(x)) at o
    c: torch.Tensor  # (n, h): the 3x3 layer's output at o
    rc: torch.Tensor  # (n, h + 1): [relu(c) | 1] at o
    u_row: torch.Tensor  # (n, 1 + W, h): u of row i, one zero column on the left
    prev: torch.Tensor  # (n, 1, W + 2, h): u of row i-1, one zero column each side
    w_reduce: torch.Tensor  # (2h, h)
    b_reduce: torch.Tensor  # (h,)
    w_cur: torch.Tensor  # (2h, h): the 3x3 kernel's centre row, columns j-1, j
    w_above: torch.Tensor  # (h, h, 1, 3): its row above
    w_expand: torch.Tensor  # (h + 1, 2h): [W ; bias] of the 1x1 back to 2h
    above: torch.Tensor = field(init=False)  # (W, n, h): the rows-above part and bias (start_row)
