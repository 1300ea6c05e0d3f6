"""Two more properties of a valid model, each with a check shown to catch its violation:

1. Images of a batch are independent: changing every subpixel of image 0 moves no other
   image's log-probability, in training mode and in evaluation mode (a batch-mean term,
   such as batch normalisation in training, would break it).
2. A class-conditional model's sampler honours its labels: with the same random draws,
   different labels give different images, and each sample is the one the naive sampler
   (log-probabilities, one subpixel at a time) draws for that label.
"""

import pytest
import torch
from test_autoregressive import make  # (tests/ is on sys.path under pytest)

from pixelexp.models import ALIASES, MODELS, build_model

NAMES = [n for n in MODELS if n not in ALIASES]


def batch_leak(model, shape, levels, n=4, seed=0) -> str | None:
    """Whether changing image 0 of a batch moves another image's log-probability."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n, *shape), generator=g)
    x2 = x.clone()
    x2[0] = (x[0] + 1 + torch.randint(0, levels - 1, x[0].shape, generator=g)) % levels  # every subpixel
    with torch.no_grad():
        a, b = model.log_prob(x), model.log_prob(x2)
    if not torch.equal(a[1:], b[1:]):
        return f"image 0 moved images 1..{n - 1} by up to {(a[1:] - b[1:]).abs().max().item():.3g} nats"
    if torch.equal(a[0], b[0]):
        return "image 0 did not move its own log-probability"
    return None


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,shape,levels", [(n, s, lv) for n in NAMES for s, lv in [((1, 4, 4), 2), ((3, 4, 4), 4)]])
def test_images_of_a_batch_are_independent(name, shape, levels, mode):
    model = make(name, shape, levels)
    model.train(mode == "train")
    assert batch_leak(model, shape, levels) is None


class _BatchMean(torch.nn.Module):
    """A model that adds a batch statistic to its logits: a leak between images."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def log_prob(self, x):
        lp = self.inner.log_prob(x)
        return lp + 1e-3 * x.double().mean(0, keepdim=True)


def test_the_batch_check_catches_a_batch_mean_term():
    model = make("pixel_cnn", (1, 4, 4), 2)
    assert batch_leak(_BatchMean(model), (1, 4, 4), 2) is not None
    norm = build_model("pixel_cnn", image_shape=(1, 4, 4), levels=2, hidden_dims=4, recurrent_length=1)
    norm.head_norm = torch.nn.BatchNorm2d(1).train()  # a batch-normalised input: the same kind of leak
    forward = norm.log_prob
    norm.log_prob = lambda x, labels=None: forward(x) + norm.head_norm(x.float())
    assert batch_leak(norm.train(), (1, 4, 4), 2) is not None


def draw(model, labels, seed=0):
    return model.sample(labels=labels, generator=torch.Generator().manual_seed(seed))


def test_conditional_samples_differ_by_label_and_follow_the_model():
    model = make("gated_pixel_cnn", (1, 4, 4), 2, conditional=True, num_classes=10).float()
    with torch.no_grad():
        for layer in model.layers:  # a strong label: each class its own images
            layer.embed.weight.mul_(4)
    threes, nines = draw(model, torch.full((6,), 3)), draw(model, torch.full((6,), 9))
    assert torch.equal(threes, draw(model, torch.full((6,), 3)))  # the same draws, the same images
    assert not torch.equal(threes, nines)  # the label changes what is drawn
    mixed = torch.tensor([3, 9, 3, 9, 3, 9])
    got = draw(model, mixed)
    assert torch.equal(got[0::2], threes[0::2]) and torch.equal(got[1::2], nines[1::2])  # per image, its label
    assert torch.equal(got, model.naive_sample(labels=mixed, generator=torch.Generator().manual_seed(0)))


def test_the_label_check_catches_a_sampler_that_drops_labels(monkeypatch):
    model = make("gated_pixel_cnn", (1, 4, 4), 2, conditional=True, num_classes=10).float()
    with torch.no_grad():
        for layer in model.layers:
            layer.embed.weight.mul_(4)
    sample = model._sample
    monkeypatch.setattr(model, "_sample", lambda n, device, generator, labels: sample(n, device, generator,
                                                                                      torch.zeros_like(labels)))
    assert torch.equal(draw(model, torch.full((6,), 3)), draw(model, torch.full((6,), 9)))
