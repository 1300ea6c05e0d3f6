"""PixelCNN: a stack of masked convolutions.

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
section 3.4 (https://arxiv.org/abs/1601.06759).

    x ─ 7x7 mask A ─┬─ ReLU ─ 3x3 mask B ─(+)─ ... ─ head (1x1 mask B layers) ─ logits
                    └───────────────────────┘   residual, `recurrent_length` times

Every layer only looks up and to the left, so the receptive field of a pixel is a
triangle above it with a blind spot to its upper right (Gated PixelCNN removes it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.models.base import AutoregressiveModel, OutputHead, run_layers
from pixelexp.models.rowwise import sample_rowwise
from pixelexp.nn.masked import MaskedConv2d, conv_rows


class PixelCNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: features of every masked layer.
        recurrent_length: number of 3x3 mask-B layers.
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: add each 3x3 layer's input to its output.
        use_skip: feed the sum of all layers' outputs to the head.
    """

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False):
        super().__init__(image_shape, levels)
        C = self.image_shape[0]
        self.use_residual = use_residual
        self.use_skip = use_skip
        self.input = MaskedConv2d(C, hidden_dims, 7, "A", C)
        self.layers = nn.ModuleList(
            MaskedConvBlock(hidden_dims, C, use_residual) for _ in range(recurrent_length))
        self.head = OutputHead(hidden_dims, out_hidden_dims, out_recurrent_length, C, self.levels)
        # Each k x k layer reaches k // 2 rows further up; the 1x1 head reaches none.
        self.rows_above = 3 + recurrent_length

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.input(x), self.layers, self.use_skip)  # (B, h, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cached generation (Ramachandran et al., 2017, Fast Generation for Convolutional
        Autoregressive Models): every layer keeps its input along the current row and the
        row above, and a new subpixel computes each layer at its own position only
        (`MaskedConvBlock.step`, two small operations; the row loop is the PixelRNNs'
        `pixelexp.models.rowwise`). Same draws as `naive_sample` for the same generator
        (tested)."""
        self._check_labels(labels, n)
        device = device or next(self.parameters()).device
        return sample_rowwise(self, n, device, generator)


class MaskedConvBlock(nn.Module):
    """ReLU, then a 3x3 mask-B convolution; the input added back when residual."""

    def __init__(self, channels: int, image_channels: int, use_residual: bool):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, 3, "B", image_channels)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(x))
        return x + y if self.use_residual else y

    # ------------------------------------------------------------ pixel by pixel, for sampling
    # A 3x3 mask-B kernel at o reads two rows of the layer's input:
    #
    #       . a a a .      row i-1 (a): final once row i-1 is drawn, so its part of every
    #       . b o . .      position of row i is one convolution per row (`start_row`)
    #                      row i (b, o): per subpixel, one matrix product (`step`)
    #
    # The current row is kept as [relu(x) | x] per position, so that product also adds the
    # residual (an identity block on x at o) and writes the output straight into the next
    # layer's row. A subpixel's value only changes later positions, so once the last
    # channel of (i, j) is drawn the kept values at (i, j) are final.

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> dict:
        hd = self.conv.out_channels
        cur = like.new_zeros(n, 1 + width, 2 * hd)  # row i: [relu(x) | x], one zero column on the left
        w_cur = like.new_zeros(2, 2 * hd, hd)  # positions (j-1, j) x [relu(x) | x] -> out
        w_cur[:, :hd] = self.conv.centre_row().view(2, hd, hd)
        if self.use_residual:
            w_cur[1, hd:] = torch.eye(hd, dtype=like.dtype, device=like.device)
        return {
            "cur": cur, "x_row": cur[..., hd:], "pad": 1,  # x_row: where the layer below writes
            "prev": like.new_zeros(n, 1, width + 2, hd),  # relu(x) of row i-1, zero columns each side
            "w_cur": w_cur.flatten(0, 1), "w_above": self.conv.rows_above(),  # (4h, h), (h, h, 1, 3)
        }

    def start_row(self, cache: dict, cond_row=None) -> None:
        """The rows-above part and the bias at every position of the row: (W, n, h)."""
        cache["above"] = conv_rows(cache["prev"], cache["w_above"], self.conv.bias)

    def step(self, cache: dict, j: int, dest: torch.Tensor) -> None:
        """The block at (i, j) from its input at column j of the kept row -> `dest` (n, h)."""
        hd, cur = self.conv.out_channels, cache["cur"]
        torch.clamp(cur[:, j + 1, hd:], min=0, out=cur[:, j + 1, :hd])  # relu(x) at o
        # (n, 2 positions x [relu(x) | x]) @ (4h, h): row i's part of the kernel [+ the residual]
        torch.addmm(cache["above"][j], cur[:, j: j + 2].flatten(1), cache["w_cur"], out=dest)

    def finish_row(self, cache: dict, cond_row=None) -> None:
        """This row's relu(x) becomes the row above."""
        hd = self.conv.out_channels
        cache["prev"][:, 0, 1:-1] = cache["cur"][:, 1:, :hd]
