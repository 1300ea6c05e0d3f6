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

    def _row(self, band: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        """Features of the band's last row, given each layer's previous-row (h, c)."""
        h = self.input(self.scale(band))[:, :, -1:]  # (n, 2h, 1, W)
        new_states, total = [], 0
        for layer, (h_prev, c_prev) in zip(self.layers, states):
            g_in = layer.input_to_state(h)[:, :, 0].transpose(1, 2)  # (n, W, 4h)
            h_row, c_row = layer.row_step(g_in, h_prev, c_prev, layer.state_to_state.weight)
            h = layer.finish(h, h_row.transpose(1, 2)[:, :, None])  # (n, 2h, 1, W)
            new_states.append((h_row, c_row))
            total = total + h
        return (total if self.use_skip else h), new_states

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Draw n images keeping each layer's previous-row state: per subpixel one row of
        every layer is computed, not the whole image. Same draws as the naive sampler
        for the same generator (tested)."""
        self._check_labels(labels, n)
        C, H, W = self.image_shape
        device = device or next(self.parameters()).device
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        like = self.input.weight
        states = [(like.new_zeros(n, W, layer.hidden), like.new_zeros(n, W, layer.hidden))
                  for layer in self.layers]
        reach = self.input.kernel_size[0] // 2
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                top = max(0, i - reach)
                for j in range(W):
                    for c in range(C):
                        feats, _ = self._row(x[:, :, top:i + 1], states)
                        logits = self.head(feats)[:, :, 0, j]  # (n, C) or (n, C*L)
                        x[:, c, i, j] = self._draw_channel(logits, c, draws)
                _, states = self._row(x[:, :, top:i + 1], states)  # the finished row's states
        return x
