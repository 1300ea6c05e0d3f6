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
        Autoregressive Models): every layer's input map is kept for the positions already
        generated, and a new subpixel computes each layer at its own position only. A
        3x3 mask-B kernel at o reads two rows of the layer below:

              . . . . . .            row i-1 (a): final once row i-1 is done, so its part
              . a a a . .            of every position of row i is one convolution per
              . b o . . .            layer and row (`_row_above`)
                                     row i (b, o): per subpixel, one matrix product

        The kept maps hold [relu(x) | x] per position, so the per-subpixel product also
        adds the residual (an identity block on x at o), and writes its output straight
        into the next layer's map: two small operations per layer and subpixel, where a
        forward pass over the image would cost the whole image. A subpixel's value only
        changes later positions, so after the last channel of (i, j) is drawn the kept
        values at (i, j) are final. Same draws as `naive_sample` for the same generator
        (tested)."""
        self._check_labels(labels, n)
        device = device or next(self.parameters()).device
        with torch.autocast(torch.device(device).type, enabled=False):
            return self._sample(n, device, generator)

    def _sample(self, n: int, device, generator) -> torch.Tensor:
        C, H, W = self.image_shape
        k = self.input.kernel_size[0] // 2  # 3 for the 7x7 input layer
        hd, L = self.input.out_channels, len(self.layers)
        like = self.input.weight
        img = like.new_zeros(n, H + k, W + 2 * k, C)  # scaled image, channels last, zero padding above and beside
        # maps[l] (n, H+1, W+2, 2h): layer l's input [relu(x) | x] (maps[L]: the stack's output),
        # zero padding above and beside (relu(0) = 0: the padding a convolution of relu(x) sees).
        maps = [like.new_zeros(n, H + 1, W + 2, 2 * hd) for _ in range(L + 1)]
        w_in, w_cur = self._split_kernels()
        head = self.head.matrices()
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                above = self._row_above(img, maps, w_in, i)  # L+1 x (W, n, h)
                for j in range(W):
                    for c in range(C):
                        v = self._draw_channel(self._at(img, maps, above, w_cur, head, i, j), c, draws)  # (n,)
                        img[:, i + k, j + k, c] = v if self.levels == 2 else self.scale(v)  # {0, 1}: cast in the copy
        return self.unscale(img[:, k:, k: k + W].permute(0, 3, 1, 2)).contiguous()  # (n, C, H, W) ints

    def _at(self, img, maps, above, w_cur, head, i: int, j: int) -> torch.Tensor:
        """Every layer at (i, j) from the kept maps, writing (i, j) of each -> the head's
        logits there (n, C) or (n, C*L)."""
        hd, L, k = self.input.out_channels, len(self.layers), self.input.kernel_size[0] // 2
        # the 7x7 mask-A layer: (n, (k+1) cols x C) of row i @ ((k+1)C, h), into layer 0's map
        torch.addmm(above[0][j], img[:, i + k, j: j + k + 1].flatten(1), w_cur[0], out=maps[0][:, i + 1, j + 1, hd:])
        for l in range(L):
            torch.clamp(maps[l][:, i + 1, j + 1, hd:], min=0, out=maps[l][:, i + 1, j + 1, :hd])  # relu(x) at o
            # (n, 2 positions x [relu(x) | x]) @ (4h, h): row i's part of the kernel [+ the residual]
            torch.addmm(above[l + 1][j], maps[l][:, i + 1, j: j + 2].flatten(1), w_cur[l + 1],
                        out=maps[l + 1][:, i + 1, j + 1, hd:])
        if self.use_skip and L:  # the sum of all layers' outputs feeds the head
            feats = torch.stack([m[:, i + 1, j + 1, hd:] for m in maps[1:]]).sum(0)
        else:
            feats = maps[L][:, i + 1, j + 1, hd:]  # (n, h)
        return self.head.at(feats, head)

    def _split_kernels(self):
        """The masked kernels cut into their rows above the centre (convolutions over a
        finished row) and their centre row as a matrix on the kept map's channels-last
        window ((window, out), for addmm)."""
        hd = self.input.out_channels
        w_in = [(self.input.rows_above(), self.input.bias)]
        w_cur = [self.input.centre_row()]  # cols j-k..j x C -> ((k+1) C, h)
        for block in self.layers:
            w_in.append((block.conv.rows_above(), block.conv.bias))
            cur = block.conv.bias.new_zeros(2, 2 * hd, hd)  # positions (j-1, j) x channels [relu(x) | x] -> out
            cur[:, :hd] = block.conv.centre_row().view(2, hd, hd)
            if block.use_residual:
                cur[1, hd:] = torch.eye(hd, dtype=cur.dtype, device=cur.device)
            w_cur.append(cur.flatten(0, 1))  # (4h, h)
        return w_in, w_cur

    def _row_above(self, img, maps, w_in, i: int) -> list[torch.Tensor]:
        """Per layer, the part of its output at every position of row i that comes from the
        rows above (final now), bias included: L+1 tensors (W, n, h)."""
        k = self.input.kernel_size[0] // 2
        rows = [img[:, i: i + k]] + [m[:, i: i + 1, :, : m.shape[-1] // 2] for m in maps[:-1]]
        return [conv_rows(r, w, b) for r, (w, b) in zip(rows, w_in)]


class MaskedConvBlock(nn.Module):
    """ReLU, then a 3x3 mask-B convolution; the input added back when residual."""

    def __init__(self, channels: int, image_channels: int, use_residual: bool):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, 3, "B", image_channels)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(x))
        return x + y if self.use_residual else y
