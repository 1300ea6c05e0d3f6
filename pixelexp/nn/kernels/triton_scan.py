"""The Diagonal BiLSTM scan as two Triton kernels (forward, backward): `model.impl: triton`.

Same contract as `pixelexp.nn.kernels.scan.DiagonalScan` (input gates of every diagonal in,
a table of every state out), but each layer's whole recurrence is one kernel launch:
one program per (direction, image) walks the P = W+H-1 diagonals, keeping the column's
h and c (H x h) in registers. Per diagonal and gate k (i, f, o, g):

    pre_k = x_gates_k + h_{t-1} @ W_left_k + (h_{t-1} one row down) @ W_above_k

The "one row down" copy is made in registers, as a product with a 0/1 shift matrix
(exact), so no diagonal waits for memory written by the one before it. The backward
kernel walks the diagonals in reverse with the equations of `nn/scan.py`, moving the
next diagonal's gate gradients one row up the same way, and accumulates the state weights' gradient
(sum over diagonals and rows of [h | h above]^T dgates) in registers; the per-image
partial sums are added afterwards. tanh is written as 2 sigmoid(2x) - 1.

Constraints (else the PyTorch scan runs): h a power of two >= 16 (tl.dot sizes).
Tested against the PyTorch scan in Triton's interpreter on the CPU
(TRITON_INTERPRET=1); on a GPU, by scripts/device_check.sh.
"""

from __future__ import annotations

import torch

from pixelexp.console import log

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no Triton: the PyTorch scan is used
    triton = None


def fits(hidden: int) -> bool:
    """The kernels' size rule for hidden_dims (tl.dot tiles): a power of two >= 16."""
    return hidden >= 16 and hidden & (hidden - 1) == 0


def unavailable(hidden: int, device: torch.device) -> str | None:
    """Why the kernels cannot run here, or None."""
    import os
    if triton is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the device is {device.type}, not CUDA"
    return None if fits(hidden) else f"hidden_dims={hidden} is not a power of two >= 16"


def available(hidden: int, device: torch.device) -> bool:
    return unavailable(hidden, device) is None


_warned = set()


def warn_unavailable(hidden: int, device: torch.device) -> None:
    """Once per reason: model.impl=triton was asked for and the PyTorch scan runs instead."""
    why = unavailable(hidden, device)
    if why not in _warned:
        _warned.add(why)
        log.warning(f"model.impl=triton: {why}; the Diagonal BiLSTM uses the fast PyTorch scan")


