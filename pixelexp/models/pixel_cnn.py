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


class MaskedConvBlock(nn.Module):
    """ReLU, then a 3x3 mask-B convolution; the input added back when residual."""

    def __init__(self, channels: int, image_channels: int, use_residual: bool):
        super().__init__()
        self.conv = MaskedConv2d(channels, channels, 3, "B", image_channels)
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(x))
        return x + y if self.use_residual else y
