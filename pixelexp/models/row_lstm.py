"""PixelRNN with Row LSTM layers (`row_lstm`).

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
section 3.1 (https://arxiv.org/abs/1601.06759).

    x ─ 7x7 mask A (2h) ─┬─ Row LSTM (h units, 3x1 convolutions) ─ 1x1 mask B (2h) ─(+)─ ...
                         └──────────────────────────────────────────────────────────┘
      ... `recurrent_length` layers ─ head (1x1 mask B layers) ─ logits

Each layer processes the image row by row; its receptive field is a triangle above
the pixel (see `pixelexp.nn.row_lstm`), wider with every layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pixelexp.models.base import AutoregressiveModel, OutputHead, run_layers
from pixelexp.models.rowwise import sample_rowwise
from pixelexp.nn.masked import MaskedConv2d
from pixelexp.nn.row_lstm import RowLSTM


class RowLSTMPixelRNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: LSTM units (h); the residual stream has 2h.
        recurrent_length: number of Row LSTM layers.
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: residual connection around each LSTM layer.
        use_skip: feed the sum of all layers' outputs to the head.
    """

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False):
        super().__init__(image_shape, levels)
        C = self.image_shape[0]
        width = 2 * hidden_dims
        self.use_skip = use_skip
        self.input = MaskedConv2d(C, width, 7, "A", C)
        self.layers = nn.ModuleList(
            RowLSTM(width, hidden_dims, C, use_residual) for _ in range(recurrent_length))
        self.head = OutputHead(width, out_hidden_dims, out_recurrent_length, C, self.levels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.input(x), self.layers, self.use_skip)  # (B, 2h, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Draw n images keeping each layer's states of the row above and along the current
        row: per subpixel every layer computes its own position only
        (`pixelexp.models.rowwise`). Same draws as the naive sampler for the same
        generator (tested)."""
        self._check_labels(labels, n)
        device = device or next(self.parameters()).device
        return sample_rowwise(self, n, device, generator)
