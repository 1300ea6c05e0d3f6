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
import torch.nn.functional as F

from pixelexp.models.base import AutoregressiveModel, OutputHead, run_layers
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
        with torch.autocast(torch.device(device).type, enabled=False):
            return self._sample(n, device, generator, given, known, cond)

    def _sample(self, n, device, generator, given, known, cond) -> torch.Tensor:
        C, H, W = self.image_shape
        k = self.input.kernel_size[0] // 2  # rows above that the 7x7 input layer sees
        like = self.input.weight
        img = like.new_zeros(n, H + k, W + 2 * k, C)  # scaled image, channels last, zero padding above and beside
        if given is not None:  # the known pixels are read from here; the rest is overwritten before it is read
            img[:, k:, k: k + W] = self.scale(given).permute(0, 2, 3, 1)
        known = torch.zeros(H, W, dtype=torch.bool) if known is None else known.cpu()
        caches = [layer.new_cache(n, W, like) for layer in self.layers]
        feats = like.new_zeros(n, self.input.out_channels)  # the last layer's output at (i, j)
        dests = [cache["x_row"] for cache in caches[1:]]  # where each layer writes (column j)
        w0 = self.input.weight * self.input.mask  # (2h, C, 7, 7)
        w_cur = w0[:, :, k, : k + 1].permute(2, 1, 0).flatten(0, 1)  # row i, cols j-k..j x C -> (2h)
        head = [((c.weight * c.mask)[:, :, 0, 0], c.bias) for c in (*self.head.hidden, self.head.logits)]
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                # the 7x7 layer's part from the rows above, at every position of row i: (W, n, 2h)
                above = F.conv2d(img[:, i: i + k].permute(0, 3, 1, 2), w0[:, :, :k], self.input.bias)
                above = above[:, :, 0].permute(2, 0, 1).contiguous()
                cond_row = None if cond is None else cond[:, :, i]  # (n, K, W)
                for layer, cache in zip(self.layers, caches):
                    layer.start_row(cache, cond_row)
                for j in range(W):
                    for c in range(1 if known[i, j] else C):  # a known pixel: just its states
                        torch.addmm(above[j], img[:, i + k, j: j + k + 1].flatten(1), w_cur,
                                    out=caches[0]["x_row"][:, j])  # the input layer at (i, j)
                        logits = self._at(caches, dests, feats, head, j)  # (n, C) or (n, C*L)
                        if not known[i, j]:
                            v = self._draw_channel(logits, c, draws)  # (n,) ints
                            img[:, i + k, j + k, c] = v if self.levels == 2 else self.scale(v)
                for layer, cache in zip(self.layers, caches):
                    layer.finish_row(cache, cond_row)
        return self.unscale(img[:, k:, k: k + W].permute(0, 3, 1, 2)).contiguous()  # (n, C, H, W) ints

    def _at(self, caches, dests, feats, head, j: int) -> torch.Tensor:
        """Every layer at column j of the current row, from the input layer's output in
        caches[0]["x_row"][:, j] -> the head's logits there."""
        for layer, cache, dest in zip(self.layers, caches, dests + [None]):
            layer.step(cache, j, feats if dest is None else dest[:, j])
        x = feats
        if self.use_skip:  # the sum of all layers' outputs feeds the head
            x = torch.stack([d[:, j] for d in dests] + [feats]).sum(0)
        for w, b in head:  # ReLU, 1x1 layer, ..., ReLU, 1x1 layer to the logits
            x = torch.addmm(b, F.relu(x), w.T)
        return x

