"""The multi-scale PixelRNN's conditioning (PixelRNN paper, section 3.5): the small image
reaches the conditional PixelRNN through a learned upsampling, so each position of an
s x s block gets a conditioning of its own. (Its joint likelihood, causality, sum to 1
and samplers are tested with the other models in test_autoregressive.py and
test_fast_paths.py.)"""

import pytest
import torch
import torch.nn.functional as F

from pixelexp.models import build_model

SMALL = dict(hidden_dims=6, recurrent_length=2, out_hidden_dims=12, out_recurrent_length=1)


def make(shape, levels, stride, seed=0):
    torch.manual_seed(seed)
    model = build_model("multiscale_pixel_rnn", image_shape=shape, levels=levels, scale_stride=stride,
                        **SMALL).double().eval()
    with torch.no_grad():  # random biases too: nothing passes because something is zero
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def blocks(cond: torch.Tensor, s: int) -> torch.Tensor:
    """(B, K, H, W) with H, W multiples of s -> (B, h, w, s*s, K): each block's offsets."""
    B, K, H, W = cond.shape
    return cond.view(B, K, H // s, s, W // s, s).permute(0, 2, 4, 3, 5, 1).reshape(B, H // s, W // s, s * s, K)


@pytest.mark.parametrize("shape,levels,stride", [((1, 6, 6), 2, 2), ((3, 4, 6), 4, 2), ((1, 9, 6), 2, 3)])
def test_each_position_of_a_block_gets_its_own_conditioning(shape, levels, stride):
    """Nearest-neighbour upsampling would give the s*s positions of a block one vector; here no
    two offsets of any block share their conditioning, also where the small image is blank."""
    model = make(shape, levels, stride)
    C, H, W = shape
    g = torch.Generator().manual_seed(1)
    small = torch.randint(0, levels, (3, C, H // stride, W // stride), generator=g)
    small[0] = 0  # a blank small image (the background of a digit)
    with torch.no_grad():
        cond = model.condition(small)
    assert cond.shape == (3, 2 * SMALL["hidden_dims"], H, W)
    per_offset = blocks(cond, stride)  # (B, h, w, s*s, K)
    gaps = (per_offset[..., :, None, :] - per_offset[..., None, :, :]).abs().amax(-1)  # (B, h, w, s*s, s*s)
    off_diagonal = ~torch.eye(stride * stride, dtype=torch.bool)
    assert gaps[..., off_diagonal].min() > 1e-3


def test_the_conditioning_of_a_block_comes_from_the_small_image_around_it():
    """A small pixel reaches the blocks of its 3x3 neighbourhood in the small image, and
    no other block (the 3x3 conv, then a map per offset that reads one small position)."""
    shape, s = (1, 10, 10), 2
    model = make(shape, 2, s)
    small = torch.randint(0, 2, (4, 1, 5, 5), generator=torch.Generator().manual_seed(2))
    changed = small.clone()
    changed[:, 0, 2, 2] = 1 - changed[:, 0, 2, 2]
    with torch.no_grad():
        moved = (model.condition(changed) - model.condition(small)).abs().amax((0, 1))  # (H, W)
    reach = torch.zeros(10, 10, dtype=torch.bool)
    reach[2:8, 2:8] = True  # small rows/columns 1..3 -> full rows/columns 2..7
    assert moved[~reach].max() == 0 and moved[reach].min() > 0


def test_the_upsampling_is_a_transposed_convolution_of_kernel_and_stride_s():
    """The docstring's claim: 1x1 conv to the s*s offsets + pixel_shuffle is the paper's
    deconvolution (kernel s, stride s), with a bias per offset instead of per channel."""
    shape, s = (1, 9, 9), 3
    model = make(shape, 2, s)
    K = 2 * SMALL["hidden_dims"]
    e = torch.randn(2, K, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    conv = model.upsample
    weight = conv.weight.view(K, s, s, K).permute(3, 0, 1, 2)  # (in, out, kH, kW) of a transposed conv
    bias = conv.bias.view(K, s, s).repeat(1, 3, 3)  # one per (channel, offset), tiled over the blocks
    with torch.no_grad():
        ours = F.pixel_shuffle(conv(e), s)
        deconv = F.conv_transpose2d(e, weight, stride=s) + bias
    torch.testing.assert_close(ours, deconv)
