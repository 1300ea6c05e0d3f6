"""Gated PixelCNN: vertical and horizontal stacks with gated activations.

Conditional Image Generation with PixelCNN Decoders, van den Oord, Kalchbrenner,
Vinyals, Espeholt, Graves & Kavukcuoglu, NeurIPS 2016 (https://arxiv.org/abs/1606.05328).

PixelCNN's masked k x k kernels leave a blind spot above and to the right of each
pixel. Here two stacks split the context:

    vertical stack (k//2+1) x k:      horizontal stack 1 x (k//2+1), masked at the pixel:
      x x x x x   rows above,           . . . . .
      x x x x x   and the current       . . . . .
      x x x x x   row (unshifted)       x x o . .   left of the pixel (+ its earlier channels)
      . . . . .                         . . . . .

The vertical stack sees all rows up to the current one; it reaches the horizontal
stack only shifted down one row (rows strictly above), never the other way round.
Each layer: y = tanh(a) * sigmoid(b) with [a, b] = conv(x) (+ a label embedding when
class-conditional); the horizontal stack adds [a, b] of the down-shifted vertical
stack through a 1x1 convolution and has a residual connection around each layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.models.base import AutoregressiveModel, OutputHead
from pixelexp.nn.masked import MaskedConv2d, channel_groups
from pixelexp.nn.shifts import down_shift


def gate(x: torch.Tensor) -> torch.Tensor:
    """(B, 2F, H, W) laid out [a | b] -> tanh(a) * sigmoid(b), (B, F, H, W)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class VerticalConv(nn.Conv2d):
    """(k//2+1) x k convolution whose output row i sees input rows i-k//2 .. i."""

    def __init__(self, in_channels: int, out_channels: int, k: int):
        super().__init__(in_channels, out_channels, (k // 2 + 1, k))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.k // 2
        return super().forward(F.pad(x, (p, p, p, 0)))  # pad left, right and top only


class GatedLayer(nn.Module):
    """One layer of both stacks.

    Args:
        in_channels: features in (the image's C for the first layer).
        channels: F, features out of each stack.
        k: kernel width.
        image_channels: channel groups of the horizontal stack's masks.
        mask_type: "A" for the first layer (it reads the image), else "B".
        residual: add the horizontal input to its output.
        num_classes: > 0 for a label embedding added to the gates.
    """

    def __init__(self, in_channels: int, channels: int, k: int, image_channels: int, mask_type: str,
                 residual: bool, num_classes: int = 0):
        super().__init__()
        C = image_channels
        pair_groups = channel_groups(channels, C).repeat(2)  # [a | b], each a's group = its b's
        self.residual = residual
        self.vertical = VerticalConv(in_channels, 2 * channels, k)
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, k), mask_type, C,
                                       out_groups=pair_groups)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical -> horizontal (rows above)
        self.out = MaskedConv2d(channels, channels, 1, "B", C)
        self.embed = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None = None):
        v_pre = self.vertical(v)  # (B, 2F, H, W): rows <= i
        h_pre = self.horizontal(h) + self.link(down_shift(v_pre))  # rows < i only from v
        if self.embed is not None:
            e = self.embed(labels)[:, :, None, None]  # (B, 2F, 1, 1)
            v_pre, h_pre = v_pre + e, h_pre + e
        h_out = self.out(gate(h_pre))
        return gate(v_pre), (h + h_out if self.residual else h_out)


class GatedPixelCNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: F, features of each stack.
        recurrent_length: number of gated layers after the first (7-wide) one.
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: residual connections on the horizontal stack (always on in the paper).
        use_skip: feed the sum of all horizontal outputs to the head.
        conditional: add a label embedding to every layer's gates.
        num_classes: labels in [0, num_classes) when conditional.
    """

    def __init__(self, image_shape, levels, hidden_dims: int = 16, recurrent_length: int = 7,
                 out_hidden_dims: int = 32, out_recurrent_length: int = 2, use_residual: bool = True,
                 use_skip: bool = False, conditional: bool = False, num_classes: int = 10):
        super().__init__(image_shape, levels)
        C = self.image_shape[0]
        self.conditional = conditional
        self.use_skip = use_skip
        n_cls = num_classes if conditional else 0
        self.layers = nn.ModuleList(
            [GatedLayer(C, hidden_dims, 7, C, "A", residual=False, num_classes=n_cls)]
            + [GatedLayer(hidden_dims, hidden_dims, 3, C, "B", use_residual, num_classes=n_cls)
               for _ in range(recurrent_length)])
        # Rows above a pixel that reach it: 3 (7-wide first layer) + 1 per 3-wide layer,
        # + 1 for the down-shift into the horizontal stack.
        self.rows_above = 3 + recurrent_length + 1
        self.head = OutputHead(hidden_dims, out_hidden_dims, out_recurrent_length, C, self.levels)

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        v = h = x
        total = 0
        for layer in self.layers:
            v, h = layer(v, h, labels)
            total = total + h
        return total if self.use_skip else h  # (B, F, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cached generation (as in Ramachandran et al., 2017): the vertical stack runs once
        per finished row (one output row per layer, from the kept rows above it); the
        horizontal stack runs per subpixel at that position only, from the kept row to
        its left and the vertical stack's row above. Same draws as `naive_sample` for the
        same generator (tested)."""
        C, H, W = self.image_shape
        device = device or next(self.parameters()).device
        if labels is not None:
            labels = labels.to(device).long()
            n = len(labels) if n is None else n
        self._check_labels(labels, n)
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        like = self.head.logits.weight
        pads = [layer.vertical.k // 2 for layer in self.layers]
        ins = [C] + [layer.out.out_channels for layer in self.layers[:-1]]
        # Kept maps, zero-padded as the convolutions pad: vertical inputs (p rows above, p
        # columns each side) and horizontal inputs of the current row (p columns on the left).
        vmaps = [like.new_zeros(n, c, H + p, W + 2 * p) for c, p in zip(ins, pads)]
        hrows = [like.new_zeros(n, c, W + p) for c, p in zip(ins, pads)]
        emb = [layer.embed(labels) if layer.embed is not None else 0 for layer in self.layers]  # (n, 2F)
        # link(down-shifted vertical) for the current row: row 0 sees the link's bias only.
        links = [layer.link.bias.expand(n, W, -1) for layer in self.layers]  # (n, W, 2F)
        wv = [layer.vertical.weight for layer in self.layers]
        wh = [(layer.horizontal.weight * layer.horizontal.mask)[:, :, 0, : p + 1].flatten(1)
              for layer, p in zip(self.layers, pads)]
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                for j in range(W):
                    for c in range(C):
                        feats = self._h_at(hrows, links, emb, wh, pads, j)
                        logits = self.head(feats[:, :, None, None])[:, :, 0, 0]  # (n, C) or (n, C*L)
                        x[:, c, i, j] = self._draw_channel(logits, c, draws)
                        hrows[0][:, c, j + pads[0]] = self.scale(x[:, c, i, j])
                self._finish_row(x, i, vmaps, hrows, links, emb, wv, pads)
        return x

    def _h_at(self, hrows, links, emb, wh, pads, j: int) -> torch.Tensor:
        """The horizontal stack at (i, j) of the current row -> features (n, F); keeps each
        layer's output at j in the next layer's row."""
        total = 0
        h = None
        for l, (layer, p) in enumerate(zip(self.layers, pads)):
            window = hrows[l][:, :, j: j + p + 1]  # columns j-p .. j
            pre = torch.addmm(layer.horizontal.bias, window.flatten(1), wh[l].T) + links[l][:, j] + emb[l]
            out = layer.out(gate(pre[:, :, None, None]))[:, :, 0, 0]  # (n, F)
            h = hrows[l][:, :, j + p] + out if layer.residual else out
            if l + 1 < len(self.layers):
                hrows[l + 1][:, :, j + pads[l + 1]] = h
            total = total + h
        return total if self.use_skip else h

    def _finish_row(self, x, i: int, vmaps, hrows, links, emb, wv, pads) -> None:
        """Row i is drawn: run the vertical stack on it (one row per layer), keep
        link(vertical) for row i + 1, and start the next row's horizontal inputs."""
        v_row = self.scale(x[:, :, i])  # (n, C, W): layer 0's vertical input
        for l, (layer, p) in enumerate(zip(self.layers, pads)):
            vmaps[l][:, :, i + p, p: p + v_row.shape[-1]] = v_row
            window = vmaps[l][:, :, i: i + p + 1]  # rows i-p .. i, padded columns
            pre = F.conv2d(window, wv[l], layer.vertical.bias)[:, :, 0]  # (n, 2F, W)
            links[l] = layer.link(pre[:, :, None])[:, :, 0].transpose(1, 2)  # (n, W, 2F), for row i+1
            pre = pre + (emb[l][:, :, None] if torch.is_tensor(emb[l]) else 0)
            v_row = gate(pre)
        for r in hrows:
            r.zero_()

