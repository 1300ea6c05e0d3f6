"""The Diagonal BiLSTM's recurrence as one autograd function with a hand-written backward.

Autograd through a Python loop records ~25 small operations per diagonal and, in the
backward pass, multiplies per step by the weights twice (once for the state, once for
the weight gradient). Here each diagonal costs one matmul and one elementwise
function forward (`cell_forward`), and one elementwise function and one matmul
backward (`cell_backward`): the layer's `ScanCells`, which fast.py compiles into one
kernel each.
Every weight gradient is one large matmul over all diagonals at the end.

The input-to-state gates of every diagonal come in precomputed (the layer computes
them on the unskewed image, one matmul, and gathers them into diagonal order). Each
step's state inputs are kept as one slab, so its state product is a single matmul
added to the input gates (the second direction rides along as the leading dimension):

    z_t     = [ h_{t-1} | h_{t-1} shifted down one row ]               (2, B*H, 2h)
    gates_t = x_gates_t + z_t @ [w_left ; w_above]                     (2, B*H, 4h)

The z_t are kept for the backward pass, so dW_state = sum_t z_t^T dgates_t is one
batched product over (step, block of rows) and a sum; the gate gradients go back as they are.
The LSTM equations (gates in the order i, f, o, g):

    i, f, o = sigmoid(.), g = tanh(.)     c_t = f c_{t-1} + i g     h_t = o tanh(c_t)

and their derivatives, for dh and dc flowing back into step t:

    dc   += dh o (1 - tanh(c_t)^2)
    di = dc g i(1-i)   df = dc c_{t-1} f(1-f)   do = dh tanh(c_t) o(1-o)   dg = dc i (1-g^2)
    dc_{t-1} = dc f        dh_{t-1} = dgates W_left^T + (dgates W_above^T) shifted up one row

It computes in fp32 or wider (also under bf16 autocast: a recurrence of 55 steps is where
low precision would hurt). Tested against autograd through the plain loop (1e-5) and
with torch.autograd.gradcheck in float64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pixelexp.nn.kernels.steps import ScanCells


def cell_forward(g: torch.Tensor, c_prev: torch.Tensor, H: int):
    """One diagonal's gate pre-activations g (2, B*H, 4h) and c_{t-1} (2, B*H, h) ->
    h_t, c_t, the activated gates (.., 4h), tanh(c_t), and the next step's state inputs
    [h_t | h_t shifted down one row] (2, B*H, 2h). Pure: fast.py may compile it into one kernel."""
    hd = c_prev.shape[-1]
    ifo = torch.sigmoid(g[..., : 3 * hd])
    gg = torch.tanh(g[..., 3 * hd:])
    i, f, o = ifo.chunk(3, dim=-1)
    c = torch.addcmul(f * c_prev, i, gg)
    tc = torch.tanh(c)
    h = o * tc
    above = F.pad(h.unflatten(1, (-1, H))[:, :, :-1], (0, 0, 1, 0)).flatten(1, 2)  # row r gets row r-1
    return h, c, torch.cat([ifo, gg], dim=-1), tc, torch.cat([h, above], dim=-1)


def cell_backward(d_out: torch.Tensor, dz: torch.Tensor, dc: torch.Tensor, a: torch.Tensor,
                  c_prev: torch.Tensor, tc: torch.Tensor, H: int):
    """Gradients flowing into step t: from its output (d_out) and from the next step's
    state inputs (dz (2, B*H, 2h) = d[h | h shifted down]), and dc -> d(gate
    pre-activations) (2, B*H, 4h) and dc_{t-1}. Pure: fast.py may compile it."""
    hd = c_prev.shape[-1]
    dz = dz.unflatten(1, (-1, H))  # (2, B, H, 2h)
    up = F.pad(dz[:, :, 1:, hd:], (0, 0, 0, 1)).flatten(1, 2)  # the shifted copy's gradient, one row up
    dh = d_out + dz[..., :hd].flatten(1, 2) + up
    i, f, o, gg = a.split(hd, dim=-1)
    dc = dc + dh * o * (1 - tc * tc)
    dg = torch.cat([dc * gg * i * (1 - i), dc * c_prev * f * (1 - f), dh * tc * o * (1 - o),
                    dc * i * (1 - gg * gg)], dim=-1)
    return dg, dc * f


EAGER = ScanCells(forward=cell_forward, backward=cell_backward)


class DiagonalIndices(NamedTuple):
    gates: torch.Tensor  # (2*P*B*H,) rows of the (pixel, direction) gate table, in scan order
    states: torch.Tensor  # (B*H*W*2,) rows of the state table: per pixel, its two states
    gates_inv: torch.Tensor  # (2*(N+1),) per gate-table row: the one position that reads it, or 2*P*B*H
    states_inv: torch.Tensor  # (2*P*B*H+1,) per state-table row: the one position reading it, or 2*N


def inverse(idx: torch.Tensor, rows: int, valid: torch.Tensor) -> torch.Tensor:
    """Where each of `rows` source rows is read in `idx` (once at most, where `valid`),
    or len(idx) for rows that nothing reads (or only the invalid entries read)."""
    inv = torch.full((rows,), len(idx), dtype=idx.dtype)
    inv[idx[valid]] = torch.arange(len(idx))[valid]
    return inv


class GatherRows(torch.autograd.Function):
    """src.index_select(0, idx) whose backward is a gather too: each source row is read
    at most once (apart from constant zero rows, whose gradient is not needed), so its
    gradient is one row of the output's gradient, found through `inv`. (index_select's
    own backward adds into the source with atomics; on a GPU the thousands of reads of
    the zero row then serialize.)"""

    @staticmethod
    def forward(ctx, src, idx, inv):
        ctx.save_for_backward(inv)
        return src.index_select(0, idx)

    @staticmethod
    def backward(ctx, d_out):
        (inv,) = ctx.saved_tensors
        return F.pad(d_out, (0, 0, 0, 1)).index_select(0, inv), None, None


def gather_rows(src: torch.Tensor, idx: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    return GatherRows.apply(src, idx, inv)


@functools.lru_cache(maxsize=16)
def diagonal_indices(B: int, H: int, W: int, device: torch.device, shift: int = 1) -> DiagonalIndices:
    """The skew and unskew of a (B, H, W) map as gathers.

    Skewed position (direction d, diagonal t, batch b, row r) holds pixel (r, t - r) of
    the image (d = 0) or of its mirror image (d = 1: column W-1-(t-r)); off the image
    it reads row N of the gate table (N = B*H*W), the zero row. Pixel (b, r, j) reads
    the left-to-right state at (t = r + j, row r) and the right-to-left state of the
    pixel `shift` rows above it, (r-1, j), at mirrored diagonal t = (r-1) + (W-1-j);
    row 0 reads the state table's zero row instead. (shift=0 is the TensorFlow
    reference's leak, kept to show that the causality test catches it.)
    """
    P, N = W + H - 1, B * H * W
    d = torch.arange(2).view(2, 1, 1, 1)
    t = torch.arange(P).view(1, P, 1, 1)
    b = torch.arange(B).view(1, 1, B, 1)
    r = torch.arange(H).view(1, 1, 1, H)
    j = t - r
    col = torch.where(d == 0, j, W - 1 - j)
    pixel = torch.where((j >= 0) & (j < W), (b * H + r) * W + col, N)
    gates = (pixel * 2 + d).reshape(-1)  # the gate table's rows are (pixel, direction)
    bh = P * B * H  # rows per direction in the state table
    b, r, j = (torch.arange(n).view(*s) for n, s in ((B, (B, 1, 1)), (H, (1, H, 1)), (W, (1, 1, W))))
    fw = (r + j) * B * H + b * H + r
    bw = torch.where(r >= shift, bh + ((r - shift) + (W - 1 - j)) * B * H + b * H + (r - shift), 2 * bh)
    states = torch.stack([fw, bw], dim=-1).expand(B, H, W, 2).reshape(-1)
    gates_inv = inverse(gates, 2 * (N + 1), gates < 2 * N)
    states_inv = inverse(states, 2 * bh + 1, states < 2 * bh)
    return DiagonalIndices(*(t.to(device) for t in (gates, states, gates_inv, states_inv)))


class DiagonalScan(torch.autograd.Function):
    """(x_gates (2, P, B*H, 4h), w_state (2, 2h, 4h), H, kernels) -> a table of every
    state, (2*P*B*H + 1, h), whose last row is zeros (what a gather reads for "no
    state"). `kernels`: the ScanCells (cell_forward, cell_backward), eager or compiled."""

    @staticmethod
    def forward(ctx, x_gates, w_state, H, kernels):
        with torch.autocast(x_gates.device.type, enabled=False):
            out = _forward(ctx, _wide(x_gates), _wide(w_state), H, kernels)
        ctx.dtypes = (x_gates.dtype, w_state.dtype)
        return out

    @staticmethod
    def backward(ctx, d_table):
        with torch.autocast(d_table.device.type, enabled=False):
            grads = _backward(ctx, _wide(d_table))
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None, None)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 at least (bf16 / fp16 -> fp32; fp64 stays, for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _forward(ctx, x_gates, w_state, H, kernels: ScanCells):
    forward = kernels.forward
    _, P, BH, _ = x_gates.shape
    hd = w_state.shape[1] // 2
    zs = x_gates.new_zeros(2, BH, 2 * hd)  # [h | h of the row above] before the first diagonal
    c = x_gates.new_zeros(2, BH, hd)
    hs, acts, cs, tcs, zss = [], [], [], [], []
    for t in range(P):
        g = torch.baddbmm(x_gates[:, t], zs, w_state)  # (2, B*H, 4h)
        cs.append(c)
        zss.append(zs)
        h, c, a, tc, zs = forward(g, c, H)
        hs.append(h)
        acts.append(a)
        tcs.append(tc)
    ctx.save_for_backward(w_state, *acts, *cs, *tcs, *zss)
    ctx.H, ctx.P = H, P
    ctx.kernels = kernels
    table = x_gates.new_empty(2 * P * BH + 1, hd)
    table[-1] = 0
    torch.stack(hs, dim=1, out=table[:-1].view(2, P, BH, hd))
    return table


def _backward(ctx, d_table):
    backward = ctx.kernels.backward
    w_state, *rest = ctx.saved_tensors
    P, H = ctx.P, ctx.H
    acts, cs, tcs, zss = (rest[i * P:(i + 1) * P] for i in range(4))
    BH, hd = cs[0].shape[1], w_state.shape[1] // 2
    d_out = d_table[:-1].view(2, P, BH, hd)
    w_state_t = w_state.transpose(1, 2).contiguous()  # (2, 4h, 2h)
    dz = d_table.new_zeros(2, BH, 2 * hd)
    dc = d_table.new_zeros(2, BH, hd)
    dgs = [None] * P
    for t in reversed(range(P)):
        dg, dc = backward(d_out[:, t], dz, dc, acts[t], cs[t], tcs[t], H)
        dgs[t] = dg
        if t > 0:
            dz = torch.bmm(dg, w_state_t)  # (2, B*H, 2h): into the previous step's state inputs
    dg = torch.stack(dgs, dim=1)  # (2, P, B*H, 4h): every step's gate gradients = d x_gates
    zs = torch.stack(zss, dim=1)  # (2, P, B*H, 2h)
    return dg, state_weight_grad(zs, dg)


def state_weight_grad(zs: torch.Tensor, dg: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """sum over steps and rows of z^T dg: zs (2, P, R, 2h), dg (2, P, R, 4h) -> (2, 2h, 4h).

    As one (2h x P*R) @ (P*R x 4h) product per direction the reduction is ~400k long at
    batch 256, and a GPU gives each of the two small outputs one thread block. Cut into
    (direction, step, block of ~`chunk` rows) products, it is hundreds of short
    reductions run side by side, then one sum."""
    _, P, R, k = zs.shape
    s = max((d for d in range(1, R // chunk + 1) if R % d == 0), default=1)  # blocks per step
    parts = torch.bmm(zs.reshape(2 * P * s, R // s, k).transpose(1, 2), dg.reshape(2 * P * s, R // s, -1))
    return parts.view(2, P * s, k, -1).sum(1)


def diagonal_scan(x_gates: torch.Tensor, w_state: torch.Tensor, H: int, kernels: ScanCells = EAGER) -> torch.Tensor:
    """States of both directions: input gates x_gates (2, P, B*H, 4h) (zero at the skew's
    padding) and w_state = [w_left; w_above] (2, 2h, 4h) -> a table (2*P*B*H + 1, h) of
    the states of every (direction, diagonal, row), in that order, and a zero row."""
    return DiagonalScan.apply(x_gates, w_state, H, kernels)


__all__ = ["diagonal_scan", "state_weight_grad", "diagonal_indices", "gather_rows", "DiagonalScan", "cell_forward",
           "cell_backward", "EAGER"]
