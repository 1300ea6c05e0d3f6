"""Plain reference versions of the recurrent layers: the paper's equations written the
obvious way, one direction at a time, with the whole gate map built first.

    Diagonal BiLSTM:  gates = conv1x1(x)                      (B, 8h, H, W)
                      skew the gates                          (B, 8h, H, W+H-1)
                      for each direction, for each of the W+H-1 diagonals:
                          g = gates[..., t] + conv2x1(h[..., t-1])
                          h, c = LSTM(g, c)
    Row LSTM:         gates = conv1xk(x); for each row: g = gates[row] + conv1d(h_prev)

They compute what the fast layers (nn/lstm.py, nn/row_lstm.py) compute, from the same
parameters, and are what the fast ones are tested and timed against (`model.impl:
plain`). Slow on purpose: nothing fused, nothing batched across directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelexp.nn.shifts import down_shift, skew, unskew


def _cell(g: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates (B, 4h, ...) in the order i, f, o, g -> (h, c), textbook form."""
    i, f, o, gg = g.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c), c


def diagonal_bilstm_plain(layer, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """`layer` is a DiagonalBiLSTM; (B, channels, H, W) [+ conditioning] -> (B, channels, H, W)."""
    B, _, H, W = x.shape
    hd = layer.hidden
    gates = layer.input_to_state(x)  # (B, 8h, H, W), bias included
    if cond is not None:
        gates = gates + torch.einsum("gk,bkhw->bghw", layer.cond_to_state[:, : cond.shape[1]], cond)
    outs = []
    for d in range(2):  # 0: left-to-right; 1: right-to-left, on the mirrored map
        g_d = gates[:, 4 * hd * d: 4 * hd * (d + 1)]
        g_d = skew(g_d if d == 0 else g_d.flip(-1))  # (B, 4h, H, P); the padding's gates are zero
        # The 2x1 column convolution: [above | left] rows of the previous column -> 4h gates.
        kernel = layer.state_to_state[d].T.reshape(4 * hd, 2, hd).permute(0, 2, 1)  # (4h, h, 2)
        h = c = x.new_zeros(B, hd, H)
        states = []
        for t in range(W + H - 1):
            s = F.conv1d(F.pad(h, (1, 0)), kernel)  # (B, 4h, H): rows i-1 and i of column t-1
            h, c = _cell(g_d[..., t] + s, c)
            states.append(h)
        hs = unskew(torch.stack(states, dim=-1), W)  # (B, h, H, W)
        outs.append(hs if d == 0 else down_shift(hs.flip(-1)))
    out = layer.output(outs[0] + outs[1])
    return x + out if layer.use_residual else out


def row_lstm_plain(layer, x: torch.Tensor) -> torch.Tensor:
    """`layer` is a RowLSTM; (B, channels, H, W) -> (B, channels, H, W)."""
    B, _, H, W = x.shape
    gates = layer.input_to_state(x)  # (B, 4h, H, W)
    h = c = x.new_zeros(B, layer.hidden, W)
    rows = []
    for i in range(H):
        h, c = _cell(gates[:, :, i] + layer.state_to_state(h), c)
        rows.append(h)
    out = layer.output(torch.stack(rows, dim=2))
    return x + out if layer.use_residual else out
