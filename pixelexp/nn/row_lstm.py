"""The Row LSTM layer of PixelRNN (van den Oord et al., 2016, section 3.1).

The LSTM runs down the image one row at a time. Its input-to-state part is a k x 1
masked convolution along the row (k = 3; mask B: the pixel itself and the one to its
left), computed for the whole map at once; its state-to-state part is a k x 1
convolution over the previous row's hidden states. Pixel (i, j) so hears from the
previous row's states at j-1, j, j+1, which heard from j-2..j+2 of the row before:
a triangle above the pixel.

    row i-2:   . x x x x x .
    row i-1:   . . x x x . .        state-to-state, k = 3
    row i:     . . x o . . .        input-to-state (mask B), o = current pixel
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.nn.kernels.plain import row_lstm_plain
from pixelexp.nn.kernels.steps import RecurrentLayer, RowStep
from pixelexp.nn.lstm import lstm_cell, lstm_cell_into
from pixelexp.nn.masked import MaskedConv2d, channel_groups
from pixelexp.nn.row_cache import RowCache


def row_step(g_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_state: torch.Tensor):
    """One row: input gates (B, W, 4h), previous row's h and c (B, W, h) and the
    state-to-state kernel (4h, h, k) -> new h, c. Pure: fast.py may compile it."""
    pad = w_state.shape[-1] // 2
    g = g_in + F.conv1d(h.transpose(1, 2), w_state, padding=pad).transpose(1, 2)  # (B, W, 4h)
    return lstm_cell(g, c)


EAGER = RowStep(step=row_step)


class RowLSTM(RecurrentLayer):
    """One Row LSTM layer with a residual connection: (B, channels, H, W) -> same.
    Its loop over rows runs `kernels.step` (`row_step`, or the compiled one handed over
    with `use_kernels`).

    Args:
        channels: features of the input and output maps (2h).
        hidden: LSTM units (h).
        image_channels: channel groups for the masks (1 gray, 3 RGB).
        use_residual: add the input to the output.
        kernel: k of the k x 1 convolutions (odd).
    """

    def __init__(self, channels: int, hidden: int, image_channels: int = 1, use_residual: bool = True,
                 kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.use_residual = use_residual
        unit_groups = channel_groups(hidden, image_channels)
        # Gate channels laid out (gate i/f/o/g, unit), each with its unit's group.
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, (1, kernel), "B", image_channels,
                                           out_groups=unit_groups.repeat(4))
        # The previous row is all in the past: no mask. Biases live in input_to_state.
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)
        self.output = MaskedConv2d(hidden, channels, 1, "B", image_channels, in_groups=unit_groups)
        with torch.no_grad():  # forget gates start open
            self.input_to_state.bias.view(4, hidden)[1].fill_(1.0)
        self.kernels: RowStep = EAGER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "plain":
            return row_lstm_plain(self, x)
        B, _, H, W = x.shape
        gates = self.input_to_state(x).permute(2, 0, 3, 1)  # (H, B, W, 4h): a slab per row
        h = c = x.new_zeros(B, W, self.hidden)
        rows = []
        w_state = self.state_to_state.weight  # (4h, h, k)
        step = self.kernels.step
        for g_in in gates.unbind(0):  # H steps
            h, c = step(g_in, h, c, w_state)
            rows.append(h)
        states = torch.stack(rows, dim=2).permute(0, 3, 2, 1)  # (B, h, H, W)
        return self.finish(x, states)

    def finish(self, x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        out = self.output(states)
        return x + out if self.use_residual else out

    # ------------------------------------------------------------ pixel by pixel, for sampling
    # Position (i, j) needs its input at columns j-1, j of row i (the rest of the 1 x k
    # kernel is masked) and the previous row's states at j-1..j+1: their part is one
    # convolution per row (`start_row`), so a position costs nine small operations.

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> RowLSTMCache:
        z = lambda *s: like.new_zeros(*s)
        hd, k = self.hidden, self.output.out_channels
        conv, out = self.input_to_state, self.output
        p = conv.kernel_size[1] // 2
        return RowLSTMCache(
            x_row=z(n, p + width, k), pad=p, h_row=z(n, width, hd), c_row=z(n, width, hd),
            h_prev=z(n, width, hd), c_prev=z(n, width, hd), w_in=conv.centre_row(), b=conv.bias,
            w_out=out.matrix().T, b_out=out.bias)

    def start_row(self, cache: RowLSTMCache, cond_row: torch.Tensor | None = None) -> None:
        """The gates' part from the row above (its k x 1 state convolution) and the bias,
        at every position of the new row: (n, W, 4h)."""
        w = self.state_to_state.weight  # (4h, h, k)
        a = F.conv1d(cache.h_prev.transpose(1, 2), w, padding=w.shape[-1] // 2).transpose(1, 2)
        cache.above = (a + cache.b).contiguous()

    def step(self, cache: RowLSTMCache, j: int, dest: torch.Tensor) -> None:
        """The layer at (i, j): its states go to column j of the row's states, its output
        (n, k) into `dest` (the next layer's input, or the stack's output)."""
        p = cache.pad
        window = cache.x_row[:, j: j + p + 1].flatten(1)  # (n, (p+1) k): columns j-p..j
        g = torch.addmm(cache.above[:, j], window, cache.w_in)  # (n, 4h)
        lstm_cell_into(g, cache.c_prev[:, j], cache.c_row[:, j], cache.h_row[:, j])
        y = torch.addmm(cache.b_out, cache.h_row[:, j], cache.w_out)  # the 1x1 output conv
        if self.use_residual:
            torch.add(cache.x_row[:, j + p], y, out=dest)
        else:
            dest.copy_(y)

    def finish_row(self, cache: RowLSTMCache, cond_row: torch.Tensor | None = None) -> None:
        """This row's states become the row above."""
        cache.h_prev, cache.h_row = cache.h_row, cache.h_prev
        cache.c_prev, cache.c_row = cache.c_row, cache.c_prev


@dataclass(slots=True)
class RowLSTMCache(RowCache):
    """A RowLSTM's sampling state (`RowCached`); x_row (n, p + W, k) has p = kernel // 2
    zero columns on the left, the masked input kernel's reach."""

    h_row: torch.Tensor  # (n, W, h): states of the current row
    c_row: torch.Tensor  # (n, W, h): their cells
    h_prev: torch.Tensor  # (n, W, h): states of the row above
    c_prev: torch.Tensor  # (n, W, h): their cells
    w_in: torch.Tensor  # ((p+1) k, 4h): the input kernel's columns j-p..j
    b: torch.Tensor  # (4h,): the gates' biases
    w_out: torch.Tensor  # (h, k): the 1x1 output convolution
    b_out: torch.Tensor  # (k,)
    above: torch.Tensor = field(init=False)  # (n, W, 4h): gates from the row above and bias (start_row)