if triton is not None:
    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _tanh(x):
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    @triton.jit
    def _w(w_ptr, d, row0, k, HD: tl.constexpr):
        """(HD, HD) block of w_state[d] (2h, 4h): rows row0.., columns of gate k."""
        r = tl.arange(0, HD)
        return tl.load(w_ptr + d * (2 * HD) * (4 * HD) + (row0 + r)[:, None] * (4 * HD) + k * HD + r[None, :])

    @triton.jit
    def _weights(w_ptr, d, HD: tl.constexpr):
        """The eight (HD, HD) blocks of w_state[d]: left then above, gates i, f, o, g."""
        return (_w(w_ptr, d, 0, 0, HD), _w(w_ptr, d, 0, 1, HD), _w(w_ptr, d, 0, 2, HD), _w(w_ptr, d, 0, 3, HD),
                _w(w_ptr, d, HD, 0, HD), _w(w_ptr, d, HD, 1, HD), _w(w_ptr, d, HD, 2, HD), _w(w_ptr, d, HD, 3, HD))

    @triton.jit
    def _shift(rows, k: tl.constexpr):
        """(HP, HP) 0/1 matrix M with (M @ x)[r] = x[r-k] (zero where r-k is off the tile):
        moves a tile's rows in registers. Exact in ieee fp32 (one product by 1, the rest 0)."""
        return (rows[:, None] == rows[None, :] + k).to(tl.float32)

    @triton.jit
    def _program(B, H, HP: tl.constexpr, HD: tl.constexpr):
        """This program's (direction, image), its column's rows (padded to HP) and units."""
        pid = tl.program_id(0)
        rows = tl.arange(0, HP)
        return pid, pid // B, pid % B, rows, tl.arange(0, HD), (rows < H)[:, None], B * H

    @triton.jit
    def _scan_fwd(xg_ptr, w_ptr, out_ptr, act_ptr, c_ptr, P, B, H, HP: tl.constexpr, HD: tl.constexpr):
        pid, d, b, rows, cols, m2, BH = _program(B, H, HP, HD)
        wl_i, wl_f, wl_o, wl_g, wa_i, wa_f, wa_o, wa_g = _weights(w_ptr, d, HD)
        down = _shift(rows, 1)  # (HP, HP): (down @ x)[r] = x[r-1], zero for row 0
        h = tl.zeros((HP, HD), dtype=tl.float32)
        c = tl.zeros((HP, HD), dtype=tl.float32)
        for t in range(P):
            row = (d * P + t) * BH + b * H + rows  # (HP,) rows of this diagonal in the tables
            above = tl.dot(down, h, input_precision="ieee")  # the previous diagonal's state one row up
            g4 = row[:, None] * (4 * HD) + cols[None, :]
            pre_i = tl.load(xg_ptr + g4, mask=m2, other=0.0) + tl.dot(h, wl_i, input_precision="ieee") \
                + tl.dot(above, wa_i, input_precision="ieee")
            pre_f = tl.load(xg_ptr + g4 + HD, mask=m2, other=0.0) + tl.dot(h, wl_f, input_precision="ieee") \
                + tl.dot(above, wa_f, input_precision="ieee")
            pre_o = tl.load(xg_ptr + g4 + 2 * HD, mask=m2, other=0.0) + tl.dot(h, wl_o, input_precision="ieee") \
                + tl.dot(above, wa_o, input_precision="ieee")
            pre_g = tl.load(xg_ptr + g4 + 3 * HD, mask=m2, other=0.0) + tl.dot(h, wl_g, input_precision="ieee") \
                + tl.dot(above, wa_g, input_precision="ieee")
            i = _sigmoid(pre_i)
            f = _sigmoid(pre_f)
            o = _sigmoid(pre_o)
            g = _tanh(pre_g)
            c = f * c + i * g
            h = o * _tanh(c)
            tl.store(act_ptr + g4, i, mask=m2)
            tl.store(act_ptr + g4 + HD, f, mask=m2)
            tl.store(act_ptr + g4 + 2 * HD, o, mask=m2)
            tl.store(act_ptr + g4 + 3 * HD, g, mask=m2)
            h1 = row[:, None] * HD + cols[None, :]
            tl.store(c_ptr + h1, c, mask=m2)
            tl.store(out_ptr + h1, h, mask=m2)

    @triton.jit
    def _scan_bwd(dout_ptr, w_ptr, out_ptr, act_ptr, c_ptr, dg_ptr, dw_ptr, P, B, H,
                  HP: tl.constexpr, HD: tl.constexpr):
        pid, d, b, rows, cols, m2, BH = _program(B, H, HP, HD)
        wl_i, wl_f, wl_o, wl_g, wa_i, wa_f, wa_o, wa_g = _weights(w_ptr, d, HD)
        # Transposed once: gate gradients -> state-input gradients.
        wl_i, wl_f, wl_o, wl_g = tl.trans(wl_i), tl.trans(wl_f), tl.trans(wl_o), tl.trans(wl_g)
        wa_i, wa_f, wa_o, wa_g = tl.trans(wa_i), tl.trans(wa_f), tl.trans(wa_o), tl.trans(wa_g)
        up = _shift(rows, -1)  # (HP, HP): (up @ x)[r] = x[r+1]
        dgi = tl.zeros((HP, HD), dtype=tl.float32)  # the next diagonal's gate gradients
        dgf = tl.zeros((HP, HD), dtype=tl.float32)
        dgo = tl.zeros((HP, HD), dtype=tl.float32)
        dgg = tl.zeros((HP, HD), dtype=tl.float32)
        dc = tl.zeros((HP, HD), dtype=tl.float32)
        dwl_i = tl.zeros((HD, HD), dtype=tl.float32)
        dwl_f = tl.zeros((HD, HD), dtype=tl.float32)
        dwl_o = tl.zeros((HD, HD), dtype=tl.float32)
        dwl_g = tl.zeros((HD, HD), dtype=tl.float32)
        dwa_i = tl.zeros((HD, HD), dtype=tl.float32)
        dwa_f = tl.zeros((HD, HD), dtype=tl.float32)
        dwa_o = tl.zeros((HD, HD), dtype=tl.float32)
        dwa_g = tl.zeros((HD, HD), dtype=tl.float32)
        for s in range(P):
            t = P - 1 - s
            row = (d * P + t) * BH + b * H + rows
            h1 = row[:, None] * HD + cols[None, :]
            g4 = row[:, None] * (4 * HD) + cols[None, :]
            # dh: from the output, from the next diagonal's "left" input (same row) and its
            # "above" input (the row below reads this row: its gradient comes one row up).
            # The tile's rows past H hold zero gate gradients (their loads are masked).
            from_below = tl.dot(dgi, wa_i, input_precision="ieee") + tl.dot(dgf, wa_f, input_precision="ieee") \
                + tl.dot(dgo, wa_o, input_precision="ieee") + tl.dot(dgg, wa_g, input_precision="ieee")
            dh = tl.load(dout_ptr + h1, mask=m2, other=0.0) \
                + tl.dot(dgi, wl_i, input_precision="ieee") + tl.dot(dgf, wl_f, input_precision="ieee") \
                + tl.dot(dgo, wl_o, input_precision="ieee") + tl.dot(dgg, wl_g, input_precision="ieee") \
                + tl.dot(up, from_below, input_precision="ieee")
            i = tl.load(act_ptr + g4, mask=m2, other=0.0)
            f = tl.load(act_ptr + g4 + HD, mask=m2, other=0.0)
            o = tl.load(act_ptr + g4 + 2 * HD, mask=m2, other=0.0)
            g = tl.load(act_ptr + g4 + 3 * HD, mask=m2, other=0.0)
            c = tl.load(c_ptr + h1, mask=m2, other=0.0)
            prev1 = ((d * P + t - 1) * BH + b * H + rows)[:, None] * HD + cols[None, :]
            c_prev = tl.load(c_ptr + prev1, mask=m2 & (t > 0), other=0.0)
            tc = _tanh(c)
            dc = dc + dh * o * (1.0 - tc * tc)
            dgi = dc * g * i * (1.0 - i)
            dgf = dc * c_prev * f * (1.0 - f)
            dgo = dh * tc * o * (1.0 - o)
            dgg = dc * i * (1.0 - g * g)
            dc = dc * f
            tl.store(dg_ptr + g4, dgi, mask=m2)
            tl.store(dg_ptr + g4 + HD, dgf, mask=m2)
            tl.store(dg_ptr + g4 + 2 * HD, dgo, mask=m2)
            tl.store(dg_ptr + g4 + 3 * HD, dgg, mask=m2)
            # This diagonal's state inputs: h_{t-1} (left) and h_{t-1} one row up (above).
            left = tl.load(out_ptr + prev1, mask=m2 & (t > 0), other=0.0)
            above = tl.load(out_ptr + prev1 - HD, mask=m2 & (rows[:, None] >= 1) & (t > 0), other=0.0)
            lt = tl.trans(left)
            at = tl.trans(above)
            dwl_i += tl.dot(lt, dgi, input_precision="ieee")
            dwl_f += tl.dot(lt, dgf, input_precision="ieee")
            dwl_o += tl.dot(lt, dgo, input_precision="ieee")
            dwl_g += tl.dot(lt, dgg, input_precision="ieee")
            dwa_i += tl.dot(at, dgi, input_precision="ieee")
            dwa_f += tl.dot(at, dgf, input_precision="ieee")
            dwa_o += tl.dot(at, dgo, input_precision="ieee")
            dwa_g += tl.dot(at, dgg, input_precision="ieee")
        r = tl.arange(0, HD)
        base = dw_ptr + pid * (2 * HD) * (4 * HD) + r[:, None] * (4 * HD) + r[None, :]
        tl.store(base, dwl_i)
        tl.store(base + HD, dwl_f)
        tl.store(base + 2 * HD, dwl_o)
        tl.store(base + 3 * HD, dwl_g)
        base += HD * (4 * HD)
        tl.store(base, dwa_i)
        tl.store(base + HD, dwa_f)
        tl.store(base + 2 * HD, dwa_o)
        tl.store(base + 3 * HD, dwa_g)


