"""Row-state sampling for the models whose stack is a 7x7 mask-A input layer, layers that
keep their inputs and states along and above the current row, and the 1x1 output head:
the PixelRNNs (Row LSTM, Diagonal BiLSTM) and PixelCNN. Each layer follows the row
protocol `pixelexp.nn.row_cache.RowCached` with a cache of its own.

Per row, what depends only on finished rows is computed at once for every position of
the row: the input layer's part from the rows above (one convolution) and each layer's
part from its rows or states above (`layer.start_row`). Per subpixel, each layer computes
its own position only (`layer.step`: six small operations for a PixelCNN block, about
ten for an LSTM, each writing its output into the next layer's kept row), and once a row
is drawn each layer closes it (`layer.finish_row`: the Diagonal BiLSTM's right-to-left
scan; the others keep the row as the row above). A layer keeps its inputs along the row
in cache.x_row (n, pad + W, channels), pad zero columns on the left.
"""

from __future__ import annotations

import torch

from pixelexp.nn.masked import conv_rows
from pixelexp.nn.row_cache import RowCache, RowCached

Stack = list[tuple[RowCached, RowCache]]  # each layer with its cache, bottom to top


def sample_rowwise(model, n: int, device, generator, given: torch.Tensor | None = None,
                   known: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Draw n images from `model` (with .input, .layers, .head, .use_skip) in raster
    order. `given` (n, C, H, W) holds the pixels already drawn where `known` (H, W) is
    true (they are kept, not drawn); `cond` (n, K, H, W) is a conditioning map handed
    to the layers row by row (the multi-scale model)."""
    C, H, W = model.image_shape
    k = model.input.kernel_size[0] // 2  # rows above that the 7x7 input layer sees
    like = model.input.weight
    img = like.new_zeros(n, H + k, W + 2 * k, C)  # scaled image, channels last, zero padding above and beside
    if given is not None:  # the known pixels are read from here; the rest is overwritten before it is read
        img[:, k:, k: k + W] = model.scale(given).permute(0, 2, 3, 1)
    known = [[False] * W] * H if known is None else known.tolist()  # Python bools: no tensor ops per subpixel
    stack: Stack = [(layer, layer.new_cache(n, W, like)) for layer in model.layers]
    first = stack[0][1] if stack else None  # the input layer writes into the first layer's row
    feats = like.new_zeros(n, model.input.out_channels)  # the last layer's output at (i, j) (no layers: the input's)
    w_above, w_cur = model.input.rows_above(), model.input.centre_row()  # the 7x7 layer: rows i-k..i-1, row i
    head = model.head.matrices()
    with model.sampling(generator, n, device) as draws:
        for i in range(H):
            # the 7x7 layer's part from the rows above, at every position of row i: (W, n, 2h)
            above = conv_rows(img[:, i: i + k], w_above, model.input.bias)
            cond_row = None if cond is None else cond[:, :, i]  # (n, K, W)
            for layer, cache in stack:
                layer.start_row(cache, cond_row)
            for j in range(W):
                for c in range(1 if known[i][j] else C):  # a known pixel: just its states
                    torch.addmm(above[j], img[:, i + k, j: j + k + 1].flatten(1), w_cur,
                                out=feats if first is None else first.input_at(j))  # the input layer at (i, j)
                    logits = _at(model, stack, feats, head, j)  # (n, C) or (n, C*L)
                    if not known[i][j]:
                        v = model._draw_channel(logits, c, draws)  # (n,) ints
                        img[:, i + k, j + k, c] = model.scaled_draw(v)
            for layer, cache in stack:
                layer.finish_row(cache, cond_row)
    return model.unscale(img[:, k:, k: k + W].permute(0, 3, 1, 2)).contiguous()  # (n, C, H, W) ints


def _at(model, stack: Stack, feats: torch.Tensor, head, j: int) -> torch.Tensor:
    """Every layer at column j of the current row, from the input layer's output kept in
    the first layer's row -> the head's logits there: (n, C) or (n, C*L)."""
    dests = [cache.input_at(j) for _, cache in stack[1:]] + [feats]  # each layer's output: (n, k)
    for (layer, cache), dest in zip(stack, dests):
        layer.step(cache, j, dest)
    x = torch.stack(dests).sum(0) if model.use_skip and stack else feats  # skip: the sum of all layers' outputs
    return model.head.at(x, head)
