"""PixelRNN with Diagonal BiLSTM layers (`diagonal_bilstm`, alias `pixel_rnn`).

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
sections 3.2 and 3.4 (https://arxiv.org/abs/1601.06759).

    x ─ 7x7 mask A (2h) ─┬─ Diagonal BiLSTM (h per direction) ─ 1x1 mask B (2h) ─(+)─ ...
                         └─────────────────────────────────────────────────────┘
      ... `recurrent_length` layers ─ head (1x1 mask B layers) ─ logits

As in the paper, the residual stream has 2h features and each LSTM direction h. The
two directions together see every pixel above and to the left (see
`pixelexp.nn.lstm` for why the right-to-left one is shifted down a row).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pixelexp.models.base import AutoregressiveModel, OutputHead, run_layers
from pixelexp.models.rowwise import sample_rowwise
from pixelexp.nn.lstm import DiagonalBiLSTM
from pixelexp.nn.masked import MaskedConv2d


class DiagonalBiLSTMPixelRNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: LSTM units per direction (h); the residual stream has 2h.
        recurrent_length: number of Diagonal BiLSTM layers.
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: residual connection around each LSTM layer.
        use_skip: feed the sum of all layers' outputs to the head.
        cond_channels: features of a conditioning map given to every layer's gates
            (`logits_given`); used by the multi-scale model.
    """

    diagonal_scan = True  # model.impl=triton applies

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False, cond_channels: int = 0):
        super().__init__(image_shape, levels)
        C = self.image_shape[0]
        width = 2 * hidden_dims
        self.use_skip = use_skip
        self.input = MaskedConv2d(C, width, 7, "A", C)
        self.layers = nn.ModuleList(
            DiagonalBiLSTM(width, hidden_dims, C, use_residual, cond_channels) for _ in range(recurrent_length))
        self.head = OutputHead(width, out_hidden_dims, out_recurrent_length, C, self.levels)

    def features(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            return run_layers(self.input(x), self.layers, self.use_skip)  # (B, 2h, H, W)
        h, total = self.input(x), 0
        for layer in self.layers:
            h = layer(h, cond)
            total = total + h
        return total if self.use_skip else h

    def logits_given(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logits with a conditioning map (B, cond_channels, H, W) added to every layer."""
        B, C, H, W = x.shape
        out = self.head(self.features(self.scale(x), cond))
        return out if self.levels == 2 else out.view(B, C, self.levels, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None,
               given: torch.Tensor | None = None, known: torch.Tensor | None = None,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """Draw n images, keeping each layer's states instead of recomputing the image.

        Per subpixel it computes one position of every layer (the left-to-right step:
        `DiagonalBiLSTM.step`, about ten small operations), and per row what only depends
        on finished rows (the input layer's rows above, each layer's states above) and,
        once the row is drawn, its right-to-left scan: O(H*W*layers) small steps instead
        of O(H*W) whole forward passes. It draws in the same order and shapes as
        `AutoregressiveModel.sample`, so with the same generator it returns the same
        images (tested).

        For the multi-scale model: `given` (n, C, H, W) holds pixels already drawn where
        `known` (H, W) is true (they are kept, not drawn), and `cond` (n, K, H, W) is the
        conditioning map of `logits_given`.
        """
        self._check_labels(labels, n)
        device = device or next(self.parameters()).device
        return sample_rowwise(self, n, device, generator, given, known, cond)
