"""The fast paths compute what the plain reference computes: the fast scans of the
recurrent layers against the plain loops of nn/plain.py (log-probabilities and every
parameter's gradient, fp32, max relative difference 1e-5)."""

import pytest
import torch

from pixelexp.models import build_model, set_impl


def log_prob_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    lp = model.log_prob(x)
    lp.sum().backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for n, p in model.named_parameters()}
    return lp.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:  # an unused, empty parameter (no conditioning)
        return 0.0
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name,shape,levels,extra", [
    ("diagonal_bilstm", (1, 12, 10), 2, {}),
    ("diagonal_bilstm", (3, 6, 7), 16, {"use_skip": True}),
    ("diagonal_bilstm", (1, 9, 9), 2, {"use_residual": False}),
    ("row_lstm", (1, 12, 10), 2, {}),
    ("row_lstm", (3, 6, 7), 16, {"use_skip": True}),
    ("multiscale_pixel_rnn", (1, 12, 12), 2, {}),
])
def test_fast_scan_matches_the_plain_loop(name, shape, levels, extra):
    torch.manual_seed(0)
    model = build_model(name, image_shape=shape, levels=levels, hidden_dims=8, recurrent_length=3,
                        out_hidden_dims=16, **extra)
    with torch.no_grad():  # larger weights than at initialisation: gates away from 0.5
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.randint(0, levels, (4, *shape))
    lp_fast, g_fast = log_prob_and_grads(set_impl(model, "fast"), x)
    lp_plain, g_plain = log_prob_and_grads(set_impl(model, "plain"), x)
    assert rel(lp_fast, lp_plain) < 1e-5
    for k in g_plain:
        assert rel(g_fast[k], g_plain[k]) < 1e-5, k
    assert any(g.abs().sum() > 0 for g in g_plain.values())


def test_the_plain_loop_is_a_different_computation():
    """The check can fail: the plain loop without the down-shift of the right-to-left
    direction (the TensorFlow reference's leak) gives other log-probabilities."""
    from pixelexp.nn import plain
    torch.manual_seed(0)
    model = build_model("diagonal_bilstm", image_shape=(1, 8, 8), levels=2, hidden_dims=4, recurrent_length=2)
    x = torch.randint(0, 2, (2, 1, 8, 8))
    fast = model.log_prob(x)
    original = plain.down_shift
    try:
        plain.down_shift = lambda t: t
        leaky = set_impl(model, "plain").log_prob(x)
    finally:
        plain.down_shift = original
    assert rel(leaky, fast) > 1e-3


@pytest.mark.parametrize("shape,levels,extra", [
    ((1, 10, 9), 2, {}),
    ((3, 6, 5), 4, {"use_skip": True}),
    ((1, 8, 8), 2, {"use_residual": False}),
    ((3, 5, 5), 256, {}),
])
def test_cached_pixel_cnn_sampler_draws_the_naive_samplers_images(shape, levels, extra):
    torch.manual_seed(0)
    model = build_model("pixel_cnn", image_shape=shape, levels=levels, hidden_dims=12, recurrent_length=3,
                        out_hidden_dims=8, **extra)
    fast = model.sample(6, generator=torch.Generator().manual_seed(1))
    naive = model.naive_sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fast, naive)
    assert fast.float().std() > 0  # not a degenerate draw


def test_the_sampler_check_can_fail():
    """A cached sampler that forgets the row above (in the kept image and maps) draws other images."""
    torch.manual_seed(0)
    model = build_model("pixel_cnn", image_shape=(1, 8, 8), levels=2, hidden_dims=12, recurrent_length=3)
    naive = model.naive_sample(6, generator=torch.Generator().manual_seed(1))
    at = model._at

    def forgetful(img, maps, w0, ws, i, j, k0):
        img[:, :, i + k0 - 1] = 0  # the row above, as the kernel windows see it
        for m in maps:
            m[:, :, i] = 0
        return at(img, maps, w0, ws, i, j, k0)
    model._at = forgetful
    assert not torch.equal(model.sample(6, generator=torch.Generator().manual_seed(1)), naive)
