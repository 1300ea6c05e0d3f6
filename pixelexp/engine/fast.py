"""Fast training paths, each a switch with a default that suits the device:

    train.precision      auto | fp32 | bf16   auto: bf16 autocast on a CUDA device that has it, else fp32
                                              (training only: evaluation is always fp32)
    train.compile        auto | on | off      auto: on for CUDA, off on CPUs (whole-network compiles
                                              cost minutes there; `on` pays off for PixelRNN runs)
    train.channels_last  auto | on | off      auto: on for CUDA (faster convolutions)
    train.cuda_graphs    auto | on | off      auto: on for CUDA in a single process: forward and
                                              backward of a full batch replayed as one CUDA graph
                                              (the recurrent models launch thousands of small
                                              kernels per step; a graph launches them at once),
                                              and so are the evaluation's full batches and
                                              each epoch's sample grid
    model.impl           fast | plain | triton  the recurrent layers' fast scans, the plain loops, or
                                              (Diagonal BiLSTM, CUDA) the scan as Triton kernels

Compilation covers the whole network for the convolutional models; for the recurrent
ones it compiles the step functions of the scans (Row LSTM: `scan_step`, one row's
state convolution and gate math; Diagonal BiLSTM: `kernels`, the forward and backward
elementwise functions of its hand-written scan, one kernel each), and the loops over
rows / diagonals stay in Python, which keeps compile times short. Where compiling or
capturing fails, training goes on eager with a warning. The plain path (fp32, eager,
contiguous, model.impl=plain) is the reference the fast one is tested and benchmarked
against.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from pixelexp.errors import cause


@dataclass(frozen=True)
class FastPaths:
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False
    graphs: bool = False

    def describe(self) -> str:
        on = [n for n, v in (("bf16", self.bf16), ("compile", self.compile), ("channels_last", self.channels_last),
                             ("cuda_graphs", self.graphs)) if v]
        return ", ".join(on) or "fp32 eager"


PLAIN = FastPaths()


def resolve(precision: str, compile: str, channels_last: str, device: torch.device,
            cuda_graphs: str = "off", distributed: bool = False) -> FastPaths:
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    # CUDA graphs need a CUDA device; with DDP its gradient hooks would have to be captured too.
    graphs = cuda and not distributed and cuda_graphs in ("on", "auto")
    return FastPaths(bf16=bf16, compile=compile == "on" or (compile == "auto" and cuda),
                     channels_last=channels_last == "on" or (channels_last == "auto" and cuda), graphs=graphs)


def autocast(paths: FastPaths, device: torch.device, cache: bool = True):
    """Where the forward pass runs in bf16 (losses and softmaxes stay fp32: autocast's lists).
    Inside a CUDA graph capture the cast-weight cache must be off (cache=False)."""
    if not paths.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def on_side_stream(device: torch.device, fn) -> None:
    """Run fn on a side CUDA stream, ordered after and before the current one: warm-ups
    before a graph capture must not run on the stream being captured later."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


class _GraphedStep:
    """A per-batch function (x, labels or None, *args) -> a tensor, which with
    `paths.graphs` runs full batches (`batch_size` images; without it, the first shape
    seen) as a CUDA graph: captured on the first full batch (after three warm-up passes
    on a side stream, which also compile), then replayed with the batch copied into its
    static input. Other shapes (the last, smaller batch) run eagerly. If capturing
    fails, a warning says so and every batch runs eagerly. Subclasses give `eager`,
    what it computes."""

    what = "a step"

    def __init__(self, model: nn.Module, paths: FastPaths, device: torch.device, warn=None,
                 batch_size: int | None = None):
        self.model, self.paths, self.device, self.batch_size = model, paths, device, batch_size
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.graph = None
        self.key = None  # (x shape, labels?, args) of the captured batch
        self.failed = not paths.graphs

    def eager(self, x: torch.Tensor, y: torch.Tensor | None, *args, cache: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def before(self) -> None:
        """Before each eager run, warm-up and capture."""

    def after_replay(self) -> None:
        """After each replay."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, *args) -> torch.Tensor:
        key = (tuple(x.shape), y is not None, *args)
        if not self.failed and self.graph is None and self.batch_size in (None, len(x)):
            self._capture(x, y, args, key)
        if self.graph is None or key != self.key:
            self.before()
            return self.eager(x, y, *args)
        self.static_x.copy_(x)
        if y is not None:
            self.static_y.copy_(y)
        self.graph.replay()
        self.after_replay()
        return self.static_out

    def _capture(self, x, y, args, key) -> None:
        try:
            self.static_x = x.clone()
            self.static_y = None if y is None else y.clone()
            for _ in range(3):  # warm-up: compile, autotune, fill the allocator
                self.before()
                on_side_stream(self.device, lambda: self.eager(self.static_x, self.static_y, *args, cache=False))
            self.before()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self.eager(self.static_x, self.static_y, *args, cache=False)
            self.captured()
            self.graph, self.key = graph, key
        except Exception as e:  # noqa: BLE001 - any capture failure: warn, run eagerly
            self.failed, self.graph = True, None
            self.before()
            self.warn(f"warning: CUDA graph capture of {self.what} failed ({cause(e)}); "
                      "it runs without graphs (set train.cuda_graphs=off "
                      f"to skip the attempt)")

    def captured(self) -> None:
        """Right after a successful capture."""


class GradStep(_GraphedStep):
    """Forward and backward of one training batch: (x, labels or None, scale) -> the
    batch's nats per image (b,), with d(scale * sum of nats)/d(parameter) in each .grad.
    `net` is what is called (the model, or its DDP / compiled wrapper). The graph's
    gradient buffers are bound to the parameters' .grad again on every replay, so
    zero_grad(set_to_none) between steps is harmless."""

    what = "the training step"

    def __init__(self, net: nn.Module, model: nn.Module, paths: FastPaths, device: torch.device, warn=None,
                 batch_size: int | None = None):
        super().__init__(model, paths, device, warn, batch_size)
        self.net = net

    def eager(self, x, y, scale: float, cache: bool = True) -> torch.Tensor:
        with autocast(self.paths, self.device, cache):
            nats = -self.net(x, y).float().sum(dim=(1, 2, 3))  # (b,) nats per image
        (nats.sum() * scale).backward()
        return nats.detach()

    def before(self) -> None:
        self.model.zero_grad(set_to_none=True)  # the graph allocates the .grad it writes

    def captured(self) -> None:
        self.params = [p for p in self.model.parameters() if p.grad is not None]
        self.grads = [p.grad for p in self.params]

    def after_replay(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g


class EvalStep(_GraphedStep):
    """Nats per image of one batch, without gradients: (x, labels or None) -> (b,),
    always in fp32: training may run in bf16, but every NLL that is logged, reported or
    compared is computed in full precision (bf16 moves test bits/dim in the third
    decimal). The recurrent models' forward passes are thousands of small kernels whose
    launches set the evaluation's speed on a GPU; replayed as a graph they cost what
    their arithmetic costs. The caller puts the model in eval mode."""

    what = "the evaluation step"

    @torch.no_grad()
    def eager(self, x, y, cache: bool = True) -> torch.Tensor:
        return -self.model.log_prob(x, y).float().sum(dim=(1, 2, 3))


def apply(model: nn.Module, net: nn.Module, paths: FastPaths, warn=None):
    """-> the module to call in training: `net` (the model, or DDP of it) made channels-last
    and compiled as the paths ask. The model's parameters are shared, not copied."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if paths.channels_last:
        model.to(memory_format=torch.channels_last)
    if not paths.compile:
        return net
    _allow_recompiles(64)
    recurrent = [m for m in model.modules() if hasattr(type(m), "scan_step") or hasattr(type(m), "kernels")]
    if not recurrent:
        return _Fallback(torch.compile(net), net, warn)
    compiled = {}  # one compiled function per eager one, shared by the layers (and one warning)

    def compile_(fn):
        if fn not in compiled:
            compiled[fn] = _Fallback(torch.compile(fn, dynamic=False), fn, warn)
        return compiled[fn]
    for m in recurrent:
        if hasattr(type(m), "scan_step"):  # Row LSTM: one row's step, autograd through it
            m.scan_step = compile_(type(m).scan_step)
        if hasattr(type(m), "kernels"):  # Diagonal BiLSTM: the scan's forward and backward cell functions
            m.kernels = tuple(compile_(fn) for fn in type(m).kernels)
    return net


def _allow_recompiles(n: int) -> None:
    """Compiled code is specialized per (shape, dtype, grad mode, module instance):
    a run has a handful (training, its last batch, evaluation, the sampler), a benchmark
    many. Past dynamo's default limit (8 per function) a new one would run eagerly."""
    import torch._dynamo.config as dynamo
    for name in ("recompile_limit", "cache_size_limit"):  # the name in newer / older torch
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), n))
            return


