"""Multi-Scale PixelRNN (`multiscale_pixel_rnn`).

Pixel Recurrent Neural Networks, van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016,
section 3.5 (https://arxiv.org/abs/1601.06759).

The small image s is every `scale_stride`-th pixel of x in both directions. An
unconditional PixelRNN models s; a conditional PixelRNN models the remaining pixels
given s, which reaches every layer's input-to-state map through a learned upsampling
network and a 1x1 convolution (the layers' `cond_to_state`):

    x ──> s = x[::2, ::2] ──> PixelRNN ─────────────────────────────────> log p(s)
     │         └─ 3x3 conv ─ ReLU ─ deconv (kernel = stride = 2) ─┐ (to every layer's gates)
     └─────────────────────────────────────────────────────────> PixelRNN(x | s) ─> log p(rest | s)

    log p(x) = log p(s) + log p(rest | s)

a joint likelihood in the order: the small image's pixels in raster order, then the
other pixels in raster order (`generation_order`). `log_prob(x)` gives each subpixel
the term of the model that predicts it (at the small image's positions the small
PixelRNN's, the conditional one's logits there are discarded), so bits/dim compare
with the other models. Both parts are Diagonal BiLSTM PixelRNNs with the same
hyper-parameters.

The conditioning (`condition`), with S = scale_stride, h = hidden_dims, the small
image's size (h_s, w_s) = (ceil(H/S), ceil(W/S)):

    small image, scaled          (B, C, h_s, w_s)
      ─ 3x3 conv, padding 1, ReLU ─> e   (B, 2h, h_s, w_s): each small pixel's neighbourhood
      ─ 1x1 conv to 2h*S*S ─> (B, 2h*S*S, h_s, w_s)
      ─ pixel_shuffle(S) ─> (B, 2h, S*h_s, S*w_s), cropped to (B, 2h, H, W)

Section 3.5 of the paper upsamples the small image with a convolutional network with
deconvolutional layers to a c x n x n map, which every layer of the conditional PixelRNN
maps to its gates with an unmasked 1x1 convolution (here `cond_to_state`). The upsampling
step above is a deconvolution (transposed convolution) of kernel S and stride S: its
kernels do not overlap, so position (S*a + u, S*b + v) of the full map is
M_uv e[:, a, b] + b_uv, one learned linear map (and bias) per offset (u, v) of the S x S
block, applied to the features of the block's small pixel; the 1x1 conv holds the S*S
maps M_uv stacked and pixel_shuffle puts offset (u, v) in its place (the same as
F.conv_transpose2d with the weight reshaped, plus a bias per offset where a transposed
conv has one per channel; tested). So the S*S positions of a block each get their own
conditioning, and the network is told which offset it predicts (the per-offset bias
tells it even where the block's features are all zero), where nearest-neighbour
upsampling would give them all one vector. The whole small image is known before any other
pixel is drawn, so neither convolution is masked: the conditioning depends on the small
image only, and p(rest | s) stays causal.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        k = 2 * hidden_dims  # features of the conditioning map
        self.embed = nn.Conv2d(C, k, 3, padding=1)  # the whole small image is known: unmasked
        # The deconvolution of kernel and stride s: one linear map per offset of an s x s block
        # (`condition`), as a 1x1 conv to the s*s offsets' features, which pixel_shuffle places.
        self.upsample = nn.Conv2d(k, k * s * s, 1)
        self.rest = DiagonalBiLSTMPixelRNN(self.image_shape, levels, cond_channels=k, **kw)
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
        """Small image (B, C, ceil(H/s), ceil(W/s)) ints -> conditioning map (B, 2h, H, W):
        3x3 conv, ReLU, then a map of its own for each offset of an s x s block."""
        _, H, W = self.image_shape
        e = F.relu(self.embed(self.scale(small_x)))  # (B, 2h, ceil(H/s), ceil(W/s))
        up = F.pixel_shuffle(self.upsample(e), self.stride)  # (B, 2h, s*ceil(H/s), s*ceil(W/s))
        return up[:, :, :H, :W]

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
