"""The Diagonal BiLSTM layer of PixelRNN (van den Oord et al., 2016, section 3.2).

Each direction is an LSTM that walks the image one diagonal at a time. Skewing the
map (row i shifted right by i) turns diagonals into columns, so the recurrence is a
scan over the W+H-1 columns of the skewed map, and the state-to-state step is a 2x1
convolution over the previous column:

    skewed map               state at (i, j) comes from the previous column's
      0 1 2 3 . .            rows i-1 and i, which before the skew are the
      . 0 1 2 3 .            pixel above and the pixel to the left:
      . . 0 1 2 3               (i-1, j) ──┐
                                (i, j-1) ──┴─> (i, j)

The right-to-left direction is the same LSTM run on the mirrored map. Its state at
(i, j) has seen (i, j+1), whose input already describes pixel (i, j), so its output
is shifted down one row before it is added: row i then only hears from rows < i.
(The TensorFlow reference adds it unshifted and so leaks the future.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.nn.kernels import triton_scan
from pixelexp.nn.kernels.plain import diagonal_bilstm_plain
from pixelexp.nn.kernels.scan import EAGER, diagonal_indices, diagonal_scan, gather_rows
from pixelexp.nn.kernels.steps import RecurrentLayer, ScanCells
from pixelexp.nn.masked import MaskedConv2d, channel_groups
from pixelexp.nn.row_cache import RowCache


def lstm_cell(g: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates (..., 4h) in the order i, f, o, g and the previous cell (..., h) -> (h, c)."""
    hd = c.shape[-1]
    ifo, cell = g.split([3 * hd, hd], dim=-1)
    i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
    c = torch.addcmul(f * c, i, torch.tanh(cell))
    return o * torch.tanh(c), c


def lstm_cell_into(g: torch.Tensor, c: torch.Tensor, c_out: torch.Tensor, h_out: torch.Tensor) -> None:
    """lstm_cell, writing the new cell and state into c_out and h_out (views allowed): the
    samplers' per-pixel path, where a copy is an extra kernel. (lstm_cell stays functional:
    torch.compile cannot trace `out=` into views.)"""
    hd = c.shape[-1]
    i, f, o = torch.sigmoid(g[:, : 3 * hd]).chunk(3, dim=-1)
    torch.addcmul(f * c, i, torch.tanh(g[:, 3 * hd:]), out=c_out)
    torch.mul(o, torch.tanh(c_out), out=h_out)