class _SamplerGraph:
    def __init__(self):
        self.graph = self.u = self.labels = self.out = None


@torch.no_grad()
def sample(model: nn.Module, n: int | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, labels: torch.Tensor | None = None,
           graphs: bool = True, warn=None) -> torch.Tensor:
    """model.sample(...) -- on a CUDA device (with `graphs`) replayed as a CUDA graph.

    A cached sampler launches tens of small kernels per subpixel; the launches, not the
    arithmetic, set its speed on a GPU. As its randomness is one tensor of uniform
    numbers drawn up front (`models.base.Draws`), the whole run can be captured once
    per (n, conditional) and replayed with fresh numbers: the images are those the
    eager sampler draws from the same generator. The first call (a warm-up run and the
    capture) costs about two eager runs; later ones (each epoch's sample grid) only a
    replay. If capturing fails, a warning says so and sampling stays eager.
    """
    from pixelexp.models.base import Draws
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device).long()
        n = len(labels) if n is None else n
    if not graphs or device.type != "cuda":
        return model.sample(n, generator=generator, device=device, labels=labels)
    u = torch.rand(model.sample_draws(), n, generator=generator, device=device)  # what Draws.of draws
    graphs_of = model.__dict__.setdefault("_sampler_graphs", {})
    key = (n, labels is not None)
    entry = graphs_of.get(key)
    if entry is None:
        entry = graphs_of[key] = _capture_sampler(model, u, labels, device, warn)
    if entry.graph is None:
        return model.sample(n, generator=Draws(u), device=device, labels=labels)
    entry.u.copy_(u)
    if labels is not None:
        entry.labels.copy_(labels)
    entry.graph.replay()
    return entry.out.clone()


