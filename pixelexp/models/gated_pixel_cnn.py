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
stack through a 1x1 convolution, and its gated output goes through a 1x1 convolution
added to the layer's input (the residual). With skip connections each layer also has
its own 1x1 skip convolution of the gated output, and the head reads their sum (as in
WaveNet and PixelCNN++), not the residual stream.

The input is a learned embedding of each subpixel's value (F features per image
channel, `ValueEmbedding`), as in public Gated PixelCNN ports, not the scaled value
itself. Measured on binarized MNIST (10 layers of 32 features, Adam, 600 steps of 32
images), the scaled-value input trails the embedding by about 2 nats per image; neither
a channel of ones (to tell padding from black pixels) nor a larger start of the first
layer closes that gap, so it is the learned input itself that helps.

Weights start Glorot-uniform with zero biases, as public Gated PixelCNN ports do:
PyTorch's default (uniform in +-1/sqrt(fan_in), biases drawn too) starts the gates
smaller and, measured on binarized MNIST, trains to a worse likelihood in the same steps.
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
        skip: give the layer a 1x1 skip convolution of its gated output (`forward`'s third value).
        stream: build the residual 1x1 (the last layer of a skip model has no next layer to feed).
        num_classes: > 0 for a label embedding added to the gates.
    """

    def __init__(self, in_channels: int, channels: int, k: int, image_channels: int, mask_type: str,
                 residual: bool, skip: bool = False, stream: bool = True, num_classes: int = 0):
        super().__init__()
        C = image_channels
        pair_groups = channel_groups(channels, C).repeat(2)  # [a | b], each a's group = its b's
        self.residual = residual
        self.vertical = VerticalConv(in_channels, 2 * channels, k)
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, k), mask_type, C,
                                       out_groups=pair_groups)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical -> horizontal (rows above)
        self.out = MaskedConv2d(channels, channels, 1, "B", C) if stream else None
        self.skip = MaskedConv2d(channels, channels, 1, "B", C) if skip else None
        self.embed = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None = None):
        v_pre = self.vertical(v)  # (B, 2F, H, W): rows <= i
        h_pre = self.horizontal(h) + self.link(down_shift(v_pre))  # rows < i only from v
        if self.embed is not None:
            e = self.embed(labels)[:, :, None, None]  # (B, 2F, 1, 1)
            v_pre, h_pre = v_pre + e, h_pre + e
        g = gate(h_pre)  # (B, F, H, W)
        skip = None if self.skip is None else self.skip(g)
        if self.out is None:
            return gate(v_pre), None, skip
        h_out = self.out(g)
        return gate(v_pre), (h + h_out if self.residual else h_out), skip


class ValueEmbedding(nn.Module):
    """Each subpixel's value -> a learned vector of `dims` features, one table per image
    channel: (B, C, H, W) values, scaled as the models scale them -> (B, C*dims, H, W),
    channel c's features in block c (the masks' channel groups).

    The value is read back from the scaled input and rounded, so each subpixel gets its
    value's row of the table exactly; the gradient is that of the linear interpolation
    between neighbouring rows, so that every input has one (the receptive-field view,
    `pixelexp.tools.receptive`, reads it)."""

    def __init__(self, image_channels: int, levels: int, dims: int):
        super().__init__()
        self.levels = levels
        self.table = nn.Parameter(torch.randn(image_channels, levels, dims))  # (C, L, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        u = x if self.levels == 2 else (x + 1.0) * ((self.levels - 1) / 2.0)  # values in [0, L-1]
        u = u + (u.detach().round() - u.detach())  # the nearest value; the gradient of u
        k = u.detach().clamp(0, self.levels - 2)
        t = (u - k).unsqueeze(-1)  # (B, C, H, W, 1): 0, or 1 for the last value
        rows = torch.arange(C, device=x.device)[None, :, None, None]
        lo, hi = self.table[rows, k.long()], self.table[rows, k.long() + 1]  # (B, C, H, W, dims)
        e = lo + t * (hi - lo)
        return e.permute(0, 1, 4, 2, 3).reshape(B, -1, H, W)  # (B, C*dims, H, W)


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every convolution in `module`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GatedPixelCNN(AutoregressiveModel):
    """Args:
        image_shape: (C, H, W).
        levels: values per subpixel.
        hidden_dims: F, features of each stack.
        recurrent_length: number of gated layers after the first (7-wide) one.
        out_hidden_dims: features of the 1x1 output layers.
        out_recurrent_length: number of ReLU + 1x1 output layers.
        use_residual: residual connections on the horizontal stack (always on in the paper).
        use_skip: feed the sum of every layer's skip convolution to the head.
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
        last = recurrent_length
        self.embed_values = ValueEmbedding(C, self.levels, hidden_dims)
        self.layers = nn.ModuleList(
            GatedLayer(hidden_dims * (C if l == 0 else 1), hidden_dims, 7 if l == 0 else 3, C, "A" if l == 0 else "B",
                       residual=use_residual and l > 0, skip=use_skip, stream=not (use_skip and l == last),
                       num_classes=n_cls)
            for l in range(recurrent_length + 1))
        # Rows above a pixel that reach it: 3 (7-wide first layer) + 1 per 3-wide layer,
        # + 1 for the down-shift into the horizontal stack.
        self.rows_above = 3 + recurrent_length + 1
        self.head = OutputHead(hidden_dims, out_hidden_dims, out_recurrent_length, C, self.levels)
        glorot_init(self)

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        v = h = self.embed_values(x)  # (B, C*F, H, W)
        total = 0
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)
            total = total if skip is None else total + skip
        return total if self.use_skip else h  # (B, F, H, W)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cached generation (as in Ramachandran et al., 2017): the vertical stack runs once
        per finished row (one output row per layer, from the kept rows above it), and so
        does everything the horizontal stack adds from it (the link, the biases, the label
        embedding). Per subpixel, each layer of the horizontal stack is four small
        operations at that position only, on its kept row (channels last, so the window
        to its left is a view):

            pre = row bias + window @ W_h            (n, 2F): [-2a | b]
            s   = sigmoid(pre)
            g   = s_b - 2 s_a s_b                    = sigmoid(b) tanh(a): tanh(a) = 1 - 2 sigmoid(-2a)
            out = [residual +] [g | 1] @ [W_out ; bias], written into the next layer's row
            [skip += [g | 1] @ [W_skip ; bias]]      with skip connections: the head's input

        Same draws as `naive_sample` for the same generator (tested)."""
        device = device or next(self.parameters()).device
        if labels is not None:
            labels = labels.to(device).long()
            n = len(labels) if n is None else n
        self._check_labels(labels, n)
        return self._sample(n, device, generator, labels)

    def _sample(self, n: int, device, generator, labels) -> torch.Tensor:
        C, H, W = self.image_shape
        like = self.head.logits.weight
        F_ = self.layers[0].horizontal.out_channels // 2
        pads = [layer.vertical.k // 2 for layer in self.layers]
        ins = [C * F_] + [F_] * (len(self.layers) - 1)
        # Kept maps, zero-padded as the convolutions pad: vertical inputs (p rows above, p
        # columns each side; vmaps[0] is the drawn image, embedded) and horizontal inputs of
        # the current row, channels last (p columns on the left); the last layer's output
        # goes to `feats`.
        vmaps = [like.new_zeros(n, c, H + p, W + 2 * p) for c, p in zip(ins, pads)]
        hrows = [like.new_zeros(n, W + p, c) for c, p in zip(ins, pads)]
        image = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        feats = like.new_zeros(n, F_)
        gbuf = [torch.cat([like.new_zeros(n, F_), like.new_ones(n, 1)], 1) for _ in self.layers]  # [g | 1]
        sc = torch.cat([like.new_full((F_,), -2.0), like.new_ones(F_)])  # [a | b] -> [-2a | b]
        emb = [layer.embed(labels) if layer.embed is not None else None for layer in self.layers]  # (n, 2F)
        wh = [layer.horizontal.centre_row() * sc for layer in self.layers]  # ((p+1) c_in, 2F): cols j-p..j
        wout = [self._affine(layer.out) for layer in self.layers]  # (F+1, F) or None
        wskip = [self._affine(layer.skip) for layer in self.layers]
        links = [layer.link.bias.view(1, -1, 1).expand(n, -1, W) for layer in self.layers]  # row 0: the bias only
        head = self.head.matrices()
        values = self._value_table(like)  # (C, L, F)
        with self.sampling(generator, n, device) as draws:
            for i in range(H):
                rowb = [self._row_bias(link, layer, e, sc) for link, layer, e in zip(links, self.layers, emb)]
                for j in range(W):
                    for c in range(C):
                        # (n, C) or (n, C*L)
                        logits = self._h_at(hrows, rowb, gbuf, wh, wout, wskip, feats, head, pads, j)
                        v = self._draw_channel(logits, c, draws)  # (n,) ints
                        image[:, c, i, j] = v
                        hrows[0][:, j + pads[0], c * F_: (c + 1) * F_] = values[c][v]
                links = self._finish_row(i, vmaps, hrows, emb, pads)
        return image

    def _value_table(self, like: torch.Tensor) -> torch.Tensor:
        """Every value's embedding, computed as `features` computes it: (C, L, F)."""
        C, L = self.image_shape[0], self.levels
        x = self.scale(torch.arange(L, device=like.device)).view(L, 1, 1, 1).expand(L, C, 1, 1)
        return self.embed_values(x).view(L, C, -1).transpose(0, 1)

    @staticmethod
    def _affine(conv: MaskedConv2d | None) -> torch.Tensor | None:
        """A 1x1 layer as one matrix [W ; bias], (F+1, F), for `[g | 1] @` it."""
        return None if conv is None else torch.cat([conv.matrix().T, conv.bias[None]])

    @staticmethod
    def _row_bias(link: torch.Tensor, layer: GatedLayer, emb: torch.Tensor | None, sc: torch.Tensor):
        """What the horizontal stack's gates get at each position of a row besides its own
        input: link(vertical, rows above) (n, 2F, W) + its bias [+ the label's embedding],
        scaled to [-2a | b] -> (W, n, 2F)."""
        b = link + layer.horizontal.bias[:, None] + (0 if emb is None else emb[:, :, None])
        return (b * sc[:, None]).permute(2, 0, 1).contiguous()

    def _h_at(self, hrows, rowb, gbuf, wh, wout, wskip, feats, head, pads, j: int) -> torch.Tensor:
        """The horizontal stack at (i, j) of the current row, each layer's output written
        into the next layer's row (the last one's, or the sum of the skips, into `feats`)
        -> the head's logits."""
        F_, L = feats.shape[1], len(self.layers)
        for l, (layer, p) in enumerate(zip(self.layers, pads)):
            window = hrows[l][:, j: j + p + 1].flatten(1)  # (n, (p+1) c_in): columns j-p .. j
            s = torch.sigmoid(torch.addmm(rowb[l][j], window, wh[l]))  # (n, 2F): [sigmoid(-2a) | sigmoid(b)]
            torch.addcmul(s[:, F_:], s[:, :F_], s[:, F_:], value=-2.0, out=gbuf[l][:, :F_])  # tanh(a) sigmoid(b)
            if wskip[l] is not None:  # skips: the head reads their sum
                if l == 0:
                    torch.mm(gbuf[l], wskip[l], out=feats)
                else:
                    feats.addmm_(gbuf[l], wskip[l])
            if wout[l] is None:
                continue
            dest = hrows[l + 1][:, j + pads[l + 1]] if l + 1 < L else feats  # (n, F)
            if layer.residual:
                torch.addmm(hrows[l][:, j + p], gbuf[l], wout[l], out=dest)
            else:
                torch.mm(gbuf[l], wout[l], out=dest)
        return self.head.at(feats, head)

    def _finish_row(self, i: int, vmaps, hrows, emb, pads) -> list[torch.Tensor]:
        """Row i is drawn: keep it, run the vertical stack on it (one row per layer), start
        the next row's horizontal inputs -> link(vertical) of each layer for row i + 1,
        (n, 2F, W)."""
        W = self.image_shape[-1]
        v_row = hrows[0][:, pads[0]:].transpose(1, 2)  # (n, C*F, W): the drawn row embedded, layer 0's input
        links = []
        for layer, p, vmap, e in zip(self.layers, pads, vmaps, emb):
            vmap[:, :, i + p, p: p + W] = v_row
            pre = F.conv2d(vmap[:, :, i: i + p + 1], layer.vertical.weight, layer.vertical.bias)[:, :, 0]  # (n, 2F, W)
            links.append(layer.link(pre[:, :, None])[:, :, 0])
            v_row = gate(pre + (0 if e is None else e[:, :, None]))
        for r in hrows:
            r.zero_()
        return links
