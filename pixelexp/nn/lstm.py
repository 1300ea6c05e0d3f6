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

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.nn.masked import MaskedConv2d, channel_groups
from pixelexp.nn.plain import diagonal_bilstm_plain
from pixelexp.nn import triton_scan
from pixelexp.nn.scan import EAGER, diagonal_indices, diagonal_scan, gather_rows


def lstm_cell(g: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates (..., 4h) in the order i, f, o, g and the previous cell (..., h) -> (h, c)."""
    hd = c.shape[-1]
    ifo, cell = g.split([3 * hd, hd], dim=-1)
    i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
    c = torch.addcmul(f * c, i, torch.tanh(cell))
    return o * torch.tanh(c), c


class DiagonalBiLSTM(nn.Module):
    """One Diagonal BiLSTM layer with a residual connection.

    (B, channels, H, W) -> (B, channels, H, W). The input-to-state map is a 1x1 mask-B
    convolution to the 4 gates of both directions; the LSTM has `hidden` units per
    direction; a 1x1 mask-B convolution maps the summed directions back to `channels`,
    and the input is added when `use_residual`.

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

    impl = "fast"  # or "plain" (the reference loop of nn/plain.py), "triton" (set by models.set_impl)
    kernels = EAGER  # the scan's elementwise step functions (fast.py may compile them)
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
        w = torch.cat([(conv.weight * conv.mask)[:, :, 0, 0], self.cond_to_state[:, : x_in.shape[1] - x.shape[1]],
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
        out = F.linear(y, (out.weight * out.mask)[:, :, 0, 0], out.bias)  # the 1x1 mask B output conv
        out = out.view(B, H, W, -1).permute(0, 3, 1, 2)  # (B, channels, H, W), channels-last strides
        return x + out if self.use_residual else out

    # ------------------------------------------------------------ pixel by pixel, for sampling
    # The same layer computed in generation order: position (i, j) of the left-to-right
    # direction needs only its input, the state above (kept from the previous row) and the
    # state to its left; the right-to-left direction of a row is run once the row is done
    # (its output only reaches the next row). Left padding states are exactly zero in the
    # skewed scan (no bias reaches them), which is what starting each row from zeros gives.

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        z = lambda *s: like.new_zeros(*s)  # noqa: E731
        hd = self.hidden
        return {"fw_above": z(n, width, hd), "bw_above": z(n, width, hd), "h_left": z(n, hd),
                "c_left": z(n, hd), "fw_row": z(n, width, hd), "x_row": z(n, self.output.out_channels, width)}

    def step(self, x: torch.Tensor, cache: dict, j: int,
             cond: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        """Output at (i, j) from its input x (n, channels) [and conditioning (n, K)]
        -> (out (n, channels), new state)."""
        hd = self.hidden
        g = self.input_to_state(x[:, :, None, None])[:, : 4 * hd, 0, 0]  # (n, 4h) left-to-right gates
        if cond is not None:
            g = g + cond @ self.cond_to_state[: 4 * hd].T
        w_above, w_left = self.state_to_state[0].split(hd, dim=0)  # (h, 4h) each
        g = torch.addmm(torch.addmm(g, cache["fw_above"][:, j], w_above), cache["h_left"], w_left)
        h, c = lstm_cell(g, cache["c_left"])
        y = h + cache["bw_above"][:, j]  # right-to-left of the row above: the down-shift
        out = self.output(y[:, :, None, None])[:, :, 0, 0]
        return (x + out if self.use_residual else out), (h, c)

    def commit(self, cache: dict, j: int, x: torch.Tensor, state: tuple) -> None:
        h, c = state
        cache["h_left"], cache["c_left"] = h, c
        cache["fw_row"][:, j] = h
        cache["x_row"][:, :, j] = x

    def finish_row(self, cache: dict, cond_row: torch.Tensor | None = None) -> None:
        """Run the right-to-left direction over the finished row [with its conditioning
        (n, K, W)]; move to the next row."""
        hd = self.hidden
        x_row = cache["x_row"]  # (n, channels, W)
        gates = self.input_to_state(x_row[:, :, None, :])[:, 4 * hd:, 0, :]  # (n, 4h, W)
        if cond_row is not None:
            gates = gates + torch.einsum("gk,nkw->ngw", self.cond_to_state[4 * hd:], cond_row)
        w_above, w_left = self.state_to_state[1].split(hd, dim=0)
        h = c = x_row.new_zeros(x_row.shape[0], hd)
        row = torch.zeros_like(cache["bw_above"])
        for j in reversed(range(x_row.shape[-1])):
            g = torch.addmm(torch.addmm(gates[:, :, j], cache["bw_above"][:, j], w_above), h, w_left)
            h, c = lstm_cell(g, c)
            row[:, j] = h
        cache["bw_above"], cache["fw_above"] = row, cache["fw_row"].clone()
        cache["h_left"], cache["c_left"] = torch.zeros_like(h), torch.zeros_like(c)
