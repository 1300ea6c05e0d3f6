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
from pixelexp.nn.shifts import down_shift, skew, unskew


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
    """

    def __init__(self, channels: int, hidden: int, image_channels: int = 1, use_residual: bool = True):
        super().__init__()
        self.hidden = hidden
        self.use_residual = use_residual
        unit_groups = channel_groups(hidden, image_channels)  # (h,)
        # Gate channels laid out (direction, gate, unit): 8h channels, each with its unit's group.
        self.input_to_state = MaskedConv2d(channels, 8 * hidden, 1, "B", image_channels,
                                           out_groups=unit_groups.repeat(8))
        # Both directions in one grouped conv: [fw h | bw h] -> [fw 4h | bw 4h].
        # The previous column is made of earlier pixels only, so no mask is needed.
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, kernel_size=2, groups=2)
        self.output = MaskedConv2d(hidden, channels, 1, "B", image_channels, in_groups=unit_groups)
        with torch.no_grad():  # forget gates start open, a common LSTM default
            self.state_to_state.bias.view(2, 4, hidden)[:, 1].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = x.shape[-1]
        fw, bw = self.input_to_state(x).chunk(2, dim=1)  # (B, 4h, H, W) each
        gates_in = torch.cat([skew(fw), skew(bw.flip(-1))], dim=1)  # (B, 8h, H, W+H-1)
        states = unskew(self.scan(gates_in), W)  # (B, 2h, H, W)
        h_fw, h_bw = states.chunk(2, dim=1)  # (B, h, H, W) each
        y = h_fw + down_shift(h_bw.flip(-1))  # right-to-left shifted down: no leak
        out = self.output(y)
        return x + out if self.use_residual else out

    def scan(self, gates_in: torch.Tensor) -> torch.Tensor:
        """LSTM over the columns of the skewed map: (B, 8h, H, P) -> (B, 2h, H, P)."""
        B, _, H, P = gates_in.shape
        h = gates_in.new_zeros(B, 2 * self.hidden, H)  # (B, 2h, H): both directions
        c = gates_in.new_zeros(B, 2, self.hidden, H)
        outs = []
        for g_in in gates_in.unbind(-1):  # P steps, one per diagonal
            g = g_in + self.state_to_state(F.pad(h, (1, 0)))  # (B, 8h, H): rows i-1, i
            g = g.view(B, 2, 4, self.hidden, H)
            i, f, o = torch.sigmoid(g[:, :, :3]).unbind(2)
            c = f * c + i * torch.tanh(g[:, :, 3])
            h = (o * torch.tanh(c)).view(B, 2 * self.hidden, H)
            outs.append(h)
        return torch.stack(outs, dim=-1)