def _rows(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


class TritonDiagonalScan(torch.autograd.Function):
    """(x_gates (2, P, B*H, 4h), w_state (2, 2h, 4h), H) -> table (2*P*B*H + 1, h), last row zeros."""

    @staticmethod
    def forward(ctx, x_gates, w_state, H):
        dtypes = (x_gates.dtype, w_state.dtype)
        xg = x_gates.float().contiguous()
        w = w_state.float().contiguous()
        _, P, BH, G = xg.shape
        hd, B = G // 4, BH // H
        table = xg.new_zeros(2 * P * BH + 1, hd)
        acts = torch.empty_like(xg)
        cells = xg.new_empty(2, P, BH, hd)
        _scan_fwd[(2 * B,)](xg, w, table, acts, cells, P, B, H, HP=_rows(H), HD=hd)
        ctx.save_for_backward(w, table, acts, cells)
        ctx.H, ctx.dtypes = H, dtypes
        return table

    @staticmethod
    def backward(ctx, d_table):
        w, table, acts, cells = ctx.saved_tensors
        H = ctx.H
        _, P, BH, G = acts.shape
        hd, B = G // 4, BH // H
        d_out = d_table.float()[:-1].contiguous()
        dg = torch.empty_like(acts)
        dw = w.new_empty(2 * B, 2 * hd, 4 * hd)  # per (direction, image); summed below
        _scan_bwd[(2 * B,)](d_out, w, table, acts, cells, dg, dw, P, B, H, HP=_rows(H), HD=hd)
        d_w = dw.view(2, B, 2 * hd, 4 * hd).sum(1)
        return dg.to(ctx.dtypes[0]), d_w.to(ctx.dtypes[1]), None


def triton_diagonal_scan(x_gates: torch.Tensor, w_state: torch.Tensor, H: int) -> torch.Tensor:
    return TritonDiagonalScan.apply(x_gates, w_state, H)


__all__ = ["available", "warn_unavailable", "triton_diagonal_scan", "TritonDiagonalScan"]
