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
from pixelexp.nn.masked import MaskedConv2d


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
        Autoregressive Models): every layer's map is kept for the positions already
        generated, and a new subpixel computes each layer at its own position only, from
        the window its kernel reads in the layer below:

            layer k-1 map (kept)     window of a 3x3 mask-B kernel at o (its lower row
              . . . . . .            is masked out, so only rows i-1 and i are read):
              . x x x . .
              . x o . . .            o is computed in this step, x were kept

        O(layers) small matrix products per subpixel instead of a forward pass over the
        image. A subpixel's value only changes later positions, so after the last channel
        of (i, j) is drawn the kept values at (i, j) are final. Same draws as
        `naive_sample` for the same generator (tested)."""
        self._check_labels(labels, n)
        C, H, W = self.image_shape
        device = device or next(self.parameters()).device
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        k0 = self.input.kernel_size[0] // 2  # 3 for the 7x7 input layer
        like = self.input.weight
        img = like.new_zeros(n, C, H + k0, W + 2 * k0)  # scaled image, zero padding above and beside
        maps = [like.new_zeros(n, self.input.out_channels, H + 1, W + 2) for _ in range(len(self.layers))]
        # Each kernel's rows from the top to its centre row, flattened: (out, in * rows * cols).
        w0 = self._upper(self.input)
        ws = [self._upper(block.conv) for block in self.layers]
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                for j in range(W):
                    for c in range(C):
                        logits = self._at(img, maps, w0, ws, i, j, k0)  # (n, C) or (n, C*L)
                        x[:, c, i, j] = self._draw_channel(logits, c, draws)
                        img[:, c, i + k0, j + k0] = self.scale(x[:, c, i, j])
        return x

    @staticmethod
    def _upper(conv: MaskedConv2d) -> torch.Tensor:
        cy = conv.kernel_size[0] // 2
        return (conv.weight * conv.mask)[:, :, : cy + 1].flatten(1)

    def _at(self, img, maps, w0, ws, i: int, j: int, k0: int) -> torch.Tensor:
        """Every layer at position (i, j), from the kept maps; writes (i, j) of each map."""
        window = img[:, :, i: i + k0 + 1, j: j + 2 * k0 + 1]  # rows i-k0..i, cols j-k0..j+k0
        a = torch.addmm(self.input.bias, window.flatten(1), w0.T)  # (n, h): the 7x7 mask-A layer
        total = 0
        for block, w, m in zip(self.layers, ws, maps):
            m[:, :, i + 1, j + 1] = a  # this layer's input at (i, j)
            win = F.relu(m[:, :, i: i + 2, j: j + 3])  # rows i-1..i, cols j-1..j+1
            y = torch.addmm(block.conv.bias, win.flatten(1), w.T)
            a = a + y if block.use_residual else y
            if self.use_skip:  # the sum of all layers' outputs feeds the head
                total = total + a
        feats = total if self.use_skip and len(self.layers) else a
        return self.head(feats[:, :, None, None])[:, :, 0, 0]


class MaskedConvBlock(nn.Module):
    """ReLU, then a 3x3 mask-B convolution; the input added back when residual."""

    def __init__(self, channels: int, image_channels: int, use_residual: bool):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, 3, "B", image_channels)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(x))
        return x + y if self.use_residual else y
