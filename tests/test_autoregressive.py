"""Every model is a valid autoregressive distribution.

1. Causality: changing one input subpixel never moves the log-probability of any
   subpixel before it (raster order, then R, G, B), and does move some after it.
2. Normalisation: on images small enough to enumerate, the probabilities of all
   possible images sum to 1.
"""

import itertools

import pytest
import torch

from pixelexp.models import ALIASES, MODELS, build_model, set_impl

NAMES = [n for n in MODELS if n not in ALIASES]  # each architecture once

SMALL = dict(hidden_dims=6, recurrent_length=2, out_hidden_dims=12, out_recurrent_length=1)


def make(name, shape, levels, seed=0, **kw):
    torch.manual_seed(seed)
    # RGB splits every layer in 3 channel groups: wider layers keep each group's path alive.
    size = SMALL if shape[0] == 1 else {**SMALL, "hidden_dims": 12, "out_hidden_dims": 24}
    model = build_model(name, image_shape=shape, levels=levels, **{**size, **kw}).double().eval()
    # Random biases, so that no test passes because something happens to be zero.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def order(model):
    """Subpixels (c, i, j) in the model's generation order (raster, then R, G, B, except
    the multi-scale model: the small image first)."""
    return model.generation_order()


CASES = [(name, shape, levels) for name in NAMES
         for shape, levels in [((1, 5, 6), 2), ((1, 4, 5), 256), ((3, 4, 4), 2), ((3, 3, 4), 256)]]