class DiagonalBiLSTM(RecurrentLayer):
    """One Diagonal BiLSTM layer with a residual connection.

    (B, channels, H, W) -> (B, channels, H, W). The input-to-state map is a 1x1 mask-B
    convolution to the 4 gates of both directions; the LSTM has `hidden` units per
    direction; a 1x1 mask-B convolution maps the summed directions back to `channels`,
    and the input is added when `use_residual`. Its scan runs `kernels`, the ScanCells
    (cell_forward, cell_backward) of nn/kernels/scan.py: the eager ones, or those
    handed over with `use_kernels` (fast.py compiles them).

    Args:
        channels: features of the input and output maps (2h in the paper).
        hidden: LSTM units per direction (h).
        image_channels: channel groups for the masks (1 gray, 3 RGB).
        use_residual: add the input to the output.
        cond_channels: features of a conditioning map (known in full beforehand, e.g. the
            upsampled small image of the multi-scale model) added to the gates through a
            1x1 convolution; 0 for none.
    """

    def __init__(self, channels: int, hidden: int, image_channels: int = 1, use_residual: bool = True,
                 cond_channels: int = 0):
        super().__init__()
        self.hidden = hidden
        self.use_residual = use_residual
        unit_groups = channel_groups(hidden, image_channels)  # (h,)
        # Gate channels laid out (direction, gate i/f/o/g, unit): 8h channels, each with its
        # unit's group. It holds the gates' biases; `forward` adds them on the image's pixels
        # only, so the skew's padding gets none and its states stay zero.
        self.input_to_state = MaskedConv2d(channels, 8 * hidden, 1, "B", image_channels,
                                           out_groups=unit_groups.repeat(8))
        # The 2x1 column convolution of each direction as one matrix: rows [above | left]
        # of the previous column -> 4h gates. It only sees earlier pixels: no mask needed.
        self.state_to_state = nn.Parameter(torch.empty(2, 2 * hidden, 4 * hidden))
        nn.init.uniform_(self.state_to_state, -(2 * hidden) ** -0.5, (2 * hidden) ** -0.5)
        self.output = MaskedConv2d(hidden, channels, 1, "B", image_channels, in_groups=unit_groups)
        with torch.no_grad():  # forget gates start open, a common LSTM default
            self.input_to_state.bias.view(2, 4, hidden)[:, 1].fill_(1.0)
        # Conditioning -> gates of both directions, unmasked: all of it is known already.
        self.cond_to_state = nn.Parameter(torch.empty(8 * hidden, cond_channels))
        nn.init.uniform_(self.cond_to_state, -(cond_channels or 1) ** -0.5, (cond_channels or 1) ** -0.5)
        self.kernels: ScanCells = EAGER  # the scan's elementwise step functions

    row_shift = 1  # the right-to-left direction's output moves down this many rows (1: no leak)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.impl == "plain":
            return diagonal_bilstm_plain(self, x, cond)
        if cond is not None:  # the conditioning rides along as extra input channels
            return self._forward(torch.cat([x, cond], dim=1), x)
        return self._forward(x, x)

    def _forward(self, x_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_in.shape
        hd, N = self.hidden, B * H * W
        # Input-to-state (1x1 mask B conv, [conditioning,] bias) on the unskewed image: one
        # matmul over the N pixels plus a zero row, which the skew's padding reads (no bias
        # there, so the padding's states stay exactly zero).
        pixels = x_in.permute(0, 2, 3, 1).reshape(N, -1)  # (N, k); free for channels-last maps
        pixels = F.pad(torch.cat([pixels, pixels.new_ones(N, 1)], dim=1), (0, 0, 0, 1))  # (N+1, k+1)
        conv = self.input_to_state
        w = torch.cat([conv.matrix(), self.cond_to_state[:, : x_in.shape[1] - x.shape[1]],
                       conv.bias[:, None]], dim=1)  # (8h, k+1)
        gates = (pixels @ w.T).view(2 * (N + 1), 4 * hd)  # rows (pixel, direction)
        idx = diagonal_indices(B, H, W, x.device, self.row_shift)
        # Skew by gathering: (direction, diagonal t, batch, row r) <- pixel (r, t-r) (mirrored
        # for right-to-left), or the zero row off the image.
        x_gates = gather_rows(gates, idx.gates, idx.gates_inv).view(2, -1, B * H, 4 * hd)  # (2, P, B*H, 4h)
        w_above, w_left = self.state_to_state.split(hd, dim=1)  # (2, h, 4h) each
        w_state = torch.cat([w_left, w_above], dim=1)  # (2, 2h, 4h): one state product per diagonal
        if self.impl == "triton" and triton_scan.available(hd, x.device):  # one kernel per layer and pass
            table = triton_scan.triton_diagonal_scan(x_gates, w_state, H)
        else:
            if self.impl == "triton":
                triton_scan.warn_unavailable(hd, x.device)
            table = diagonal_scan(x_gates, w_state, H, self.kernels)  # (2*P*B*H + 1, h), last row zeros
        # Unskew by gathering: pixel (r, j) <- left-to-right state at (r, j) plus the right-to-left
        # state at (r-1, j), shifted down one row so row r only hears rows < r (zero for r = 0).
        y = gather_rows(table, idx.states, idx.states_inv).view(N, 2, hd).sum(1)  # (N, h)
        out = self.output
        out = F.linear(y, out.matrix(), out.bias)  # the 1x1 mask B output conv
        out = out.view(B, H, W, -1).permute(0, 3, 1, 2)  # (B, channels, H, W), channels-last strides
        return x + out if self.use_residual else out

    # ------------------------------------------------------------ pixel by pixel, for sampling
    # The same layer computed in generation order: position (i, j) of the left-to-right
    # direction needs its input, the state above (kept from the previous row) and the
    # state to its left; the right-to-left direction of a row is run once the row is done
    # (its output only reaches the next row). Left padding states are exactly zero in the
    # skewed scan (no bias reaches them), which is what starting each row from zeros gives.
    # What depends only on finished rows (the states above through their weights, the
    # biases, the conditioning) is computed once per row (`start_row`), so a position costs
    # ten small operations (`step`), each writing where the next one reads.

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> DiagonalBiLSTMCache:
        z = lambda *s: like.new_zeros(*s)
        hd, k = self.hidden, self.output.out_channels
        conv, out = self.input_to_state, self.output
        w_in = conv.matrix()  # (8h, k): left-to-right gates, then right-to-left
        return DiagonalBiLSTMCache(
            x_row=z(n, width, k), pad=0, fw_row=z(n, width + 1, hd), c_row=z(n, width + 1, hd),
            bw_above=z(n, width, hd), w_ltr=w_in[: 4 * hd].T, w_rtl=w_in[4 * hd:].T, b=conv.bias,
            w_out=out.matrix().T, b_out=out.bias)

    def start_row(self, cache: DiagonalBiLSTMCache, cond_row: torch.Tensor | None = None) -> None:
        """Per position of the new row: the left-to-right gates' part from the row above,
        the bias [and the conditioning (n, K, W)] (n, W, 4h), and the output's part from
        the right-to-left state of the row above (the down-shift) and its bias (n, W, k)."""
        hd = self.hidden
        w_above = self.state_to_state[0, :hd]  # (h, 4h)
        a = torch.matmul(cache.fw_row[:, 1:], w_above) + cache.b[: 4 * hd]  # still the row above
        if cond_row is not None:
            a = a + torch.einsum("gk,nkw->nwg", self.cond_to_state[: 4 * hd], cond_row)
        cache.above = a
        cache.below = torch.matmul(cache.bw_above, cache.w_out) + cache.b_out

    def step(self, cache: DiagonalBiLSTMCache, j: int, dest: torch.Tensor) -> None:
        """The layer at (i, j) from its input cache.x_row[:, j]: its left-to-right state
        goes to column j+1 of the state rows, its output (n, k) into `dest` (the next
        layer's input, or the stack's output). Run again for each channel of an RGB
        pixel, it rewrites the same places."""
        hd = self.hidden
        x = cache.x_row[:, j]  # (n, k)
        g = torch.addmm(cache.above[:, j], x, cache.w_ltr)  # (n, 4h)
        g.addmm_(cache.fw_row[:, j], self.state_to_state[0, hd:])  # the state to the left
        lstm_cell_into(g, cache.c_row[:, j], cache.c_row[:, j + 1], cache.fw_row[:, j + 1])
        y = torch.addmm(cache.below[:, j], cache.fw_row[:, j + 1], cache.w_out)  # 1x1 output conv
        if self.use_residual:
            torch.add(x, y, out=dest)
        else:
            dest.copy_(y)

    def finish_row(self, cache: DiagonalBiLSTMCache, cond_row: torch.Tensor | None = None) -> None:
        """Run the right-to-left direction over the finished row [with its conditioning
        (n, K, W)]; move to the next row."""
        hd = self.hidden
        w_above, w_left = self.state_to_state[1].split(hd, dim=0)
        g = torch.matmul(cache.x_row, cache.w_rtl) + cache.b[4 * hd:]  # (n, W, 4h)
        g = torch.baddbmm(g, cache.bw_above, w_above.expand(len(g), -1, -1))
        if cond_row is not None:
            g = g + torch.einsum("gk,nkw->nwg", self.cond_to_state[4 * hd:], cond_row)
        row = torch.zeros_like(cache.bw_above)  # (n, W, h)
        c, c_next = g.new_zeros(len(g), hd), g.new_empty(len(g), hd)
        h = g.new_zeros(len(g), hd)
        for j in reversed(range(row.shape[1])):
            lstm_cell_into(torch.addmm(g[:, j], h, w_left), c, c_next, row[:, j])
            h, c, c_next = row[:, j], c_next, c
        cache.bw_above = row


@dataclass(slots=True)
class DiagonalBiLSTMCache(RowCache):
    """A DiagonalBiLSTM's sampling state (`RowCached`); x_row (n, W, k) has no padding.

    The state rows' column j+1 holds position j (column 0: the zeros left of the row)."""

    fw_row: torch.Tensor  # (n, W+1, h): left-to-right states of the row (the row above until start_row)
    c_row: torch.Tensor  # (n, W+1, h): their cells
    bw_above: torch.Tensor  # (n, W, h): the row above's right-to-left states
    w_ltr: torch.Tensor  # (k, 4h): input-to-state, left-to-right
    w_rtl: torch.Tensor  # (k, 4h): input-to-state, right-to-left
    b: torch.Tensor  # (8h,): the gates' biases, both directions
    w_out: torch.Tensor  # (h, k): the 1x1 output convolution
    b_out: torch.Tensor  # (k,)
    above: torch.Tensor = field(init=False)  # (n, W, 4h): gates from the row above and bias (start_row)
    below: torch.Tensor = field(init=False)  # (n, W, k): output from the down-shifted right-to-left states
