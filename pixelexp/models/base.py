"""What every pixel model shares: input scaling, the output head, log_prob, sample.

A model maps an image x (B, C, H, W) of integers in [0, L) to, for every subpixel,
the distribution of its value given all subpixels before it (raster order: rows,
then columns, then channels R, G, B). Subclasses only build `features(x)`, a
(B, F, H, W) map whose position (i, j) channel group c has seen exactly the
subpixels before (i, j, c); the head turns it into logits with 1x1 mask-B layers.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelexp.nn.kernels.steps import RecurrentLayer
from pixelexp.nn.masked import MaskedConv2d


class OutputHead(nn.Module):
    """`out_recurrent_length` x (ReLU, 1x1 mask B to `out_hidden_dims`), then ReLU and a
    1x1 mask-B layer to the logits: C channels for 2 levels (Bernoulli), else C x L
    (a softmax over the L values of each channel)."""

    def __init__(self, in_dims: int, out_hidden_dims: int, out_recurrent_length: int,
                 image_channels: int, levels: int):
        super().__init__()
        dims = [in_dims] + [out_hidden_dims] * out_recurrent_length
        self.hidden = nn.ModuleList(
            MaskedConv2d(a, b, 1, "B", image_channels) for a, b in zip(dims[:-1], dims[1:]))
        n_out = image_channels * (1 if levels == 2 else levels)
        self.logits = MaskedConv2d(dims[-1], n_out, 1, "B", image_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(F.relu(x))
        return self.logits(F.relu(x))

    def matrices(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Its layers as (weight (out, in), bias), taken once per sampling run for `at`."""
        return [(layer.matrix(), layer.bias) for layer in (*self.hidden, self.logits)]

    @staticmethod
    def at(x: torch.Tensor, matrices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The head at one position: features (n, in) -> logits (n, C) or (n, C*L)."""
        for w, b in matrices:  # ReLU, 1x1 layer, ..., ReLU, 1x1 layer to the logits
            x = torch.addmm(b, F.relu(x), w.T)
        return x


def run_layers(x: torch.Tensor, layers: nn.ModuleList, use_skip: bool) -> torch.Tensor:
    """The layer stack; with skip connections every layer's output reaches the head
    (their sum), as in the paper's comparison of residual and skip connections."""
    total = None
    for layer in layers:
        x = layer(x)
        total = x if total is None else total + x
    return total if use_skip and total is not None else x


class Draws:
    """The uniform numbers of one sampling run, drawn up front, (steps, n): the k-th draw
    of a sampler inverts a CDF at row k. Every sampler draws in generation order, so
    given the same generator the naive and the fast samplers use the same numbers (and
    return the same images); and as nothing random happens inside the loop, a CUDA
    graph can replay a whole sampler after fresh numbers are copied into `u`
    (`pixelexp.engine.fast.sample`)."""

    def __init__(self, u: torch.Tensor):
        self.u, self.k = u, 0

    @classmethod
    def of(cls, generator: torch.Generator | Draws | None, steps: int, n: int, device) -> Draws:
        if isinstance(generator, Draws):  # the caller's: a graph's static numbers, or a shared run
            return generator
        return cls(torch.rand(steps, n, generator=generator, device=device))

    def next(self) -> torch.Tensor:
        if self.k >= len(self.u):
            raise RuntimeError(f"sampler drew more than the {len(self.u)} numbers drawn for it")
        self.k += 1
        return self.u[self.k - 1]


class AutoregressiveModel(nn.Module):
    """Base class: subclasses set `self.head` and implement `features`.

    Args:
        image_shape: (C, H, W) of the images it models.
        levels: values per subpixel; 2 gives a Bernoulli output, more a softmax.
    """

    def __init__(self, image_shape: tuple[int, int, int], levels: int):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.levels = int(levels)
        if self.levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")

    # How many rows above a pixel can reach its logits (None: all of them). Sampling then
    # runs the model only on that band of rows, which gives the same logits.
    rows_above: int | None = None
    # Class-conditional models take `labels` (B,) in logits, log_prob and sample.
    conditional: bool = False
    # Built on Diagonal BiLSTM layers, whose scan model.impl=triton replaces.
    diagonal_scan: bool = False

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def recurrent_layers(self) -> list[RecurrentLayer]:
        """The layers whose scans run step functions they are handed (`RecurrentLayer`:
        `kernels`, `use_kernels`), in module order; none in the convolutional models."""
        return [m for m in self.modules() if isinstance(m, RecurrentLayer)]

    def generation_order(self) -> list[tuple[int, int, int]]:
        """Subpixels (c, i, j) in the order the model generates them: raster, then R, G, B."""
        C, H, W = self.image_shape
        return [(c, i, j) for i in range(H) for j in range(W) for c in range(C)]

    def _check_labels(self, labels: torch.Tensor | None, n: int) -> None:
        if not self.conditional:
            if labels is not None:
                raise ValueError(f"{type(self).__name__} is not class-conditional: give no labels")
            return
        if labels is None or labels.shape != (n,):
            raise ValueError(f"{type(self).__name__} is class-conditional: give labels of shape ({n},)")

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Integers in [0, L) -> floats: {0, 1} for 2 levels, else [-1, 1]."""
        x = x.to(self.head.logits.weight.dtype)
        return x if self.levels == 2 else x * (2.0 / (self.levels - 1)) - 1.0

    def scaled_draw(self, v: torch.Tensor) -> torch.Tensor:
        """Drawn integers (n,) as a sampler writes them into its float image: `scale(v)`,
        or for 2 levels v itself, which the copy into the image casts (one operation fewer
        per subpixel)."""
        return v if self.levels == 2 else self.scale(v)

    def unscale(self, v: torch.Tensor) -> torch.Tensor:
        """The inverse of `scale`: floats -> integers in [0, L)."""
        if self.levels == 2:
            return v.round().long()
        return ((v + 1.0) * ((self.levels - 1) / 2.0)).round().long()

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) ints -> (B, C, H, W) Bernoulli logits or (B, C, L, H, W)."""
        B, C, H, W = x.shape
        self._check_labels(labels, B)
        feats = self.features(self.scale(x)) if labels is None else self.features(self.scale(x), labels)
        out = self.head(feats)
        return out if self.levels == 2 else out.view(B, C, self.levels, H, W)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """= log_prob: the call that DistributedDataParallel wraps in training."""
        return self.log_prob(x, labels)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) ints -> (B, C, H, W): ln p(subpixel | all before it [, label])."""
        return self.log_prob_from_logits(self.logits(x, labels), x)

    def log_prob_from_logits(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.levels == 2:
            return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
        return logits.log_softmax(dim=2).gather(2, x.unsqueeze(2)).squeeze(2)

    def sample_draws(self) -> int:
        """How many draws one sampled image needs at most (one per subpixel)."""
        return math.prod(self.image_shape)

    def _draw(self, logits: torch.Tensor, draws: Draws) -> torch.Tensor:
        """One value per row of `logits` ((n,) Bernoulli or (n, L) categorical), by
        inverting the CDF at the next uniform numbers of `draws`."""
        u = draws.next()  # (n,)
        if self.levels == 2:
            return (u < torch.sigmoid(logits.float())).long()
        cdf = logits.float().softmax(-1).cumsum(-1)  # (n, L)
        return (cdf < u[:, None]).sum(-1).clamp_max(self.levels - 1)

    def _draw_channel(self, logits: torch.Tensor, c: int, draws: Draws) -> torch.Tensor:
        """The head's output at one position, (n, C) or (n, C*L) -> a value of channel c, (n,)."""
        if self.levels > 2:
            logits = logits.view(len(logits), -1, self.levels)
        return self._draw(logits[:, c], draws)

    @contextlib.contextmanager
    def sampling(self, generator: torch.Generator | Draws | None, n: int, device):
        """A sampler's run: eval mode inside (the previous mode restored after), autocast
        off (samplers keep their maps in the parameters' dtype), and the run's Draws (every
        sampler's random numbers, drawn up front)."""
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(torch.device(device).type, enabled=False):
                yield Draws.of(generator, self.sample_draws(), n, device)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def naive_sample(self, n: int | None = None, generator: torch.Generator | Draws | None = None,
                     device: torch.device | str | None = None, labels: torch.Tensor | None = None,
                     *, band: bool = False, steps: int | None = None) -> torch.Tensor:
        """The reference sampler: for every subpixel, in `generation_order`, the model on the
        whole image and one draw from its logits there -> LongTensor (n, C, H, W); a
        conditional model draws one image per label (n defaults to len(labels)). What the
        fast samplers are tested and timed against.

        band: run the model only on the rows that reach row i's logits (`rows_reaching`).
            Where the order is raster that gives the same logits, as the rows below i are
            not drawn yet and never reach row i; any other order runs on the whole image.
        steps: stop after the first `steps` subpixels (the benchmark times a few rows).
        """
        C, H, W = self.image_shape
        device = device or next(self.parameters()).device
        if labels is not None:
            labels = labels.to(device).long()
            n = len(labels) if n is None else n
        if n is None:
            raise ValueError("sample needs n (or labels, for a conditional model)")
        self._check_labels(labels, n)
        order = self.generation_order()
        band = band and order == AutoregressiveModel.generation_order(self)  # raster only
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        with self.sampling(generator, n, device) as draws:
            for c, i, j in order[:steps]:
                rows = self.rows_reaching(i) if band else slice(0, H)
                logits = self.logits(x[:, :, rows], labels)  # (n, C, rows, W) or (n, C, L, rows, W)
                x[:, c, i, j] = self._draw(logits[:, c, ..., i - rows.start, j], draws)
        return x

    def rows_reaching(self, i: int) -> slice:
        """The rows that can reach row i's logits in raster order: the `rows_above` rows
        above it (all of them without `rows_above`) and row i itself."""
        return slice(0 if self.rows_above is None else max(0, i - self.rows_above), i + 1)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | Draws | None = None,
               device: torch.device | str | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Draw n images subpixel by subpixel -> LongTensor (n, C, H, W); a conditional
        model draws one image per label (n defaults to len(labels)).

        The models' cached samplers override it. Here it is the reference sampler run on
        the band of rows that reaches each row (`naive_sample` with `band`): row i's logits
        depend only on rows <= i, and on at most `rows_above` of them.
        """
        return self.naive_sample(n, generator, device, labels, band=True)