def causality_violation(model, shape, levels, n_images=8, seed=1):
    """First broken rule found by changing each subpixel in turn, or None.

    Each subpixel is changed in n_images random images at once. Leaks are looked for
    in all of them; "moves something later" must hold in at least one (around one
    particular image a ReLU can be dead).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n_images, *shape), generator=g)
    with torch.no_grad():
        base, base_logits = model.log_prob(x), model.logits(x)
    seq = order(model)
    for k, (c, i, j) in enumerate(seq):
        x2 = x.clone()
        x2[:, c, i, j] = (x[:, c, i, j] + 1 + levels // 3) % levels
        with torch.no_grad():
            moved = (model.log_prob(x2) - base).abs().amax(0)  # (C, H, W): worst over images
            own = (model.logits(x2)[:, c, ..., i, j] - base_logits[:, c, ..., i, j]).abs().max()
        earlier = torch.tensor([moved[p] for p in seq[:k]] or [0.0])
        later = torch.tensor([moved[p] for p in seq[k + 1:]])
        if earlier.max() != 0:
            return f"changing {(c, i, j)} moved an earlier subpixel (leak)"
        if own != 0:  # its own predictive distribution must not depend on its value
            return f"the distribution of {(c, i, j)} depends on its own value (leak)"
        if len(later) and later.max() <= 1e-9:
            return f"changing {(c, i, j)} moved nothing after it"
    return None


@pytest.mark.parametrize("name,shape,levels", CASES, ids=[f"{n}-{'x'.join(map(str, s))}-L{l}" for n, s, l in CASES])
def test_changing_a_subpixel_moves_only_later_ones(name, shape, levels):
    assert causality_violation(make(name, shape, levels), shape, levels) is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("residual,skip", [(False, False), (True, True), (False, True)])
def test_residual_and_skip_options_stay_causal(name, residual, skip):
    shape = (3, 3, 3)
    model = make(name, shape, 2, use_residual=residual, use_skip=skip)
    assert causality_violation(model, shape, 2) is None


def test_causality_check_catches_a_pixel_cnn_without_mask_a():
    model = make("pixel_cnn", (1, 4, 4), 2)
    model.input.mask.fill_(1.0)  # the first layer now sees the pixel it predicts
    assert "leak" in causality_violation(model, (1, 4, 4), 2)


PIXEL_CNN_OPTIONS = [(False, False), (True, False), (False, True), (True, True)]  # (residual, skip)


@pytest.mark.parametrize("residual,skip", PIXEL_CNN_OPTIONS)
@pytest.mark.parametrize("shape,levels", [((1, 4, 5), 2), ((3, 3, 4), 4)], ids=["gray", "rgb"])
def test_pixel_cnn_is_causal_with_and_without_residual_and_skip(shape, levels, residual, skip):
    model = make("pixel_cnn", shape, levels, use_residual=residual, use_skip=skip)
    assert causality_violation(model, shape, levels) is None


@pytest.mark.parametrize("residual,skip", PIXEL_CNN_OPTIONS)
@pytest.mark.parametrize("shape,levels", [((1, 2, 3), 2), ((3, 1, 2), 2), ((1, 2, 2), 4)])
def test_pixel_cnn_sums_to_one_with_and_without_residual_and_skip(shape, levels, residual, skip):
    model = make("pixel_cnn", shape, levels, use_residual=residual, use_skip=skip)
    with torch.no_grad():
        log_p = model.log_prob(all_images(shape, levels)).sum(dim=(1, 2, 3))
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-6
    assert log_p.std() > 1e-3


def test_pixel_cnn_is_the_papers_residual_block():
    """Section 3.4, Figure 5: a 7x7 mask-A layer to 2h, then blocks of ReLU, 1x1 (2h -> h),
    ReLU, 3x3 mask B (h -> h), ReLU, 1x1 (h -> 2h) on a residual stream of 2h; every
    masked layer, the 1x1s included, split into R, G, B groups."""
    from pixelexp.models import count_parameters
    from pixelexp.nn.masked import causal_mask, channel_groups
    C, h, L, oh = 3, 12, 2, 24
    model = make("pixel_cnn", (C, 5, 5), 256, hidden_dims=h, recurrent_length=L, out_hidden_dims=oh,
                 out_recurrent_length=2)

    def check(conv, cin, cout, k, mask_type):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (cin, cout, (k, k))
        want = causal_mask(channel_groups(cout, C), channel_groups(cin, C), (k, k), mask_type)
        assert torch.equal(conv.mask, want)
    check(model.input, C, 2 * h, 7, "A")
    assert len(model.layers) == L
    for block in model.layers:
        check(block.reduce, 2 * h, h, 1, "B")
        check(block.conv, h, h, 3, "B")
        check(block.expand, h, 2 * h, 1, "B")
    assert model.head.hidden[0].in_channels == 2 * h
    # R of the middle 1x1 sees only R; B sees all three (one block per group: 12 = 3 x 4).
    assert model.layers[0].reduce.mask[:4, :, 0, 0].sum() == 4 * 8 and model.layers[0].reduce.mask[8:, :, 0, 0].all()
    block = (2 * h * h + h) + (h * h * 9 + h) + (h * 2 * h + 2 * h)
    head = (2 * h * oh + oh) + (oh * oh + oh) + (oh * C * 256 + C * 256)
    assert count_parameters(model) == (C * 2 * h * 49 + 2 * h) + L * block + head
    x = torch.randn(2, 2 * h, 5, 5, dtype=torch.double)
    b = model.layers[0]
    y = b.expand(torch.relu(b.conv(torch.relu(b.reduce(torch.relu(x))))))
    assert torch.allclose(b(x), x + y)
    b.use_residual = False  # without the residual the block's output replaces the stream
    assert torch.allclose(b(x), y)


@pytest.mark.parametrize("layer", ["reduce", "conv", "expand"])
def test_causality_check_catches_a_pixel_cnn_block_whose_r_sees_g(layer):
    """Opening one group connection at the centre of any masked layer of the block (R's
    features reading G's at the same pixel, which have seen R's value) is a leak."""
    shape = (3, 3, 3)
    model = make("pixel_cnn", shape, 4)
    assert causality_violation(model, shape, 4) is None
    conv = getattr(model.layers[0], layer)
    kh, kw = conv.kernel_size
    n_out, n_in = conv.out_channels, conv.in_channels
    conv.mask[: n_out // 3, n_in // 3: 2 * n_in // 3, kh // 2, kw // 2] = 1.0
    assert "leak" in causality_violation(model, shape, 4)


def test_causality_check_catches_the_reference_bilstm_leak(monkeypatch):
    """Without the down-shift of the right-to-left direction (the TensorFlow
    reference's bug), the Diagonal BiLSTM sees the future."""
    import pixelexp.nn.kernels.plain as plain
    import pixelexp.nn.lstm as lstm
    model = make("pixel_rnn", (1, 4, 4), 2)
    assert causality_violation(model, (1, 4, 4), 2) is None
    monkeypatch.setattr(lstm.DiagonalBiLSTM, "row_shift", 0)  # the fast layer, unshifted
    assert "leak" in causality_violation(model, (1, 4, 4), 2)
    monkeypatch.undo()
    monkeypatch.setattr(plain, "down_shift", lambda x: x)  # the plain loop, unshifted
    set_impl(model, "plain")
    assert "leak" in causality_violation(model, (1, 4, 4), 2)


def all_images(shape, levels):
    n = 1
    for s in shape:
        n *= s
    values = torch.tensor(list(itertools.product(range(levels), repeat=n)))
    return values.view(-1, *shape)


NORM = [(name, shape, levels) for name in NAMES
        for shape, levels in [((1, 2, 3), 2), ((3, 1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2), 256)]]


@pytest.mark.parametrize("name,shape,levels", NORM, ids=[f"{n}-{'x'.join(map(str, s))}-L{l}" for n, s, l in NORM])
def test_probabilities_of_all_images_sum_to_one(name, shape, levels):
    model = make(name, shape, levels)
    x = all_images(shape, levels)
    with torch.no_grad():
        log_p = model.log_prob(x).sum(dim=(1, 2, 3))
    total = torch.logsumexp(log_p, 0).exp().item()
    assert abs(total - 1.0) < 1e-6, total
    # And the distribution is not trivially uniform: the model really conditions.
    assert log_p.std() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_images_of_the_right_shape_and_range(name):
    model = make(name, (1, 4, 5), 4).float()
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 4, 5) and s.dtype == torch.long
    assert 0 <= s.min() and s.max() < 4


