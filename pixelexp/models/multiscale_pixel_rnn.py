"""Multi-Scale PixelRNN (`multiscale_pixel_rnn`).

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
section 3.5 (https://arxiv.org/abs/1601.06759).

The small image s is every `scale_stride`-th pixel of x in both directions. An
unconditional PixelRNN models s; a conditional PixelRNN models the remaining pixels
given s, which reaches every layer's input-to-state map through an embedding,
nearest-neighbour upsampling and a 1x1 convolution:

    x ──> s = x[::2, ::2] ──> PixelRNN ─────────────> log p(s)
     │         └─ 3x3 conv ─ upsample ─┐ (to every layer's gates)
     └───────────────────────────> PixelRNN(x | s) ─> log p(rest | s)

    log p(x) = log p(s) + log p(rest | s)

a joint likelihood in the order: the small image's pixels in raster order, then the
other pixels in raster order (`generation_order`). `log_prob(x)` gives each subpixel
the term of the model that predicts it, so bits/dim compare with the other models.
Both parts are Diagonal BiLSTM PixelRNNs with the same hyper-parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from pixelexp.models.base import AutoregressiveModel
from pixelexp.models.diagonal_bilstm import DiagonalBiLSTMPixelRNN


class MultiScalePixelRNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims, recurrent_length, out_hidden_dims, out_recurrent_length,
        use_residual, use_skip: of both PixelRNNs (see `DiagonalBiLSTMPixelRNN`).
        scale_stride: the small image takes every scale_stride-th row and column.
    """

    diagonal_scan = True  # model.impl=triton applies

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False, scale_stride: int = 2):
        super().__init__(image_shape, levels)
        C, H, W = self.image_shape
        s = self.stride = int(scale_stride)
        if s < 2:
            raise ValueError(f"scale_stride must be >= 2, got {scale_stride}")
        kw = dict(hidden_dims=hidden_dims, recurrent_length=recurrent_length, out_hidden_dims=out_hidden_dims,
                  out_recurrent_length=out_recurrent_length, use_residual=use_residual, use_skip=use_skip)
        small_shape = (C, math.ceil(H / s), math.ceil(W / s))
        self.small = DiagonalBiLSTMPixelRNN(small_shape, levels, **kw)
        self.embed = nn.Conv2d(C, 2 * hidden_dims, 3, padding=1)  # the whole small image is known
        self.rest = DiagonalBiLSTMPixelRNN(self.image_shape, levels, cond_channels=2 * hidden_dims, **kw)
        self.head = self.rest.head  # (the base class reads the dtype from here)

    def small_mask(self) -> torch.Tensor:
        """(H, W) bool: the positions of the small image."""
        _, H, W = self.image_shape
        m = torch.zeros(H, W, dtype=torch.bool)
        m[:: self.stride, :: self.stride] = True
        return m

    def generation_order(self) -> list[tuple[int, int, int]]:
        C, H, W = self.image_shape
        small = self.small_mask()
        raster = [(c, i, j) for i in range(H) for j in range(W) for c in range(C)]
        return [p for p in raster if small[p[1], p[2]]] + [p for p in raster if not small[p[1], p[2]]]

    def condition(self, small_x: torch.Tensor) -> torch.Tensor:
        """Small image (B, C, h, w) ints -> conditioning map (B, 2h, H, W)."""
        _, H, W = self.image_shape
        e = self.embed(self.scale(small_x))
        e = e.repeat_interleave(self.stride, dim=2).repeat_interleave(self.stride, dim=3)
        return e[:, :, :H, :W]

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_labels(labels, len(x))
        s = self.stride
        small_x = x[:, :, ::s, ::s]
        out = self.rest.logits_given(x, self.condition(small_x)).clone()  # the rest given s
        out[..., ::s, ::s] = self.small.logits(small_x)  # the small image's own terms
        return out

    def sample_draws(self) -> int:
        return self.small.sample_draws() + self.rest.sample_draws()

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The small image first, then the rest given it (both with the row-state sampler)."""
        self._check_labels(labels, n)
        C, H, W = self.image_shape
        device = device or next(self.parameters()).device
        # One Draws for both stages (a CUDA graph replays the whole run from one tensor).
        with self.sampling(generator, n, device) as draws:
            small = self.small.sample(n, draws, device)
            x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
            x[:, :, :: self.stride, :: self.stride] = small
            return self.rest.sample(n, draws, device, given=x, known=self.small_mask(),
                                    cond=self.condition(small))
