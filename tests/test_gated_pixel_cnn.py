"""The gated PixelCNN's wiring as in the Conditional PixelCNN paper and its public ports:
per-layer skip convolutions, every parameter trained, Glorot-uniform start."""

import math

import pytest
import torch
import torch.nn as nn

from pixelexp.models import ALIASES, MODELS, build_model

NAMES = [n for n in MODELS if n not in ALIASES]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip", [False, True])
def test_every_parameter_gets_a_gradient(name, skip):
    """No layer is built and then left out of the likelihood (DistributedDataParallel
    refuses such a model, and its weights would be counted as capacity)."""
    shape = (3, 8, 8) if name == "multiscale_pixel_rnn" else (3, 5, 5)
    torch.manual_seed(0)
    model = build_model(name, image_shape=shape, levels=4, hidden_dims=6, recurrent_length=2,
                        out_hidden_dims=6, out_recurrent_length=1, use_skip=skip)
    x = torch.randint(0, 4, (2, *shape), generator=torch.Generator().manual_seed(0))
    model.log_prob(x).sum().backward()
    unused = [n for n, p in model.named_parameters()  # (an empty tensor holds no weights)
              if p.numel() and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not unused, f"{name} (use_skip={skip}) never uses {unused}"


def test_skip_connections_reach_the_head_from_every_layer():
    """With skips the head reads each layer's own skip convolution, so cutting the
    residual stream (every residual 1x1 zeroed) leaves the layers' skips feeding it."""
    torch.manual_seed(0)
    model = build_model("gated_pixel_cnn", image_shape=(1, 6, 6), levels=2, hidden_dims=8,
                        recurrent_length=3, use_skip=True).double()
    with torch.no_grad():
        for layer in model.layers:
            if layer.out is not None:
                layer.out.weight.zero_()
                layer.out.bias.zero_()
    x = torch.randint(0, 2, (4, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.logits(x)
    assert logits.std() > 1e-3  # the image still reaches the logits
    for k, layer in enumerate(model.layers):  # and through each layer's skip
        with torch.no_grad():
            saved = layer.skip.weight.clone()
            layer.skip.weight.zero_()
            cut = model.logits(x)
            layer.skip.weight.copy_(saved)
        assert (cut - logits).abs().max() > 1e-6, f"layer {k}'s skip does not reach the head"


def test_starts_glorot_uniform_with_zero_biases():
    model = build_model("gated_pixel_cnn", image_shape=(1, 28, 28), levels=2, hidden_dims=32,
                        recurrent_length=4, out_hidden_dims=64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 10
    for m in convs:
        assert m.bias is None or not m.bias.any()
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = m.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 1000:  # enough draws to tell Glorot's spread from PyTorch's default
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_value_embedding_is_the_table_at_values_and_has_gradients(levels):
    from pixelexp.models.gated_pixel_cnn import ValueEmbedding
    torch.manual_seed(0)
    model = build_model("gated_pixel_cnn", image_shape=(3, 2, 2), levels=levels, hidden_dims=6, recurrent_length=0)
    emb: ValueEmbedding = model.embed_values
    x = torch.randint(0, levels, (2, 3, 2, 2), generator=torch.Generator().manual_seed(1))
    xs = model.scale(x).requires_grad_(True)
    e = emb(xs).view(2, 3, 6, 2, 2)  # (B, C, F, H, W)
    want = emb.table[torch.arange(3)[None, :, None, None], x].permute(0, 1, 4, 2, 3)
    assert torch.allclose(e, want, atol=1e-5)
    (grad,) = torch.autograd.grad(e.sum(), xs)
    assert (grad != 0).all()  # every input reaches the features (the receptive-field view reads this)