@pytest.mark.parametrize("name", NAMES)
def test_sampling_follows_the_model(name):
    """Sample frequencies of a tiny image match the model's probabilities."""
    shape, levels = (1, 1, 2), 2
    model = make(name, shape, levels).float()
    g = torch.Generator().manual_seed(0)
    s = model.sample(4000, generator=g)
    x = all_images(shape, levels)
    with torch.no_grad():
        p = model.log_prob(x).sum(dim=(1, 2, 3)).exp()
    counts = torch.stack([(s == xi).flatten(1).all(1).sum() for xi in x]).float() / len(s)
    assert (counts - p).abs().max() < 0.04, (counts, p)


FAST = [(name, shape, levels, skip, residual) for name in ("diagonal_bilstm", "row_lstm")
        for shape, levels, skip, residual in [((1, 5, 6), 2, False, True), ((3, 3, 4), 4, True, True),
                                              ((1, 4, 3), 256, False, True), ((3, 3, 4), 4, False, False)]]


@pytest.mark.parametrize("name,shape,levels,skip,residual", FAST)
def test_fast_rnn_sampler_returns_the_naive_samplers_images(name, shape, levels, skip, residual):
    """The PixelRNN samplers that keep row states draw exactly what recomputing the
    whole image for every subpixel draws, given the same random numbers."""
    from pixelexp.models.base import AutoregressiveModel
    model = make(name, shape, levels, recurrent_length=3, use_skip=skip, use_residual=residual)
    fast = model.sample(6, generator=torch.Generator().manual_seed(3))
    naive = AutoregressiveModel.sample(model, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fast, naive)
    assert fast.float().std() > 0  # not a degenerate all-zero draw


@pytest.mark.parametrize("name", ["diagonal_bilstm", "row_lstm", "pixel_cnn", "gated_pixel_cnn"])
@pytest.mark.parametrize("skip", [False, True])
def test_fast_samplers_of_models_without_recurrent_layers(name, skip):
    """recurrent_length=0 (the input layer straight into the head) samples like the naive sampler."""
    from pixelexp.models.base import AutoregressiveModel
    model = make(name, (3, 4, 5), 4, recurrent_length=0, use_skip=skip)
    fast = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fast, AutoregressiveModel.sample(model, 5, generator=torch.Generator().manual_seed(1)))
    assert fast.float().std() > 0  # not a degenerate all-zero draw