def _capture_sampler(model, u, labels, device, warn) -> _SamplerGraph:
    from pixelexp.models.base import Draws
    entry = _SamplerGraph()
    n = u.shape[1]
    try:
        entry.u = u.clone()
        entry.labels = None if labels is None else labels.clone()
        # Warm-up: lazy initializations happen outside the capture.
        on_side_stream(device, lambda: model.sample(n, generator=Draws(entry.u), device=device, labels=entry.labels))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            entry.out = model.sample(n, generator=Draws(entry.u), device=device, labels=entry.labels)
        entry.graph = graph
    except Exception as e:  # noqa: BLE001 - any capture failure: warn, sample eagerly
        entry.graph = None
        (warn or (lambda msg: print(msg, file=sys.stderr)))(
            f"warning: CUDA graph capture of {type(model).__name__}.sample failed ({cause(e)}); "
            "sampling stays eager")
    return entry


_EAGER_ONLY = [False]


@contextlib.contextmanager
def eager_only():
    """Within it, compiled functions run their eager versions (e.g. under a dispatch
    mode such as FlopCounterMode, which compiled code would not see through)."""
    _EAGER_ONLY[0] = True
    try:
        yield
    finally:
        _EAGER_ONLY[0] = False


class _Fallback:
    """Calls the compiled function; if compiling or running it fails, warns once and
    calls the eager one from then on."""

    def __init__(self, compiled, eager, warn):
        self.compiled, self.eager, self.warn, self.failed = compiled, eager, warn, False

    def __call__(self, *args, **kwargs):
        if not self.failed and not _EAGER_ONLY[0]:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, keep training
                self.failed = True
                self.warn(f"warning: torch.compile failed ({cause(e)}); "
                          f"training continues eager (set train.compile=off to skip the attempt)")
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):  # .train(), .parameters(), ... of the eager module
        return getattr(self.__dict__["eager"], name)


__all__ = ["FastPaths", "PLAIN", "resolve", "autocast", "apply", "GradStep", "EvalStep", "sample"]
