"""The row protocol of the cached samplers (`pixelexp.nn.row_cache`): every layer the
row-state sampler drives states its four calls and keeps a dataclass cache, and the
check that a cached sampler draws the naive sampler's images can fail."""

import dataclasses

import pytest
import torch

from pixelexp.models import build_model
from pixelexp.nn.row_cache import RowCache, RowCached

# What each layer's start_row reads of the row above (zeroed: only the biases are left).
ABOVE = {"pixel_cnn": "prev", "diagonal_bilstm": "fw_row", "row_lstm": "h_prev"}


@pytest.mark.parametrize("name", list(ABOVE))
def test_the_sampler_check_can_fail(name):
    """A cached sampler that forgets the rows above (or, PixelCNN, the residual, or its 3x3
    layer's left neighbour on the current row) draws other images."""
    torch.manual_seed(0)
    h = 12
    model = build_model(name, image_shape=(1, 8, 8), levels=2, hidden_dims=h, recurrent_length=3)
    with torch.no_grad():  # larger weights than at initialization, where every logit is near 0 and
        for p in model.parameters():  # a missing term hardly moves a draw
            p.mul_(3)
    naive = model.naive_sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.sample(6, generator=torch.Generator().manual_seed(1)), naive)
    layer = type(model.layers[0])
    start_row, new_cache, step = layer.start_row, layer.new_cache, layer.step

    def forgetful(self, cache, cond_row=None):
        getattr(cache, ABOVE[name]).zero_()
        start_row(self, cache, cond_row)

    def no_residual(self, cache, j, dest):  # the block's output without "+ x"
        step(self, cache, j, dest)
        dest.sub_(cache.x_row[:, j])

    def no_left(self, n, width, like):  # the 3x3 kernel's centre row without column j-1
        cache = new_cache(self, n, width, like)
        cache.w_cur[:h] = 0
        return cache
    broken = [("start_row", forgetful)]
    if name == "pixel_cnn":
        broken += [("step", no_residual), ("new_cache", no_left)]
    for method, fn in broken:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(layer, method, fn)
            assert not torch.equal(model.sample(6, generator=torch.Generator().manual_seed(1)), naive), method


@pytest.mark.parametrize("name", ["pixel_cnn", "diagonal_bilstm", "row_lstm", "multiscale_pixel_rnn"])
def test_row_cached_layers_follow_the_row_protocol(name):
    """Every layer the row-state sampler drives states the four calls of `RowCached`, and
    its cache is a dataclass with the layer's inputs along the row (x_row, pad)."""
    model = build_model(name, image_shape=(1, 6, 6), levels=2, hidden_dims=4, recurrent_length=2)
    stacks = [model.small, model.rest] if name == "multiscale_pixel_rnn" else [model]
    for layer in (layer for m in stacks for layer in m.layers):
        assert isinstance(layer, RowCached)
        cache = layer.new_cache(3, 6, model.head.logits.weight)
        assert isinstance(cache, RowCache) and dataclasses.is_dataclass(cache)
        assert cache.x_row.shape[:2] == (3, cache.pad + 6)