@pytest.mark.parametrize("name,reach", [("pixel_cnn", 4), ("gated_pixel_cnn", 5)])
def test_convolutional_samplers_band_of_rows_changes_nothing(name, reach):
    """Sampling a convolutional model on only the rows its receptive field reaches
    (`rows_above`, read by `AutoregressiveModel.sample`; the models' own cached samplers
    do not read it) draws the same images as running it on every row above."""
    from pixelexp.models.base import AutoregressiveModel
    shape, levels = (1, 9, 4), 2
    model = make(name, shape, levels, recurrent_length=1)
    assert model.rows_above == reach
    heights = []
    logits = model.logits

    def spy(x, labels=None):
        heights.append(x.shape[2])
        return logits(x, labels)
    model.logits = spy  # what AutoregressiveModel.sample calls
    banded = AutoregressiveModel.sample(model, 5, generator=torch.Generator().manual_seed(0))
    assert max(heights) == reach + 1  # the band was used: rows i - reach .. i, never more
    model.rows_above = None
    heights.clear()
    full = AutoregressiveModel.sample(model, 5, generator=torch.Generator().manual_seed(0))
    assert max(heights) == shape[1]  # every row above
    del model.logits
    assert torch.equal(banded, full) and full.float().std() > 0
    # and the band is not too narrow: one row less would change the logits
    x = torch.randint(0, levels, (1, *shape))
    with torch.no_grad():
        ref = model.logits(x)[..., 8, :]
        cut = model.logits(x[:, :, 8 - reach + 1:])[..., -1, :]
    assert not torch.allclose(ref, cut)


def test_conditional_gated_pixel_cnn_uses_the_label():
    shape = (1, 4, 4)
    model = make("gated_pixel_cnn", shape, 2, conditional=True, num_classes=10)
    x = torch.randint(0, 2, (3, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.log_prob(x, torch.tensor([0, 1, 2]))
        b = model.log_prob(x, torch.tensor([0, 7, 2]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])  # other rows untouched
    assert (a[1] - b[1]).abs().max() > 1e-6  # the label changes the distribution
    # A normalised distribution for each label.
    small = make("gated_pixel_cnn", (1, 1, 3), 2, conditional=True, num_classes=10)
    imgs = all_images((1, 1, 3), 2)
    for label in (0, 5):
        with torch.no_grad():
            total = small.log_prob(imgs, torch.full((len(imgs),), label)).sum((1, 2, 3)).exp().sum()
        assert abs(total.item() - 1) < 1e-6


def test_conditional_sampling_honours_the_labels():
    model = make("gated_pixel_cnn", (1, 3, 3), 2, conditional=True, num_classes=10).float()
    labels = torch.tensor([3, 3, 9, 0, 1])
    s = model.sample(labels=labels, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 3, 3)
    with pytest.raises(ValueError, match="labels of shape"):
        model.sample(2)  # a conditional model needs labels
    with pytest.raises(ValueError, match="labels of shape"):
        model.sample(4, labels=labels)  # n and labels disagree
    with pytest.raises(ValueError, match="not class-conditional"):
        make("pixel_cnn", (1, 3, 3), 2).sample(2, labels=torch.tensor([1, 2]))


def test_conditional_causality():
    shape = (3, 3, 3)
    model = make("gated_pixel_cnn", shape, 4, conditional=True, num_classes=10)
    fixed = torch.tensor([4] * 8)
    wrapped = type("Fixed", (), {  # the same model with its label fixed
        "log_prob": lambda self, x: model.log_prob(x, fixed[: len(x)]),
        "logits": lambda self, x: model.logits(x, fixed[: len(x)]),
        "generation_order": lambda self: model.generation_order()})()
    assert causality_violation(wrapped, shape, 4) is None


@pytest.mark.parametrize("shape,levels,stride", [((1, 5, 6), 2, 2), ((3, 4, 3), 4, 2), ((1, 7, 7), 2, 3)])
def test_multiscale_sampler_draws_the_small_image_first_then_the_rest(shape, levels, stride):
    model = make("multiscale_pixel_rnn", shape, levels, scale_stride=stride)
    fast = model.sample(5, generator=torch.Generator().manual_seed(2))
    naive = model.naive_sample(5, generator=torch.Generator().manual_seed(2))  # in generation order
    assert torch.equal(fast, naive) and fast.float().std() > 0


def test_multiscale_log_prob_is_small_plus_rest_given_small():
    shape = (1, 4, 4)
    model = make("multiscale_pixel_rnn", shape, 2)
    x = torch.randint(0, 2, (3, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp = model.log_prob(x)
        small = model.small.log_prob(x[:, :, ::2, ::2])
    assert torch.equal(lp[:, :, ::2, ::2], small)
    order = model.generation_order()
    assert [p[1:] for p in order[:4]] == [(0, 0), (0, 2), (2, 0), (2, 2)]  # small image first
